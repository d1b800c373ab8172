"""The argument checks every module shares. They run in Python, at trace time.

Each raises a ``TypeError`` (wrong kind of value) or a ``ValueError`` (right kind, bad
value) whose message names the argument, says what was expected and what came. Range
checks on numbers run only when the value is concrete: a traced value cannot be read
without a host round trip, and jfm never adds one silently.

Non-finite data (:func:`check_finite`): the entry points that take a user's arrays
(samplers' ``x0``, ``log_prob``'s ``x``, the losses' batches, couplings, metrics,
``init_train_state``'s parameters) refuse a concrete array with a NaN or inf, naming the
argument; one device reduction on an eager call. Under ``jax.jit`` (traced input) they
cannot look, and non-finite input propagates (a solve then reports failure through
``Solution.result``). Per-example maths (path methods, fields, divergences) lets NaN
through like any ``jnp`` function.
"""

import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

#: The parametrizations of a model's output, one vocabulary for the whole library.
PARAMETRIZATIONS: tuple[str, ...] = ("velocity", "x1", "x0", "score")

_REAL = (numbers.Real, np.ndarray, np.generic, jax.Array)


def is_concrete(x) -> bool:
    """True when every leaf of ``x`` is known at trace time (no tracer)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(x))


def check_name(value: str, name: str, allowed: Sequence[str]) -> str:
    """A string option that must be one of ``allowed``."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"`{name}` must be one of {tuple(allowed)}; got {value!r}.")
    return value


def check_callable(fn, name: str, signature: str = "(t, x, args)"):
    """A function (or callable module) to be called as ``name{signature}``."""
    if not callable(fn):
        raise TypeError(f"`{name}` must be callable as {name}{signature}; got {type(fn)}.")
    return fn


def check_bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool; got {value!r}.")
    return value


