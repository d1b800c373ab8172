r"""MeanFlow (Geng et al. 2025): learn the average velocity, sample in one or few jumps.

Convention (jfm's time, ``t = 0`` noise, ``t = 1`` data): ``u(z, r, t)`` is the average
velocity of the flow ``dx/dt = v(t, x)`` over ``[t, r]``, for the trajectory through
``z = x_t`` at time ``t``,

.. math::
    u(z, r, t) = \frac{x_r - x_t}{r - t} = \frac{1}{r - t}\int_t^r v(\tau, x_\tau)\,d\tau,
    \qquad u(z, t, t) = v(t, z),

so one jump is ``x_r = x_t + (r - t) u(x_t, r, t)``; sampling runs with ``r > t``
(toward the data). Differentiating ``(r - t) u = x_r - x_t`` in ``t`` along the
trajectory (``r`` fixed) gives the MeanFlow identity

.. math::
    u(z, r, t) = v(t, z) - (t - r)\, \frac{d}{dt} u(z_t, r, t), \qquad
    \frac{d}{dt} u = \partial_z u\, v + \partial_t u ,

the same formula as the paper's (whose time runs data to noise, with ``r < t``); here
``t`` is the noisier end, so ``t <= r``. The total derivative is ONE ``jax.jvp`` of
``(z, r, t) -> u`` along ``(v, 0, 1)``. The model is a two-time ``apply(params,
tt[B, 2], z, args)`` with ``tt = [t, r]`` (column 0 the time of ``z``).
"""

import functools

import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._checks import check_scalar, is_concrete
from .._custom_types import ApplyFn, Args, VectorField
from .._losses.regression import training_times
from .._losses.time import logit_normal_time
from .._paths import AbstractPath
from .common import bcast, call, event_mean, on_path, start, teacher_velocity, two_times

#: MeanFlow's default time law: logit-normal(-0.4, 1) in the paper's reversed time,
#: i.e. ``sigmoid(0.4 + z)`` in jfm's.
meanflow_time = functools.partial(logit_normal_time, mean=0.4, std=1.0)


def meanflow_times(
    n: int,
    *,
    key: PRNGKeyArray,
    dtype=None,
    flow_fraction: float = 0.75,
    time_sampler=meanflow_time,
) -> tuple[Float[Array, " n"], Float[Array, " n"]]:
    """``(t, r)``, ``t <= r``: two draws of ``time_sampler`` sorted, and ``r = t`` for the
    first ``round(flow_fraction * n)`` pairs (plain flow matching; the paper's best is
    75%).

    Args:
        n: number of pairs.
        key: PRNG key (keyword-only).
        dtype: floating dtype.
        flow_fraction: fraction in ``[0, 1]`` of pairs with ``r = t`` (static).
        time_sampler: ``time_sampler(n, *, key, dtype) -> (n,)`` times in ``[0, 1]``.

    Returns:
        ``(t, r)``, each ``(n,)``.

    Raises:
        ValueError: ``flow_fraction`` outside ``[0, 1]``; sampler times outside ``[0, 1]``.
    """
    with jax.ensure_compile_time_eval():
        frac = check_scalar(flow_fraction, "flow_fraction", lo=0.0, hi=1.0)
    if not is_concrete(frac):
        raise TypeError("`flow_fraction` must be a Python float (it fixes a count); got a tracer.")
    a = training_times(time_sampler, 2 * n, key=key, dtype=dtype)
    t, r = jnp.minimum(a[:n], a[n:]), jnp.maximum(a[:n], a[n:])
    same = jnp.arange(n) < int(round(float(frac) * n))
    return t, jnp.where(same, t, r)


def meanflow_target(
    apply: ApplyFn,
    params: PyTree,
    z: Float[Array, " batch *event"],
    r: Float[Array, " batch"],
    t: Float[Array, " batch"],
    v: Float[Array, " batch *event"],
    args: Args = None,
) -> tuple[Float[Array, " batch *event"], Float[Array, " batch *event"]]:
    r"""``(u, u_tgt)``: the prediction and the MeanFlow target ``v - (t - r) du/dt``.

    ``du/dt`` is the tangent of ONE ``jax.jvp`` of ``(z, r, t) -> apply(params, [t, r],
    z, args)`` along ``(v, 0, 1)``; ``u`` (its primal) is differentiable in ``params``,
    ``u_tgt`` has its gradient stopped.

    Args:
        apply: two-time batch-first model ``apply(params, tt[B, 2], z, args)``.
        params: its parameters.
        z: ``[B, *event]`` states at ``t``; v: ``[B, *event]`` the velocity there.
        r, t: ``(B,)`` times (``u`` averages over ``[t, r]``).
        args: conditioning.

    Returns:
        ``(u, u_tgt)``, both ``[B, *event]``.
    """

    def u_fn(zz, rr, tt):
        return call(apply, params, two_times(tt, rr), zz, args)

    u, dudt = jax.jvp(u_fn, (z, r, t), (v, jnp.zeros_like(r), jnp.ones_like(t)))
    return u, lax.stop_gradient(v - bcast(t - r, z) * dudt)


