"""The empirical-field loss: regress a model on the batch's exact marginal field (PFGM)."""

from collections.abc import Callable

import jax
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._checks import check_batch, check_callable, check_finite, check_key, check_name
from .._custom_types import ApplyFn, Args
from .._empirical import EMPIRICAL_KINDS, EmpiricalField
from .._paths import AbstractConvertiblePath, AbstractPath
from .._paths.base import require_path
from .regression import regression_loss, training_times
from .time import uniform_time


def empirical_field_loss(
    apply: ApplyFn,
    params: PyTree,
    x1: Float[ArrayLike, " _batch *_event"],
    *,
    path: AbstractPath,
    key: PRNGKeyArray,
    args: Args = None,
    time_sampler: Callable[..., Array] = uniform_time,
    kind: str = "velocity",
    t: Float[ArrayLike, " _batch"] | None = None,
) -> Float[Array, " _batch"]:
    r"""Per-example loss regressing a model on the batch's empirical marginal field (PFGM).

    For each example ``i``: ``t_i`` from ``time_sampler``, ``x_i ~ p_{t_i}(. | x1_i)``
    (``path.sample_conditional``) and the target ``u_{t_i}(x_i)`` of
    :func:`jfm.empirical_field` over the whole batch ``x1`` (``kind="velocity"``), or
    its posterior mean ``sum_j w_j x1_j`` (``kind="x1"``, for an
    :class:`jfm.AbstractConvertiblePath`, whose ``convert`` turns such a model into a
    velocity);

    .. math::
        \ell_i = \frac1d \big\| f_\theta(t_i, x_i) - u_{t_i}(x_i; x1_{1..B}) \big\|^2 .

    Compared with :func:`jfm.cfm_loss` (the target ``f_t(x_i | x1_i)`` of one data point)
    this averages the conditional targets of the batch, which lowers the variance
    (PFGM's "large batch" field); it is biased for finite ``B`` towards the batch's
    empirical distribution, unbiased as ``B -> inf``. Cost ``O(B^2 d)`` per batch. The
    regression is the one weighted core of every jfm loss (unit weight); ``key`` is split
    into a key for the times and one per example for ``x_i``.

    Args:
        apply: ``apply(params, t[B], x[B, *event], args) -> [B, *event]`` (batch-first).
        params: the parameters (pytree).
        x1: ``(B, *event)`` data batch.
        path: any :class:`jfm.AbstractPath`.
        key: PRNG key (keyword-only, required).
        args: conditioning passed to ``apply``.
        time_sampler: ``time_sampler(n, *, key, dtype) -> (n,)`` times in ``[0, 1)``.
        kind: the model's parametrization, ``"velocity"`` or ``"x1"``.
        t: ``(B,)`` times to use instead of ``time_sampler``.

    Returns:
        ``(B,)`` losses in ``x1``'s dtype.

    Raises:
        TypeError: ``apply`` not callable; ``path`` not a :class:`jfm.AbstractPath`, or
            not an :class:`jfm.AbstractConvertiblePath` with ``kind="x1"``; bad ``key``;
            ``x1`` not floating.
        ValueError: unknown ``kind``; shapes of ``t`` or the model output; times outside
            ``[0, 1]`` (when concrete).

    Examples:
        >>> import jax, jax.numpy as jnp, jfm
        >>> apply = lambda p, t, x, args: p * x
        >>> path = jfm.PoissonPath(r_max=5.0)
        >>> jfm.empirical_field_loss(apply, 1.0, jnp.ones((4, 2)), path=path,
        ...                          key=jax.random.key(0)).shape
        (4,)

    References:
        Xu, Liu, Tegmark, Jaakkola, "Poisson Flow Generative Models", NeurIPS 2022.
    """
    check_callable(apply, "apply", "(params, t, x, args)")
    check_name(kind, "kind", EMPIRICAL_KINDS)
    require_path(path)
    if kind == "x1":
        require_path(
            path,
            cls=AbstractConvertiblePath,
            need=' for kind="x1" (a posterior-mean model becomes a velocity by path.convert; '
            'use kind="velocity" otherwise)',
        )
    check_key(key)
    x1 = check_finite(check_batch(x1, "x1"), "x1")
    if x1.shape[0] == 0:
        raise ValueError(f"`x1` must hold at least one example; got shape {x1.shape} (B = 0).")
    dtype, batch = x1.dtype, x1.shape[0]
    key_t, key_x = jr.split(key)
    t = training_times(time_sampler, batch, key=key_t, dtype=dtype, t=t)
    keys = jr.split(key_x, batch)
    xt = jax.vmap(lambda ti, yi, k: path.sample_conditional(ti, yi, key=k))(t, x1, keys)
    field = EmpiricalField(path, x1, kind)
    target = jax.lax.stop_gradient(jax.vmap(lambda ti, xi: field(ti, xi))(t, xt))
    return regression_loss(apply, params, t, xt, target, args, kind=kind, target_kind=kind)


__all__ = ["empirical_field_loss"]
