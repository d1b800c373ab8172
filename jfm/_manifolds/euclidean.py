"""Euclidean space ``R^d`` as a manifold (flat, not compact)."""

import equinox as eqx
import jax.numpy as jnp

from .base import AbstractManifold, check_dim


class Euclidean(AbstractManifold):
    r"""Euclidean space ``R^d``: ``exp_x(v) = x + v``, ``log_x(y) = y - x``, ``g = I``.

    Not compact: it has no uniform distribution and no finite volume, so a
    :class:`jfm.GeodesicPath` on it needs a ``source=`` (e.g. a Gaussian). With the
    identity schedule the geodesic path is the straight (CondOT) path.

    Args:
        d: the dimension, ``>= 1``. Points have shape ``(d,)``.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> jfm.Euclidean(2).log(jnp.zeros(2), jnp.ones(2))
        Array([1., 1.], dtype=float32)
    """

    d: int = eqx.field(static=True)

    def __check_init__(self):
        check_dim(self.d)

    @property
    def event_shape(self):
        return (self.d,)

    @property
    def dim(self):
        return self.d

    @property
    def compact(self):
        return False

    @property
    def log_volume(self):
        raise ValueError("Euclidean space has infinite volume (no log_volume).")

    def exp(self, x, v):
        return x + v

    def log(self, x, y):
        return y - x

    def proj(self, x):
        return x

    def proj_tangent(self, x, v):
        return v

    def inner(self, x, u, v):
        return jnp.sum(u * v)

    def transport(self, x, y, v):
        return v

    def dist(self, x, y):
        return jnp.linalg.norm(y - x)

    def _uniform(self, key, dtype):
        raise ValueError("Euclidean space has no uniform distribution.")
