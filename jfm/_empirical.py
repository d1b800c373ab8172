r"""The empirical (Green's function) marginal field of a data set, and a loss regressing on it.

For data ``{y_i}`` (the empirical distribution) and any path with a conditional density
``p_t(x | y)`` and field ``f_t(x | y)``, the marginal field that transports the marginal
``p_t(x) = mean_i p_t(x | y_i)`` is

.. math::
    u_t(x) = \frac{\sum_i p_t(x \mid y_i)\, f_t(x \mid y_i)}{\sum_i p_t(x \mid y_i)}
           = \sum_i w_i(t, x)\, f_t(x \mid y_i), \qquad w = \mathrm{softmax}_i \log p_t(x \mid y_i).

In the general ODE construction ``G = (p, p f)`` is the Green's function; this is the
data average of ``G_{>1}`` divided by the average of ``G_1`` (``dx/dt = u_{>1} / u_1``):
PFGM's empirical field over the batch, normalized by its time component. (PFGM itself
normalizes the ``N + 1``-dimensional field to a fixed norm and integrates in another
variable; dividing by the time component gives jfm's velocity directly.)
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from ._checks import check_array, check_key, check_name, is_concrete
from ._custom_types import ApplyFn, Args, RealScalarLike
from ._loss import uniform_time

_KINDS: tuple[str, ...] = ("velocity", "x1")
_METHODS = ("sample_conditional", "conditional_velocity", "conditional_log_density")


def _check_path(path, need_convert: bool = False):
    for m in _METHODS:
        if not callable(getattr(path, m, None)):
            raise TypeError(
                f"`path` must define {m}(...) (as jfm.AffinePath, jfm.PoissonPath and "
                f"jfm.IsotropicPath do); {type(path).__name__} does not."
            )
    if need_convert and not callable(getattr(path, "convert", None)):
        raise ValueError(
            f'`pred`="x1" needs a path whose velocity is affine in x1 (with convert(), e.g. '
            f'AffinePath or PoissonPath); {type(path).__name__} has none: use pred="velocity".'
        )


class EmpiricalField(eqx.Module):
    """The marginal field of the empirical distribution of ``data`` (see module docs).

    Attributes:
        path: the path (with ``conditional_log_density`` and ``conditional_velocity``).
        data: ``[M, *event]`` the data points.
        kind: ``"velocity"`` (the marginal field) or ``"x1"`` (the posterior mean
            ``sum_i w_i y_i``), static.
    """

    path: eqx.Module
    data: Float[Array, " M *event"]
    kind: str = eqx.field(static=True, default="velocity")

    def __call__(
        self, t: RealScalarLike, x: Float[Array, "*event"], args: Args = None
    ) -> Float[Array, "*event"]:
        """``u_t(x)`` for ONE example ``x`` (``args`` unused). Returns ``x``'s dtype."""
        x = check_array(x, "x")
        if x.shape != self.data.shape[1:]:
            raise ValueError(
                f"`x` must have the event shape of `data` {self.data.shape[1:]}; got {x.shape}."
            )
        data = self.data.astype(x.dtype)
        logp = jax.vmap(self.path.conditional_log_density, in_axes=(None, None, 0))(t, x, data)
        w = jax.nn.softmax(logp)
        if self.kind == "x1":
            return jnp.tensordot(w, data, axes=1).astype(x.dtype)
        v = jax.vmap(self.path.conditional_velocity, in_axes=(None, None, 0))(t, x, data)
        # A data point whose density underflowed has weight 0 and may have a 0/0 field.
        v = jnp.where((w > 0).reshape(w.shape + (1,) * x.ndim), v, jnp.zeros_like(v))
        return jnp.tensordot(w, v, axes=1).astype(x.dtype)


def empirical_field(path, data: Float[ArrayLike, " M *event"], *, kind: str = "velocity"):
    r"""The exact marginal field of the empirical distribution of ``data`` under ``path``.

    ``u_t(x) = sum_i w_i f_t(x | y_i)`` with ``w = softmax_i log p_t(x | y_i)`` (stable in
    log space). For :class:`jfm.PoissonPath` this is the (normalized) Poisson field of
    the data charges; integrating it with :func:`jfm.sample_ode` from prior draws lands on
    the data points. ``kind="x1"`` returns the posterior mean ``sum_i w_i y_i`` instead.
    Cost: ``M`` conditional evaluations per call.

    Args:
        path: :class:`jfm.AffinePath`, :class:`jfm.PoissonPath` or
            :class:`jfm.IsotropicPath` (any object with the conditional interface).
        data: ``[M, *event]`` data points.
        kind: ``"velocity"`` or ``"x1"``.

    Returns:
        A per-example field ``field(t, x, args)`` (an :class:`jfm.EmpiricalField`).

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> field = jfm.empirical_field(jfm.PoissonPath(r_max=5.0), jnp.zeros((3, 2)))
        >>> field(0.5, jnp.ones(2), None)
        Array([-2., -2.], dtype=float32)
    """
    _check_path(path)
    check_name(kind, "kind", _KINDS)
    data = check_array(data, "data")
    if data.ndim < 2 or data.shape[0] == 0:
        raise ValueError(f"`data` must have shape [M, *event] with M >= 1; got {data.shape}.")
    return EmpiricalField(path, data, kind)


