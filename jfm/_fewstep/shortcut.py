r"""Shortcut models (Frans et al. 2025): a velocity conditioned on the step size.

``s(x, t, d)`` is the step of size ``d``: ``x_{t+d} ~ x_t + d s(x_t, t, d)``. At
``d = 0`` it is the flow's velocity (flow-matching target); larger steps are taught by
self-consistency, two steps of ``d`` making one of ``2d``:

.. math::
    s_{tgt}(x, t, 2d) = \tfrac12\big(s(x, t, d) + s(x', t + d, d)\big), \qquad
    x' = x + d\, s(x, t, d),

with the gradient stopped through the target. Step sizes are dyadic, ``d = 2^{-j}``,
``j = 0, ..., K`` for ``max_steps = 2^K``. The model is a two-time
``apply(params, tt[B, 2], x, args)`` with ``tt = [t, d]`` (column 0 the time of ``x``).
"""

import math

import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._checks import check_int, check_scalar, is_concrete
from .._custom_types import ApplyFn, Args
from .._losses.regression import training_times
from .._losses.time import uniform_time
from .._paths import AbstractPath
from .common import bcast, call, event_mean, on_path, start, two_times


def shortcut_target(
    apply: ApplyFn,
    params: PyTree,
    t: Float[Array, " batch"],
    x: Float[Array, " batch *event"],
    d: Float[Array, " batch"],
    args: Args = None,
    *,
    d_input: Float[Array, " batch"] | None = None,
) -> Float[Array, " batch *event"]:
    r"""The self-consistency target of step ``2d`` from two steps of ``d`` (gradient stopped).

    ``(s(x, t, d) + s(x + d s(x, t, d), t + d, d)) / 2``; at ``d = 0`` it is ``s(x, t, 0)``.
    With ``d_input`` the model is queried at step size ``d_input`` while stepping by ``d``
    (e.g. ``d_input = 0``: two Euler steps of the flow's velocity).

    Args:
        apply: two-time model ``apply(params, tt[B, 2], x, args)``, ``tt = [t, d]``.
        params: its parameters.
        t: ``(B,)`` times; x: ``[B, *event]`` states at ``t``; d: ``(B,)`` half steps.
        args: conditioning.
        d_input: ``(B,)`` step sizes given to the model (default ``d``).

    Returns:
        ``[B, *event]``.
    """
    d_in = d if d_input is None else d_input
    s1 = call(apply, params, two_times(t, d_in), x, args)
    x_mid = x + bcast(d, x) * s1
    s2 = call(apply, params, two_times(t + d, d_in), x_mid, args)
    return lax.stop_gradient((s1 + s2) / 2)


def check_dyadic(max_steps) -> int:
    """``max_steps = 2^K``, a power of two ``>= 1``; returns ``K``."""
    m = check_int(max_steps, "max_steps")
    if m & (m - 1):
        raise ValueError(
            f"`max_steps` must be a power of two (dyadic step sizes 1, 1/2, ..., 1/max_steps);"
            f" got max_steps={m}."
        )
    return int(math.log2(m))


def shortcut_loss(
    apply: ApplyFn,
    params: PyTree,
    x1: Float[ArrayLike, " batch *event"],
    *,
    path: AbstractPath,
    key: PRNGKeyArray,
    max_steps: int = 128,
    consistency_fraction: float = 0.25,
    x0: Float[ArrayLike, " batch *event"] | None = None,
    args: Args = None,
    time_sampler=uniform_time,
) -> Float[Array, " batch"]:
    r"""The shortcut-model loss, per example: flow matching at ``d = 0`` plus self-consistency.

    The first ``n_sc = round(consistency_fraction * B)`` examples are self-consistency
    examples, the others flow-matching ones:

    - flow matching: ``t ~ time_sampler``, ``d = 0``, target the conditional velocity
      ``path.target(t, x0, x1)`` at ``x_t = path.sample(t, x0, x1)``: exactly
      :func:`jfm.cfm_loss` of the model at ``d = 0``;
    - self-consistency: a level ``j ~ U{0, ..., K}``, the step ``D = 2^{-j}``, a time on
      its grid ``t = D floor(U 2^j)`` (so ``t + D <= 1``), and the target
      :func:`shortcut_target` of two half steps ``D / 2`` for the model at step ``D``.
      At the finest level (``D = 1 / max_steps``) the half steps query the model at
      ``d = 0`` (two Euler steps of the flow), which ties the step sizes to flow matching.

    ``\ell_i = mean_event (s(x_t, t, d_i) - y_i)^2``. The targets are computed for the
    whole batch and selected (three network evaluations per example, two without
    gradient), so per-example ``args`` stay aligned.

    Args:
        apply: two-time model ``apply(params, tt[B, 2], x[B, *event], args)``,
            ``tt = [t, d]`` (e.g. ``jfm.models.MLP(..., extra_time_inputs=1)``).
        params: its parameters.
        x1: ``[B, *event]`` data.
        path: an :class:`jfm.AbstractFlowPath`.
        key: PRNG key (keyword-only): noise, times, levels.
        max_steps: ``2^K``, the finest step count (static, default 128).
        consistency_fraction: fraction in ``[0, 1]`` of self-consistency examples
            (static, default 1/4 as in the paper).
        x0: ``[B, *event]`` noise or ``None`` (drawn).
        args: conditioning for ``apply``.
        time_sampler: law of the flow-matching times (default uniform).

    Returns:
        ``[B]`` per-example losses.

    Raises:
        TypeError: ``apply`` not callable; bad ``path``, ``key``; non-int ``max_steps``.
        ValueError: ``max_steps`` not a power of two; ``consistency_fraction`` outside
            ``[0, 1]``; shapes.

    References:
        Frans, Hafner, Levine & Abbeel, "One Step Diffusion via Shortcut Models", ICLR 2025.
    """
    k = check_dyadic(max_steps)
    with jax.ensure_compile_time_eval():
        frac = check_scalar(consistency_fraction, "consistency_fraction", lo=0.0, hi=1.0)
    if not is_concrete(frac):
        raise TypeError("`consistency_fraction` must be a Python float; got a tracer.")
    x1, x0, key_t, key_sc = start(apply, x1, path, key, x0)
    batch, dtype = x1.shape[0], x1.dtype
    n_sc = int(round(float(frac) * batch))
    sc = jnp.arange(batch) < n_sc

    t_fm = training_times(time_sampler, batch, key=key_t, dtype=dtype)
    key_j, key_u = jr.split(key_sc)
    j = jr.randint(key_j, (batch,), 0, k + 1)
    big = jnp.exp2(-j.astype(dtype))  # D = 2^-j
    t_sc = big * jnp.floor(jr.uniform(key_u, (batch,), dtype) * jnp.exp2(j.astype(dtype)))
    t = jnp.where(sc, t_sc, t_fm)
    d = jnp.where(sc, big, jnp.zeros_like(big))

    xt, v = on_path(path, t, x0, x1)
    if n_sc:
        half = big / 2
        d_in = jnp.where(j == k, jnp.zeros_like(half), half)  # finest level: query d = 0
        y_sc = shortcut_target(apply, params, t, xt, half, args, d_input=d_in)
        target = jnp.where(sc.reshape(sc.shape + (1,) * (xt.ndim - 1)), y_sc, v)
    else:
        target = v
    out = call(apply, params, two_times(t, d), xt, args)
    return event_mean((out - target) ** 2)


__all__ = ["shortcut_loss", "shortcut_target"]
