"""Sinusoidal (transformer-style) time embeddings."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, ArrayLike, Float


def _check_dim(dim) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"`dim` must be an int; got {type(dim)}.")
    if dim < 2 or dim % 2:
        raise ValueError(f"`dim` must be an even int >= 2 (sin and cos halves); got dim={dim}.")
    return int(dim)


def sinusoidal_embedding(
    t: Float[ArrayLike, " batch"],
    dim: int,
    *,
    scale: float = 1000.0,
    max_period: float = 10000.0,
) -> Float[Array, "batch embed"]:
    r"""Transformer-style sinusoidal embedding of a batch of times.

    With ``h = dim / 2`` log-spaced frequencies ``f_k = max_period^{-k / h}``,
    ``k = 0, ..., h - 1``,

    .. math::
        e(t) = [\sin(s t f_0), \dots, \sin(s t f_{h-1}),
                \cos(s t f_0), \dots, \cos(s t f_{h-1})],

    where ``s = scale``. jfm's times lie in ``[0, 1]``; the default ``scale = 1000``
    spreads them over the range of DDPM's integer steps, so the fastest frequency
    resolves time differences of about ``1e-3`` and the slowest varies by less than
    ``scale / max_period`` radians over ``[0, 1]``. No learned parameters.

    Args:
        t: ``(batch,)`` floating times (batch-first, a 1-d array).
        dim: embedding size, an even int ``>= 2``.
        scale: factor applied to ``t`` before the sinusoids (default ``1000``).
        max_period: the longest period, in units of ``scale * t`` (default ``10000``).

    Returns:
        ``(batch, dim)`` in ``t``'s dtype.

    Raises:
        TypeError: ``t`` not floating, ``dim`` not an int.
        ValueError: ``t`` not 1-d; ``dim`` odd or ``< 2``; ``max_period <= 1`` or
            ``scale <= 0``.

    References:
        Vaswani et al., "Attention Is All You Need", 2017; Ho et al., "Denoising
        Diffusion Probabilistic Models", 2020.
    """
    dim = _check_dim(dim)
    if not isinstance(t, (jax.Array, np.ndarray)):
        raise TypeError(f"`t` must be a 1-d floating array of times; got {type(t)}.")
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.floating):
        raise TypeError(f"`t` must have a floating dtype; got {t.dtype}.")
    if t.ndim != 1:
        raise ValueError(f"`t` must have shape (batch,); got shape {t.shape}.")
    if not float(max_period) > 1:
        raise ValueError(f"`max_period` must be > 1; got max_period={max_period}.")
    if not float(scale) > 0:
        raise ValueError(f"`scale` must be > 0; got scale={scale}.")
    half = dim // 2
    freqs = jnp.exp((-math.log(max_period) / half) * jnp.arange(half, dtype=t.dtype))
    angles = (scale * t)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class SinusoidalEmbedding(nnx.Module):
    """Module form of :func:`sinusoidal_embedding` (no parameters).

    Args:
        dim: embedding size, an even int ``>= 2``.
        scale: factor applied to ``t`` (default ``1000``).
        max_period: the longest period (default ``10000``).

    Examples:
        >>> import jax.numpy as jnp
        >>> from jfm.models import SinusoidalEmbedding
        >>> SinusoidalEmbedding(8)(jnp.zeros(3)).shape
        (3, 8)
    """

    def __init__(self, dim: int, *, scale: float = 1000.0, max_period: float = 10000.0):
        self.dim = _check_dim(dim)
        if not float(max_period) > 1:
            raise ValueError(f"`max_period` must be > 1; got max_period={max_period}.")
        if not float(scale) > 0:
            raise ValueError(f"`scale` must be > 0; got scale={scale}.")
        self.scale = float(scale)
        self.max_period = float(max_period)

    def __call__(self, t: Float[ArrayLike, " batch"]) -> Float[Array, "batch embed"]:
        """``(batch,) -> (batch, dim)``, see :func:`sinusoidal_embedding`."""
        return sinusoidal_embedding(t, self.dim, scale=self.scale, max_period=self.max_period)


__all__ = ["SinusoidalEmbedding", "sinusoidal_embedding"]
