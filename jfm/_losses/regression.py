r"""The one weighted regression core behind every jfm loss.

Every loss is, per example ``i``,

.. math::
    \ell_i = \frac{w(t_i)}{d}\, \big\| C\big(f_\theta(t_i, x_{t,i})\big) - y_i \big\|^2 ,

with ``t_i`` training times, ``x_{t,i}`` points on the path, ``y_i`` the regression
target (a conditional target, or an empirical marginal one), ``f_theta`` the batch-first
model, ``C`` the conversion of the model's parametrization ``kind`` into the target's
(``path.convert``; the identity when they agree), ``w`` a weight (``1`` unless given) and
``d = prod(event)``. :func:`regression_loss` is that formula; :func:`conditional_loss`
draws ``(t, x0)``, pairs them with a coupling, asks the path for ``(x_t, target)`` and
calls it. The public losses (:func:`jfm.cfm_loss`, :func:`jfm.dsm_loss`,
:func:`jfm.eps_loss`, :func:`jfm.x1_loss`, :func:`jfm.empirical_field_loss`) are thin
names over these two.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from .._checks import (
    check_array,
    check_batch,
    check_callable,
    check_finite,
    check_key,
    check_parametrization,
    check_scalar,
    is_concrete,
)
from .._couplings import resolve_coupling
from .._custom_types import ApplyFn, Args
from .._misc import sample_flat
from .._paths import AbstractConvertiblePath, AbstractFlowPath, AbstractPath
from .._paths.base import require_path

#: ``weight_fn(t[B]) -> w[B]``: a per-example weight from the training times.
WeightFn = Callable[[Array], Array]


def training_times(
    time_sampler: Callable[..., Array],
    batch: int,
    *,
    key: PRNGKeyArray,
    dtype,
    t=None,
    t_max=None,
) -> Float[Array, " _batch"]:
    """``(B,)`` checked training times: ``t`` if given, else ``time_sampler(B, key=, dtype=)``
    (times ``t_max`` when given); cast to ``dtype``, in ``[0, 1]`` when concrete."""
    if t is None:
        name = "time_sampler output"
        t = check_array(time_sampler(batch, key=key, dtype=dtype), name)
        if t_max is not None:
            t = t * jnp.asarray(t_max, dtype)
    else:
        name = "t"
        t = check_array(t, name)
    if t.shape != (batch,):
        raise ValueError(
            f"`{name}` must have shape (B,) = ({batch},) to match the batch of x1; got shape "
            f"{t.shape}."
        )
    t = t.astype(dtype)
    # numpy on the concrete value: jnp ops on a constant closed over by a jit trace would
    # give a tracer.
    if is_concrete(t) and not np.all(((tv := np.asarray(t)) >= 0) & (tv <= 1)):
        raise ValueError(f"`{name}` must lie in [0, 1]; got values in [{tv.min()}, {tv.max()}].")
    return t


def regression_loss(
    apply: ApplyFn,
    params: PyTree,
    t: Float[Array, " _batch"],
    xt: Float[Array, " _batch *_event"],
    target: Float[Array, " _batch *_event"],
    args: Args,
    *,
    kind: str,
    target_kind: str,
    path: AbstractPath | None = None,
    weight: Float[Array, " _batch"] | None = None,
) -> Float[Array, " _batch"]:
    """``w_i mean_event (C(apply(params, t, xt, args))_i - target_i)^2`` (module docstring).

    The model output (parametrization ``kind``) is cast to ``xt``'s dtype and converted to
    ``target_kind`` with ``path.convert`` when the two differ (``path`` must then be an
    :class:`jfm.AbstractConvertiblePath`, checked by the caller).

    Raises:
        ValueError: ``apply`` returns a shape other than ``xt.shape``.
    """
    out = apply(params, t, xt, args)
    if not hasattr(out, "shape") or out.shape != xt.shape:
        raise ValueError(
            f"`apply` must return shape (B, *event) = {xt.shape}; "
            f"got {getattr(out, 'shape', type(out))}."
        )
    out = jnp.asarray(out).astype(xt.dtype)
    if kind != target_kind:
        convert = lambda ti, xi, oi: path.convert(ti, xi, oi, src=kind, dst=target_kind)  # noqa: E731
        out = jax.vmap(convert)(t, xt, out)
    loss = jnp.mean((out - target) ** 2, axis=tuple(range(1, xt.ndim)))
    return loss if weight is None else weight * loss


def _apply_coupling(coupling, x0, x1, key):
    """Pair ``(x0, x1)`` with ``coupling`` and check that it kept shapes and dtypes."""
    c0, c1 = resolve_coupling(coupling)(x0, x1, key=key)
    for name, new, old in (("x0", c0, x0), ("x1", c1, x1)):
        if getattr(new, "shape", None) != old.shape or new.dtype != old.dtype:
            raise ValueError(
                f"`coupling` must return (x0, x1) of the input shapes and dtypes; got {name} "
                f"{getattr(new, 'shape', type(new))} {getattr(new, 'dtype', '')}, expected "
                f"{old.shape} {old.dtype}."
            )
    return c0, c1


def conditional_loss(
    apply: ApplyFn,
    params: PyTree,
    x1,
    *,
    path: AbstractPath,
    key: PRNGKeyArray,
    kind: str,
    target_kind: str,
    weight_fn: WeightFn | None,
    x0,
    args: Args,
    time_sampler: Callable[..., Array],
    t,
    t_max=None,
    smoothing=0.0,
    coupling=None,
) -> Float[Array, " _batch"]:
    r"""The conditional regression loss on ``path`` (see the module docstring).

    ``key`` is split into ``(key_t, key_x0, key_eps)``: ``key_t`` for the times,
    ``key_x0`` for ``path.x0_sample`` (and ``fold_in(key_x0, 1)`` for the coupling),
    ``key_eps`` for the smoothing noise (and ``split(fold_in(key_eps, 1), B)`` for the
    per-example keys of ``path.sample_and_target``). The three are split whether or not
    ``t`` and ``x0`` are given.

    Raises:
        TypeError: ``apply`` not callable; ``path`` not an :class:`jfm.AbstractPath`
            (an :class:`jfm.AbstractConvertiblePath` when ``kind != target_kind``); bad
            ``key``; ``x1`` not floating.
        ValueError: unknown ``kind``; ``smoothing < 0`` or ``> 0`` on a path that is not an
            :class:`jfm.AbstractFlowPath`; shapes of ``x0``, ``t``, the model output.
    """
    check_callable(apply, "apply", "(params, t, x, args)")
    require_path(path)
    check_key(key)
    check_parametrization(kind)
    if kind != target_kind:
        require_path(
            path,
            cls=AbstractConvertiblePath,
            need=f' to convert the model\'s kind="{kind}" into the "{target_kind}" target',
        )
    x1 = check_finite(check_batch(x1, "x1"), "x1")
    if x1.shape[0] == 0:
        raise ValueError(f"`x1` must hold at least one example; got shape {x1.shape} (B = 0).")
    dtype, batch = x1.dtype, x1.shape[0]
    with jax.ensure_compile_time_eval():  # a Python number stays concrete under jit
        smoothing = check_scalar(smoothing, "smoothing", lo=0.0)
    smooth = not (is_concrete(smoothing) and float(smoothing) == 0)
    if smooth and not isinstance(path, AbstractFlowPath):
        raise ValueError(
            f"`smoothing` must be 0 for a {type(path).__name__}: its x_t already carries its "
            "own noise (e.g. the bridge's sigma sqrt(t(1-t)) eps); set the noise level on "
            "the path. Smoothing applies to jfm.AbstractFlowPath paths."
        )

    key_t, key_x0, key_eps = jr.split(key, 3)
    t = training_times(time_sampler, batch, key=key_t, dtype=dtype, t=t, t_max=t_max)
    if x0 is None:
        x0 = path.x0_sample(x1.shape, key=key_x0, dtype=dtype)
    x0 = check_finite(check_array(x0, "x0"), "x0")
    if x0.shape != x1.shape:
        raise ValueError(
            f"`x0` and `x1` must have equal shapes (B, *event); got x0.shape={x0.shape}, "
            f"x1.shape={x1.shape} (the batch size and event shape must agree)."
        )
    x0 = x0.astype(dtype)
    if coupling is not None:
        x0, x1 = _apply_coupling(coupling, x0, x1, jr.fold_in(key_x0, 1))

    keys = jr.split(jr.fold_in(key_eps, 1), batch)
    pair = lambda ti, a, b, k: path.sample_and_target(ti, a, b, key=k, kind=target_kind)  # noqa: E731
    xt, target = jax.vmap(pair)(t, x0, x1, keys)
    if smooth:
        xt = xt + smoothing.astype(dtype) * sample_flat(jr.normal, key_eps, x1.shape, dtype)
    weight = None if weight_fn is None else weight_fn(t)
    return regression_loss(
        apply, params, t, xt, target, args, kind=kind, target_kind=target_kind, path=path,
        weight=weight,
    )  # fmt: skip


__all__ = ["conditional_loss", "regression_loss", "training_times"]