def meanflow_loss(
    apply: ApplyFn,
    params: PyTree,
    x1: Float[ArrayLike, " batch *event"],
    *,
    path: AbstractPath,
    key: PRNGKeyArray,
    x0: Float[ArrayLike, " batch *event"] | None = None,
    args: Args = None,
    teacher: VectorField | None = None,
    flow_fraction: float = 0.75,
    time_sampler=meanflow_time,
    adaptive_p: float = 1.0,
    adaptive_c: float = 1e-3,
) -> Float[Array, " batch"]:
    r"""The MeanFlow loss, per example, with its adaptive weighting.

    With ``(t, r)`` from :func:`meanflow_times`, ``z = path.sample(t, x0, x1)``, ``v`` the
    conditional velocity (or ``teacher(t, z, args)``) and ``(u, u_tgt)`` from
    :func:`meanflow_target`:

    .. math::
        \Delta = u - \mathrm{sg}(u_{tgt}), \qquad
        \ell = \mathrm{sg}(w)\, \|\Delta\|^2, \quad
        w = \frac{1}{(\|\Delta\|^2 + c)^p},

    ``||.||^2`` the per-dimension mean (as in jfm's other losses). ``p = 1`` (default)
    makes the loss ``~ |Delta|^2 / (|Delta|^2 + c)``, robust to large errors; ``p = 0``
    is the plain squared error. At ``r = t`` the target is ``v``: flow matching.

    Args:
        apply: two-time model ``apply(params, tt[B, 2], z[B, *event], args)``,
            ``tt = [t, r]`` (e.g. ``jfm.models.MLP(..., extra_time_inputs=1)``).
        params: its parameters.
        x1: ``[B, *event]`` data.
        path: an :class:`jfm.AbstractFlowPath` (e.g. ``jfm.AffinePath(jfm.CondOT())``).
        key: PRNG key (keyword-only): noise and times.
        x0: ``[B, *event]`` noise or ``None`` (drawn).
        args: conditioning for ``apply`` (and ``teacher``).
        teacher: optional per-example field ``teacher(t, x, args)`` replacing ``v``.
        flow_fraction: fraction of examples with ``r = t`` (static, default 0.75).
        time_sampler: the law of the two times (default logit-normal(0.4, 1)).
        adaptive_p: ``p >= 0``; adaptive_c: ``c > 0``.

    Returns:
        ``[B]`` per-example losses.

    Raises:
        TypeError: ``apply``/``teacher`` not callable; bad ``path``, ``key``.
        ValueError: shapes; ``flow_fraction`` outside ``[0, 1]``; ``adaptive_p < 0``;
            ``adaptive_c <= 0``.

    References:
        Geng, Deng, Bai, Kolter & He, "Mean Flows for One-step Generative Modeling", 2025.
    """
    x1, x0, key_t, _ = start(apply, x1, path, key, x0)
    with jax.ensure_compile_time_eval():
        p = check_scalar(adaptive_p, "adaptive_p", x1.dtype, lo=0.0)
        c = check_scalar(adaptive_c, "adaptive_c", x1.dtype, lo=0.0, strict_lo=True)
    t, r = meanflow_times(
        x1.shape[0], key=key_t, dtype=x1.dtype, flow_fraction=flow_fraction,
        time_sampler=time_sampler,
    )  # fmt: skip
    z, v = on_path(path, t, x0, x1)
    if teacher is not None:
        v = teacher_velocity(teacher, t, z, args)
    u, u_tgt = meanflow_target(apply, params, z, r, t, v, args)
    sq = event_mean((u - u_tgt) ** 2)
    w = lax.stop_gradient(1.0 / (sq + c) ** p)
    return w * sq


__all__ = ["meanflow_loss", "meanflow_target", "meanflow_time", "meanflow_times"]
