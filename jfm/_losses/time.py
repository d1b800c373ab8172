"""Training-time samplers: ``sampler(n, *, key, dtype) -> (n,)`` times in ``[0, 1]``."""

from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._checks import check_int, check_key, check_positive, check_scalar


def _float_dtype(dtype):
    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`dtype` must be a floating dtype; got {dtype}.")
    return dtype


def uniform_time(n: int, *, key: PRNGKeyArray, dtype: Any = None) -> Float[Array, " n"]:
    """``n`` times drawn independently from ``U[0, 1)``.

    Args:
        n: number of times, a positive int.
        key: PRNG key (keyword-only, required).
        dtype: floating dtype (default: JAX's default float).

    Returns:
        ``(n,)`` times in ``[0, 1)``.

    Raises:
        TypeError: ``n`` not an int; ``key`` not a PRNG key; ``dtype`` not floating.
        ValueError: ``n < 1``.

    Examples:
        >>> import jax, jfm
        >>> jfm.uniform_time(3, key=jax.random.key(0)).shape
        (3,)
    """
    n = check_int(n, "n")
    check_key(key)
    return jr.uniform(key, (n,), _float_dtype(dtype))


def logit_normal_time(
    n: int,
    *,
    key: PRNGKeyArray,
    mean: float | Float[ArrayLike, ""] = 0.0,
    std: float | Float[ArrayLike, ""] = 1.0,
    dtype: Any = None,
) -> Float[Array, " n"]:
    r"""``n`` times from the logit-normal distribution, ``t = sigmoid(mean + std z)``,
    ``z ~ N(0, 1)``.

    Its density on ``(0, 1)`` is
    ``p(t) = exp(-(logit t - mean)^2 / (2 std^2)) / (std sqrt(2 pi) t (1 - t))``; it
    puts more weight on intermediate times than ``U[0, 1]`` (``mean > 0`` favours the data
    end ``t -> 1``, in jfm's time convention).

    Args:
        n: number of times, a positive int.
        key: PRNG key (keyword-only, required).
        mean: location of ``logit t`` (default 0).
        std: scale of ``logit t``, ``> 0`` (default 1).
        dtype: floating dtype (default: JAX's default float).

    Returns:
        ``(n,)`` times in ``(0, 1)`` (in floating point, ``0`` and ``1`` are reachable
        for extreme draws).

    Raises:
        TypeError: ``n`` not an int; ``key`` not a PRNG key; ``dtype`` not floating.
        ValueError: ``n < 1``; ``std <= 0``; ``mean`` or ``std`` not finite.

    References:
        Esser et al., "Scaling Rectified Flow Transformers for High-Resolution Image
        Synthesis", ICML 2024.
    """
    n = check_int(n, "n")
    check_key(key)
    dtype = _float_dtype(dtype)
    with jax.ensure_compile_time_eval():  # range-checked when concrete, also under jit
        std = check_positive(std, "std", dtype)
        mean = check_scalar(mean, "mean", dtype)
    z = jr.normal(key, (n,), dtype)
    return jax.nn.sigmoid(mean + std * z)


__all__ = ["logit_normal_time", "uniform_time"]
