"""Products of manifolds, points stored as one flat array with a recorded split."""

import math

import jax.numpy as jnp
import jax.random as jr

from .base import AbstractManifold, require_manifold


class ProductManifold(AbstractManifold):
    r"""The Riemannian product ``M_1 x ... x M_k`` of manifolds.

    A point is ONE flat array of shape ``(n,)``, ``n = sum_i prod(event_shape_i)``: the
    factors' points, each flattened, concatenated in order. :meth:`split` returns the
    factors' points in their own event shapes (``(3, 3)`` for an ``SO(3)`` factor) and
    :meth:`join` is its inverse; every map acts factor by factor on those. A flat array
    (rather than a tuple of arrays) keeps the product a drop-in manifold for jfm's
    samplers, likelihood, losses and models, which all take ``[B, *event]`` arrays.

    The metric is the sum of the factors' (``d^2 = sum_i d_i^2``), the volume the product
    (``log vol = sum_i log vol_i``), the uniform law the product of the uniforms, and
    ``dim = sum_i dim_i``. Products nest.

    Args:
        *factors: two or more :class:`jfm.AbstractManifold`.

    Examples:
        >>> import jfm
        >>> m = jfm.ProductManifold(jfm.FlatTorus(2), jfm.Sphere(2))
        >>> m.event_shape, m.dim
        ((5,), 4)
    """

    factors: tuple[AbstractManifold, ...]

    def __init__(self, *factors: AbstractManifold):
        if len(factors) < 2:
            raise ValueError(f"A ProductManifold needs at least 2 factors; got {len(factors)}.")
        for i, f in enumerate(factors):
            require_manifold(f, f"factors[{i}]")
        self.factors = tuple(factors)

    @property
    def sizes(self) -> tuple[int, ...]:
        """The flat size of each factor's points."""
        return tuple(math.prod(f.event_shape) for f in self.factors)

    @property
    def event_shape(self):
        return (sum(self.sizes),)

    @property
    def dim(self):
        return sum(f.dim for f in self.factors)

    @property
    def compact(self):
        return all(f.compact for f in self.factors)

    @property
    def log_volume(self):
        return sum(f.log_volume for f in self.factors)

    def split(self, x):
        """``(n,) -> tuple`` of the factors' points (or vectors), in their event shapes."""
        out, start = [], 0
        for f, size in zip(self.factors, self.sizes):
            out.append(x[start : start + size].reshape(f.event_shape))
            start += size
        return tuple(out)

    def join(self, parts):
        """The inverse of :meth:`split`: factors' arrays to one flat ``(n,)`` array."""
        return jnp.concatenate([jnp.reshape(p, (-1,)) for p in parts])

    def _map(self, name, *arrays):
        split = [self.split(a) for a in arrays]
        return self.join(
            [getattr(f, name)(*(s[i] for s in split)) for i, f in enumerate(self.factors)]
        )

    def exp(self, x, v):
        return self._map("exp", x, v)

    def log(self, x, y):
        return self._map("log", x, y)

    def proj(self, x):
        return self._map("proj", x)

    def proj_tangent(self, x, v):
        return self._map("proj_tangent", x, v)

    def transport(self, x, y, v):
        return self._map("transport", x, y, v)

    def inner(self, x, u, v):
        xs, us, vs = self.split(x), self.split(u), self.split(v)
        return sum(f.inner(a, b, c) for f, a, b, c in zip(self.factors, xs, us, vs))

    def dist(self, x, y):
        xs, ys = self.split(x), self.split(y)
        return jnp.sqrt(sum(f.dist(a, b) ** 2 for f, a, b in zip(self.factors, xs, ys)))

    def _uniform(self, key, dtype):
        keys = jr.split(key, len(self.factors))
        return self.join([f._uniform(k, dtype) for f, k in zip(self.factors, keys)])
