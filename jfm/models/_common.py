"""Pieces the networks share: argument checks, the dtype hook, label embedding."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array

from .._checks import check_array, check_int, check_positive, is_concrete


def check_even_dim(value, name: str) -> int:
    """An even Python int ``>= 2`` (a sinusoidal embedding has a sin and a cos half)."""
    value = check_int(value, name, lo=2)
    if value % 2:
        raise ValueError(f"`{name}` must be even (sin and cos halves); got {name}={value}.")
    return value


def check_network_options(time_scale, param_dtype, dtype, rngs) -> float:
    """The constructor options every network takes; returns ``time_scale`` as a float."""
    check_positive(time_scale, "time_scale")
    if not jnp.issubdtype(param_dtype, jnp.floating):
        raise TypeError(f"`param_dtype` must be a floating dtype; got {param_dtype}.")
    if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`dtype` must be a floating dtype or None; got {dtype}.")
    if not isinstance(rngs, nnx.Rngs):
        raise TypeError(f"`rngs` must be an nnx.Rngs, e.g. nnx.Rngs(0); got {type(rngs)}.")
    return float(time_scale)  # the Python value given, not a float32-rounded copy


def per_example(value: Array, batch: int, name: str, what: str) -> Array:
    """``value`` of shape ``(B,)``, a scalar being broadcast to it."""
    if value.shape == ():
        value = jnp.broadcast_to(value, (batch,))
    if value.shape != (batch,):
        raise ValueError(
            f"`{name}` ({what}) must have shape (B,) = ({batch},) or be a scalar; got shape "
            f"{value.shape}."
        )
    return value


def check_times(t, batch: int) -> Array:
    """Floating times ``(B,)`` (a scalar is broadcast to the batch)."""
    return per_example(check_array(t, "t"), batch, "t", "the times, one per example")


def check_multi_times(t, batch: int, k: int) -> Array:
    """Floating times ``(B, k)``, one row per example (a ``(k,)`` row is broadcast)."""
    t = check_array(t, "t")
    if t.shape == (k,):
        t = jnp.broadcast_to(t, (batch, k))
    if t.shape != (batch, k):
        raise ValueError(
            f"`t` must have shape (B, {k}) = ({batch}, {k}): the time of x then "
            f"{k - 1} extra time(s) per example (extra_time_inputs={k - 1}); got shape "
            f"{t.shape}."
        )
    return t


def cast_to_compute_dtype(args, /, *, dtype=None, inexact=True):
    """Flax ``promote_dtype`` hook: cast (inputs, kernel, bias) to the compute dtype.

    The compute dtype is ``dtype`` when given, else the dtype of the inputs (the first
    element). Unlike Flax's default (``jnp.result_type``, which raises under strict dtype
    promotion when the parameter and input dtypes differ), this never promotes implicitly.
    """
    del inexact
    dtype = args[0].dtype if dtype is None else dtype
    return tuple(None if a is None else jnp.asarray(a, dtype) for a in args)


def embed_class_labels(embed: nnx.Embed, k: int, labels: Any, batch: int) -> Array:
    """Check ``(B,)`` integer labels in ``{0, ..., k}`` (``k`` = null class) and embed them.

    Concrete labels are range-checked; traced ones cannot be (Flax's ``Embed`` then
    returns ``nan`` for an out-of-range label).
    """
    if labels is None:
        raise ValueError(
            f"`args` must hold the (B,) integer class labels of this class-conditional "
            f"model (num_classes={k}; label {k} is the null class); got None."
        )
    if isinstance(labels, bool) or not isinstance(labels, (jax.Array, np.ndarray, np.integer, int)):
        raise TypeError(f"`args` must be an integer label array of shape (B,); got {type(labels)}.")
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"`args` (class labels) must have an integer dtype; got {labels.dtype}.")
    labels = per_example(labels, batch, "args", "class labels")
    if labels.size and is_concrete(labels):
        # numpy on the concrete values: under jit, jnp reductions of a closed-over
        # constant would return tracers.
        concrete = np.asarray(labels)
        lo, hi = int(concrete.min()), int(concrete.max())
        if lo < 0 or hi > k:
            raise ValueError(
                f"`args` (class labels) must lie in [0, {k}] ({k} is the null class); "
                f"got values in [{lo}, {hi}]."
            )
    return embed(labels)
