"""Pieces the few-step losses share: the batch draw, per-example path calls, distances.

Two-time models (MeanFlow, shortcut) are batch-first ``apply(params, tt[B, 2], x[B,
*event], args)``: column 0 of ``tt`` is the time of ``x``, column 1 the second time (the
end time ``r`` of MeanFlow, the step size ``d`` of a shortcut model), e.g.
``jfm.models.MLP(..., extra_time_inputs=1)`` through :func:`jfm.split_model`.
"""

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array

from .._checks import check_array, check_batch, check_callable, check_key, check_name
from .._paths import AbstractFlowPath
from .._paths.base import require_path

DISTANCES: tuple[str, ...] = ("l2", "pseudo_huber")


def bcast(v: Array, x: Array) -> Array:
    """``(B,)`` values reshaped to ``(B, 1, ..., 1)`` to multiply ``x [B, *event]``."""
    return v.reshape(v.shape + (1,) * (x.ndim - 1)).astype(x.dtype)


def event_mean(sq: Array) -> Array:
    """Mean over the event axes: ``[B, *event] -> [B]``."""
    return jnp.mean(sq, axis=tuple(range(1, sq.ndim)))


def two_times(t: Array, s: Array) -> Array:
    """``[B, 2]``: the time of ``x`` and the second time, the input of a two-time model."""
    return jnp.stack([t, s], axis=-1)


def call(apply, params, t, x, args, name: str = "apply"):
    """``apply(params, t, x, args)``, checked to return ``x``'s shape, cast to its dtype."""
    out = apply(params, t, x, args)
    if not hasattr(out, "shape") or out.shape != x.shape:
        raise ValueError(
            f"`{name}` must return shape (B, *event) = {x.shape}; "
            f"got {getattr(out, 'shape', type(out))}."
        )
    return jnp.asarray(out).astype(x.dtype)


def start(apply, x1, path, key, x0):
    """Check the common arguments; returns ``(x1, x0, key_t, key_extra)``.

    ``key`` splits into ``(key_x0, key_t, key_extra)``; ``x0`` is drawn with ``key_x0``
    (standard normal for an affine path) unless given.
    """
    check_callable(apply, "apply", "(params, t, x, args)")
    require_path(path, cls=AbstractFlowPath)
    check_key(key)
    x1 = check_batch(x1, "x1")
    key_x0, key_t, key_extra = jr.split(key, 3)
    if x0 is None:
        x0 = path.x0_sample(x1.shape, key=key_x0, dtype=x1.dtype)
    x0 = check_array(x0, "x0")
    if x0.shape != x1.shape:
        raise ValueError(
            f"`x0` and `x1` must have equal shapes (B, *event); got x0.shape={x0.shape}, "
            f"x1.shape={x1.shape}."
        )
    return x1, x0.astype(x1.dtype), key_t, key_extra


def on_path(path, t, x0, x1):
    """``(x_t, v)``: ``path.sample`` and the conditional velocity, per example, batched."""
    xt = jax.vmap(path.sample)(t, x0, x1)
    v = jax.vmap(lambda ti, a, b: path.target(ti, a, b, kind="velocity"))(t, x0, x1)
    return xt, v.astype(x1.dtype)


def teacher_velocity(teacher, t, x, args):
    """The per-example ``teacher(t, x, args)`` on the batch (shared ``args``)."""
    check_callable(teacher, "teacher")
    v = jax.vmap(teacher, in_axes=(0, 0, None))(t, x, args)
    if getattr(v, "shape", None) != x.shape:
        raise ValueError(
            f"`teacher` must return the event shape {x.shape[1:]} per example; got "
            f"{getattr(v, 'shape', type(v))} for the batch."
        )
    return v.astype(x.dtype)


def check_distance(distance: str) -> str:
    return check_name(distance, "distance", DISTANCES)


def distance(a: Array, b: Array, kind: str, c) -> Array:
    """Per-example ``mean_event (a - b)^2`` (``"l2"``) or the pseudo-Huber distance
    ``sqrt(mean_event (a - b)^2 + c^2) - c`` (``"pseudo_huber"``): ``[B]``."""
    sq = event_mean((a - b) ** 2)
    if kind == "l2":
        return sq
    c = jnp.asarray(c, sq.dtype)
    return jnp.sqrt(sq + c**2) - c