def empirical_field_loss(
    apply: ApplyFn,
    params: PyTree,
    x1: Float[ArrayLike, " batch *event"],
    *,
    path,
    key: PRNGKeyArray,
    args: Args = None,
    time_sampler: Callable[..., Array] = uniform_time,
    pred: str = "velocity",
    t: Float[ArrayLike, " batch"] | None = None,
) -> Float[Array, " batch"]:
    r"""Per-example loss regressing a model on the batch's empirical marginal field (PFGM).

    For each example ``i``: ``t_i`` from ``time_sampler``, ``x_i ~ p_{t_i}(. | x1_i)``
    (``path.sample_conditional``) and the target ``u_{t_i}(x_i)`` of
    :func:`jfm.empirical_field` over the whole batch ``x1`` (``pred="velocity"``), or
    its posterior mean ``sum_j w_j x1_j`` (``pred="x1"``, for paths with ``convert``);

    .. math::
        \ell_i = \frac1d \big\| f_\theta(t_i, x_i) - u_{t_i}(x_i; x1_{1..B}) \big\|^2 .

    Compared with :func:`jfm.cfm_loss` (the target ``f_t(x_i | x1_i)`` of one data point)
    this averages the conditional targets of the batch, which lowers the variance
    (PFGM's "large batch" field); it is biased for finite ``B`` towards the batch's
    empirical distribution, unbiased as ``B -> inf``. Cost ``O(B^2 d)`` per batch.

    Args:
        apply: ``apply(params, t[B], x[B, *event], args) -> [B, *event]`` (batch-first).
        params: the parameters (pytree).
        x1: ``(B, *event)`` data batch.
        path: the path (conditional interface).
        key: PRNG key (keyword-only, required).
        args: conditioning passed to ``apply``.
        time_sampler: ``time_sampler(n, *, key, dtype) -> (n,)`` times in ``[0, 1)``.
        pred: ``"velocity"`` or ``"x1"``.
        t: ``(B,)`` times to use instead of ``time_sampler``.

    Returns:
        ``(B,)`` losses in ``x1``'s dtype.

    Raises:
        TypeError: ``path`` lacks the conditional interface; bad ``key``.
        ValueError: unknown ``pred``; ``pred="x1"`` on a path without ``convert``;
            shapes.

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
    if not callable(apply):
        raise TypeError(f"`apply` must be callable apply(params, t, x, args); got {type(apply)}.")
    check_name(pred, "pred", _KINDS)
    _check_path(path, need_convert=pred == "x1")
    check_key(key)
    x1 = check_array(x1, "x1", min_ndim=1)
    dtype, batch = x1.dtype, x1.shape[0]
    key_t, key_x = jr.split(key)
    if t is None:
        t = time_sampler(batch, key=key_t, dtype=dtype)
    t = check_array(t, "t")
    if t.shape != (batch,):
        raise ValueError(f"`t` must have shape ({batch},) to match x1; got shape {t.shape}.")
    t = t.astype(dtype)
    if is_concrete(t) and not bool(jnp.all((t >= 0) & (t <= 1))):
        raise ValueError(f"`t` must lie in [0, 1]; got [{float(t.min())}, {float(t.max())}].")
    keys = jr.split(key_x, batch)
    xt = jax.vmap(lambda ti, yi, k: path.sample_conditional(ti, yi, key=k))(t, x1, keys)
    field = EmpiricalField(path, x1, pred)
    target = jax.lax.stop_gradient(jax.vmap(lambda ti, xi: field(ti, xi))(t, xt))
    out = apply(params, t, xt, args)
    if not hasattr(out, "shape") or out.shape != x1.shape:
        raise ValueError(
            f"`apply` must return shape (B, *event) = {x1.shape}; "
            f"got {getattr(out, 'shape', type(out))}."
        )
    sq = (jnp.asarray(out).astype(dtype) - target) ** 2
    return jnp.mean(sq, axis=tuple(range(1, x1.ndim)))


__all__ = ["EmpiricalField", "empirical_field", "empirical_field_loss"]
