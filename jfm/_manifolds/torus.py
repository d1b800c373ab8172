"""The flat torus ``T^d = (R / 2 pi Z)^d`` in angle coordinates."""

import math

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr

from .base import AbstractManifold, check_dim

TWO_PI = 2 * math.pi


def wrap(a):
    """An angle difference wrapped to ``[-pi, pi)``."""
    return jnp.mod(a + math.pi, TWO_PI) - math.pi


class FlatTorus(AbstractManifold):
    r"""The flat torus ``T^d``: points are angles in ``[0, 2 pi)^d`` (shape ``(d,)``).

    With the flat metric ``g = I`` in angle coordinates:
    ``exp_x(v) = (x + v) mod 2 pi``, ``log_x(y) = wrap(y - x)`` with
    ``wrap(a) in [-pi, pi)`` (the shortest of the windings; on the cut locus, a
    difference of exactly ``pi``, it picks ``-pi``), ``d(x, y) = |wrap(y - x)|``,
    parallel transport the identity, and ``vol(T^d) = (2 pi)^d``.

    Fields on the torus must be ``2 pi``-periodic in every angle (e.g. networks fed with
    ``cos x, sin x``, as :class:`jfm.models.ManifoldMLP` does).

    Args:
        d: the number of angles, ``>= 1``.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> jfm.FlatTorus(1).log(jnp.array([0.1]), jnp.array([6.2])).round(4)  # 6.1 - 2 pi
        Array([-0.1832], dtype=float32)
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
        return True

    @property
    def log_volume(self):
        return self.d * math.log(TWO_PI)

    def exp(self, x, v):
        return jnp.mod(x + v, TWO_PI)

    def log(self, x, y):
        return wrap(y - x)

    def proj(self, x):
        return jnp.mod(x, TWO_PI)

    def proj_tangent(self, x, v):
        return v

    def inner(self, x, u, v):
        return jnp.sum(u * v)

    def transport(self, x, y, v):
        return v

    def dist(self, x, y):
        return jnp.linalg.norm(wrap(y - x))

    def _uniform(self, key, dtype):
        return jr.uniform(key, (self.d,), dtype, 0.0, TWO_PI)
