"""Small shared helpers: argument checks that run at trace time."""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

PARAMETRIZATIONS: tuple[str, ...] = ("velocity", "x1", "x0", "score")


def is_concrete(x) -> bool:
    """True when ``x`` holds a value known at trace time (not a tracer)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(x))


def check_scalar_time(t, name: str = "t", lo: float = 0.0, hi: float = 1.0):
    """Return ``t`` as an array after checking it is a scalar in ``[lo, hi]``.

    Shape is always checked; the range only when ``t`` is concrete (a traced ``t``
    cannot be checked without a host round trip; jfm never adds one silently).
    """
    if isinstance(t, bool) or not isinstance(t, (int, float, np.ndarray, jax.Array, np.generic)):
        raise TypeError(f"`{name}` must be a real scalar (float or 0-d array); got {type(t)}.")
    t = jnp.asarray(t)
    if t.shape != ():
        raise ValueError(
            f"`{name}` must be a scalar (shape ()); got shape {t.shape}. jfm's path and field "
            "maths act on one example: batch with jax.vmap."
        )
    if not jnp.issubdtype(t.dtype, jnp.floating):
        t = t.astype(jnp.result_type(float))
    if is_concrete(t):
        tv = float(t)
        if not (lo <= tv <= hi):
            raise ValueError(f"`{name}` must lie in [{lo}, {hi}]; got {name}={tv}.")
    return t


def check_name(value: str, name: str, allowed: Sequence[str]) -> str:
    """Check that a string option is one of ``allowed``."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"`{name}` must be one of {tuple(allowed)}; got {value!r}.")
    return value


def check_array(x, name: str, *, ndim: int | None = None, min_ndim: int | None = None):
    """Check that ``x`` is a floating array (optionally of a given rank) and return it."""
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


def check_key(key, name: str = "key"):
    """Check that ``key`` is a JAX PRNG key (new-style typed or legacy uint32[2])."""
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


def event_dtype(*xs):
    """The floating dtype shared by the arrays ``xs`` (the first one's)."""
    return jnp.result_type(*xs)


def check_real_scalar(value, name: str):
    """Return ``value`` as a 0-d floating array after checking it is a real scalar."""
    import numbers

    if isinstance(value, bool) or not isinstance(
        value, (numbers.Real, np.ndarray, np.generic, jax.Array)
    ):
        raise TypeError(f"`{name}` must be a real scalar; got {type(value)}.")
    value = jnp.asarray(value)
    if value.shape != ():
        raise ValueError(f"`{name}` must be a scalar; got shape {value.shape}.")
    if not jnp.issubdtype(value.dtype, jnp.floating):
        value = value.astype(jnp.result_type(float))
    return value


def sample_flat(sampler, key, shape, *args, **kwargs):
    """``sampler(key, shape, *args, **kwargs)`` (a ``jax.random`` sampler), drawn flat.

    The values are identical (threefry's counters, JAX's default PRNG, are the row-major
    flat index, so a flat draw reshaped is the same array bit for bit; any other PRNG
    implementation still gives i.i.d. draws of the same law), but the compile is not: on
    XLA:CPU with JAX 0.10, a rank-4 draw such as an image batch ``[B, H, W, C]`` or a
    conv kernel takes 1-15 s to compile per new shape, a flat one ~0.3 s.
    """
    shape = tuple(shape)
    if len(shape) < 2:
        return sampler(key, shape, *args, **kwargs)
    return sampler(key, (math.prod(shape),), *args, **kwargs).reshape(shape)