def check_int(value, name: str, lo: int | None = 1) -> int:
    """A Python int ``>= lo`` (no bools, no floats)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be a Python int; got {value!r} ({type(value).__name__}).")
    if lo is not None and value < lo:
        raise ValueError(f"`{name}` must be >= {lo}; got {name}={value}.")
    return int(value)


def check_array(x, name: str, *, ndim: int | None = None, min_ndim: int | None = None):
    """A floating array (optionally of a given rank), returned as a ``jax.Array``."""
    if not isinstance(x, (np.ndarray, jax.Array, np.generic, float, int)) or isinstance(x, bool):
        raise TypeError(f"`{name}` must be an array; got {type(x)}.")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`{name}` must have a floating dtype; got {x.dtype}.")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimensions; got shape {x.shape}.")
    if min_ndim is not None and x.ndim < min_ndim:
        raise ValueError(f"`{name}` must have at least {min_ndim} dimensions; got shape {x.shape}.")
    return x


def check_batch(x, name: str):
    """A floating batch ``[B, *event]`` (at least one axis)."""
    x = check_array(x, name)
    if x.ndim < 1:
        raise ValueError(
            f"`{name}` must have a batch axis: shape [B, *event]; got shape {x.shape}. For a "
            f"single example pass {name}[None]."
        )
    return x


def check_finite(x, name: str, where: str | None = None):
    """Raise a ``ValueError`` naming ``name`` when the concrete array ``x`` has a NaN/inf.

    A no-op on tracers, on non-floating arrays and on arrays spread over several hosts
    (not fully addressable): see the module docstring. ``where``
    says which part of ``name`` ``x`` is (e.g. a pytree leaf ``params['w']``).
    """
    if isinstance(x, jax.core.Tracer) or not is_concrete(x):
        return x
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x  # a multi-host global array: no process can read all of it
    a = x if isinstance(x, (jax.Array, np.ndarray)) else np.asarray(x)
    if not jnp.issubdtype(a.dtype, jnp.inexact) or a.size == 0:
        return x
    with jax.ensure_compile_time_eval():  # a concrete constant stays concrete under jit
        finite = jnp.isfinite(a)
        if bool(finite.all()):
            return x
        n = int(a.size - finite.sum())
    raise ValueError(
        f"`{name}` must be finite; got {n} non-finite (NaN or inf) entr"
        f"{'y' if n == 1 else 'ies'} in {where or name} of shape {a.shape}."
    )


def check_scalar(value, name: str, dtype=None, *, lo=None, hi=None, strict_lo: bool = False):
    """A real scalar, as a 0-d array of ``dtype`` (default: a float dtype).

    Finite always; ``lo <= value <= hi`` (``lo < value`` with ``strict_lo``) when given,
    each checked when the value is concrete.
    """
    if isinstance(value, bool) or not isinstance(value, _REAL):
        raise TypeError(f"`{name}` must be a real scalar (float or 0-d array); got {type(value)}.")
    if jnp.shape(value) != ():
        raise ValueError(f"`{name}` must be a scalar (shape ()); got shape {jnp.shape(value)}.")
    # Read the value before jnp.asarray: under jit even a Python number becomes a tracer.
    concrete = None if isinstance(value, jax.core.Tracer) else float(value)
    value = jnp.asarray(value)
    if dtype is not None:
        value = value.astype(dtype)
    elif not jnp.issubdtype(value.dtype, jnp.floating):
        value = value.astype(jnp.result_type(float))
    if concrete is not None:
        v = concrete
        if not np.isfinite(v):
            raise ValueError(f"`{name}` must be finite; got {name}={v}.")
        if lo is not None and (v <= lo if strict_lo else v < lo):
            raise ValueError(f"`{name}` must be {'>' if strict_lo else '>='} {lo}; got {name}={v}.")
        if hi is not None and v > hi:
            raise ValueError(f"`{name}` must be <= {hi}; got {name}={v}.")
    return value


def check_positive(value, name: str, dtype=None, *, allow_zero: bool = False):
    """A finite real scalar ``> 0`` (``>= 0`` with ``allow_zero``)."""
    return check_scalar(value, name, dtype, lo=0.0, strict_lo=not allow_zero)


def check_scalar_time(t, name: str = "t", lo: float = 0.0, hi: float = 1.0):
    """A scalar time in ``[lo, hi]`` (the path and field maths act on one example)."""
    if isinstance(t, bool) or not isinstance(t, _REAL):
        raise TypeError(f"`{name}` must be a real scalar (float or 0-d array); got {type(t)}.")
    if jnp.shape(t) != ():
        raise ValueError(
            f"`{name}` must be a scalar (shape ()); got shape {jnp.shape(t)}. jfm's path and "
            "field maths act on one example: batch with jax.vmap."
        )
    concrete = None if isinstance(t, jax.core.Tracer) else float(t)
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.floating):
        t = t.astype(jnp.result_type(float))
    if concrete is not None and not (lo <= concrete <= hi):
        raise ValueError(f"`{name}` must lie in [{lo}, {hi}]; got {name}={concrete}.")
    return t


def check_key(key, name: str = "key"):
    """A JAX PRNG key (typed ``jax.random.key`` or legacy ``uint32[2]``); required."""
    if key is None:
        raise TypeError(f"`{name}` is required: pass a PRNG key, e.g. {name}=jax.random.key(0).")
    if isinstance(key, (int, np.integer)):
        raise TypeError(
            f"`{name}` must be a PRNG key, not an int seed; got {key!r}. Use jax.random.key({key})."
        )
    if not isinstance(key, (jax.Array, np.ndarray)):
        raise TypeError(f"`{name}` must be a PRNG key; got {type(key)}.")
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"`{name}` must be a single key (shape ()); got shape {key.shape}.")
    elif not (key.dtype == jnp.uint32 and key.shape == (2,)):
        raise TypeError(
            f"`{name}` must be a PRNG key (jax.random.key or jax.random.PRNGKey); "
            f"got dtype {key.dtype}, shape {key.shape}."
        )
    return key


def check_parametrization(kind: str, name: str = "kind") -> str:
    """One of :data:`PARAMETRIZATIONS`."""
    return check_name(kind, name, PARAMETRIZATIONS)
