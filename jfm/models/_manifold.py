"""A time-conditioned MLP whose output is a tangent vector of a manifold (Flax NNX)."""

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, ArrayLike, Float

from .._checks import check_callable, check_int
from .._manifolds import SO3, AbstractManifold, FlatTorus, ProductManifold
from .._manifolds.base import require_manifold
from .._manifolds.so3 import hat
from ._common import cast_to_compute_dtype, check_even_dim, check_network_options, check_times
from ._embed import sinusoidal_embedding


def _in_size(m) -> int:
    if isinstance(m, ProductManifold):
        return sum(_in_size(f) for f in m.factors)
    if isinstance(m, FlatTorus):
        return 2 * m.d
    return math.prod(m.event_shape)


def _out_size(m) -> int:
    if isinstance(m, ProductManifold):
        return sum(_out_size(f) for f in m.factors)
    if isinstance(m, SO3):
        return 3
    return math.prod(m.event_shape)


def _features(m, x):
    """Per-example input features: ``(cos, sin)`` of torus angles (periodic), the
    embedding coordinates otherwise."""
    if isinstance(m, ProductManifold):
        return jnp.concatenate([_features(f, p) for f, p in zip(m.factors, m.split(x))])
    if isinstance(m, FlatTorus):
        return jnp.concatenate([jnp.cos(x), jnp.sin(x)])
    return x.reshape(-1)


def _tangent(m, x, out):
    """Per-example network output -> tangent vector at ``x``."""
    if isinstance(m, ProductManifold):
        parts, start = [], 0
        for f, p in zip(m.factors, m.split(x)):
            k = _out_size(f)
            parts.append(_tangent(f, p, out[start : start + k]))
            start += k
        return m.join(parts)
    if isinstance(m, SO3):
        return x @ hat(out)  # a Lie-algebra output w: the tangent vector R [w]_x
    return m.proj_tangent(x, out.reshape(m.event_shape))


class ManifoldMLP(nnx.Module):
    r"""An MLP vector field on a manifold, conditioned on time (batch-first).

    ``__call__(t[B], x[B, *event], args) -> [B, *event]`` tangent vectors: the point's
    features (the embedding coordinates; ``cos x, sin x`` for torus angles, so the field
    is periodic; factor by factor on a :class:`jfm.ProductManifold`) concatenated with
    the sinusoidal embedding of ``t`` (:func:`jfm.models.sinusoidal_embedding`), then
    ``depth`` hidden layers of width ``hidden_features`` and a linear output, mapped to
    the tangent space: projected by ``manifold.proj_tangent`` (sphere, torus, Euclidean),
    or, on ``SO(3)``, read as a Lie-algebra vector ``w in R^3`` with tangent vector
    ``R [w]_x`` (no projection needed). Dtypes as in :class:`jfm.models.MLP`.

    Args:
        manifold: the :class:`jfm.AbstractManifold` of the points.
        hidden_features: width of the hidden layers (default 256).
        depth: number of hidden layers (default 3).
        time_embed_dim: size of the time embedding (even, default 32).
        activation: nonlinearity (default ``nnx.silu``).
        time_scale: factor on ``t`` in the embedding (default 1000).
        param_dtype: dtype of the parameters (default float32).
        dtype: computation dtype, or ``None`` for ``x``'s.
        rngs: ``nnx.Rngs`` (keyword-only, required).

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> from flax import nnx
        >>> net = jfm.models.ManifoldMLP(jfm.Sphere(2), hidden_features=16, depth=1,
        ...                              rngs=nnx.Rngs(0))
        >>> x = jnp.array([[0.0, 0.0, 1.0]])
        >>> float(jnp.abs(jnp.sum(net(jnp.zeros(1), x) * x)))  # tangent: orthogonal to x
        0.0
    """

    def __init__(
        self,
        manifold: AbstractManifold,
        *,
        hidden_features: int = 256,
        depth: int = 3,
        time_embed_dim: int = 32,
        activation: Callable[[Array], Array] = nnx.silu,
        time_scale: float = 1000.0,
        param_dtype: Any = jnp.float32,
        dtype: Any = None,
        rngs: nnx.Rngs,
    ):
        self.manifold = require_manifold(manifold)
        hidden_features = check_int(hidden_features, "hidden_features")
        self.depth = check_int(depth, "depth", lo=0)
        self.time_embed_dim = check_even_dim(time_embed_dim, "time_embed_dim")
        self.activation = check_callable(activation, "activation", "(x)")
        self.time_scale = check_network_options(time_scale, param_dtype, dtype, rngs)
        self.dtype = dtype
        linear = dict(param_dtype=param_dtype, promote_dtype=cast_to_compute_dtype, rngs=rngs)
        width = _in_size(manifold) + self.time_embed_dim
        layers = []
        for _ in range(self.depth):
            layers.append(nnx.Linear(width, hidden_features, **linear))
            width = hidden_features
        self.hidden = nnx.List(layers)
        self.out = nnx.Linear(width, _out_size(manifold), **linear)

    def __call__(
        self, t: Float[ArrayLike, "*batch"], x: Float[Array, " batch *event"], args: Any = None
    ) -> Float[Array, " batch *event"]:
        """``(B,)`` times and ``(B, *event)`` points -> ``(B, *event)`` tangent vectors."""
        m = self.manifold
        x = m.check_point(x, "x", batch=True)
        batch = x.shape[0]
        cdtype = x.dtype if self.dtype is None else jnp.dtype(self.dtype)
        x = x.astype(cdtype)
        temb = sinusoidal_embedding(
            check_times(t, batch).astype(cdtype), self.time_embed_dim, scale=self.time_scale
        )
        h = jnp.concatenate([jax.vmap(lambda p: _features(m, p))(x), temb], axis=-1)
        for layer in self.hidden:
            h = self.activation(layer(h))
        out = self.out(h)
        return jax.vmap(lambda p, o: _tangent(m, p, o))(x, out)


__all__ = ["ManifoldMLP"]
