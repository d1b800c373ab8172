"""Sinusoidal (transformer-style) time embeddings."""

import math

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, ArrayLike, Float

from .._checks import check_array, check_positive, check_scalar
from ._common import check_even_dim


def _check_scales(scale, max_period) -> tuple[float, float]:
    # Checked as arrays, used as the Python floats given (no float32 rounding of them).
    check_positive(scale, "scale")
    check_scalar(max_period, "max_period", lo=1.0, strict_lo=True)
    return float(scale), float(max_period)


def sinusoidal_embedding(
    t: Float[ArrayLike, "*batch"],
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
        TypeError: ``t`` not a floating array, ``dim`` not an int.
        ValueError: ``t`` not 1-d; ``dim`` odd or ``< 2``; ``max_period <= 1`` or
            ``scale <= 0``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jfm.models import sinusoidal_embedding
        >>> sinusoidal_embedding(jnp.zeros(3), 8).shape
        (3, 8)

    References:
        Vaswani et al., "Attention Is All You Need", 2017; Ho et al., "Denoising
        Diffusion Probabilistic Models", 2020.
    """
    dim = check_even_dim(dim, "dim")
    t = check_array(t, "t", ndim=1)
    scale, max_period = _check_scales(scale, max_period)
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
        self.dim = check_even_dim(dim, "dim")
        self.scale, self.max_period = _check_scales(scale, max_period)

    def __call__(self, t: Float[ArrayLike, "*batch"]) -> Float[Array, "batch embed"]:
        """``(batch,) -> (batch, dim)``, see :func:`sinusoidal_embedding`."""
        return sinusoidal_embedding(t, self.dim, scale=self.scale, max_period=self.max_period)


__all__ = ["SinusoidalEmbedding", "sinusoidal_embedding"]
