"""The unit sphere ``S^d`` embedded in ``R^{d+1}``."""

import math

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr

from .base import AbstractManifold, check_dim, sinc, vnorm


class Sphere(AbstractManifold):
    r"""The unit sphere ``S^d = {x in R^{d+1} : |x| = 1}`` with the round metric.

    Points have shape ``(d + 1,)``; ``T_x S^d = {v : x . v = 0}``, ``g`` the Euclidean
    inner product. With ``theta = |v|``,

    .. math::
        \exp_x(v) = \cos\theta\, x + \frac{\sin\theta}{\theta} v, \qquad
        d(x, y) = 2 \operatorname{atan2}(|x - y|, |x + y|), \qquad
        \log_x(y) = \frac{d(x, y)}{|P_x (y - x)|} P_x (y - x),

    with ``P_x = I - x x^T`` and ``sin(theta)/theta`` by its series near 0 (smooth, exact
    to round-off). At the antipode ``y = -x`` (the cut locus) every direction is a
    shortest geodesic; ``log`` then returns a fixed one of length ``pi`` (the projection
    of the basis vector along the smallest ``|x_i|``), so ``exp_x(log_x(-x)) = -x``
    still holds. ``vol(S^d) = 2 pi^{(d+1)/2} / Gamma((d+1)/2)`` (``4 pi`` for ``S^2``).

    Args:
        d: the intrinsic dimension, ``>= 1`` (``Sphere(2)`` has points in ``R^3``).

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> s = jfm.Sphere(2)
        >>> float(s.dist(jnp.array([1.0, 0, 0]), jnp.array([0.0, 1, 0])))  # pi / 2
        1.5707963...
    """

    d: int = eqx.field(static=True)

    def __check_init__(self):
        check_dim(self.d)

    @property
    def event_shape(self):
        return (self.d + 1,)

    @property
    def dim(self):
        return self.d

    @property
    def compact(self):
        return True

    @property
    def log_volume(self):
        n = self.d + 1
        return math.log(2.0) + 0.5 * n * math.log(math.pi) - math.lgamma(0.5 * n)

    def exp(self, x, v):
        theta = vnorm(v)
        y = jnp.cos(theta) * x + sinc(theta) * v
        return self.proj(y)

    def dist(self, x, y):
        return 2 * jnp.arctan2(vnorm(x - y), vnorm(x + y))

    def log(self, x, y):
        u = self.proj_tangent(x, y - x)
        nu = vnorm(u)
        theta = self.dist(x, y)
        pos = nu > 0
        scale = theta / jnp.where(pos, nu, jnp.ones_like(nu))
        # The antipode: a fixed direction of length pi (any one is a shortest geodesic).
        e = (jnp.arange(x.shape[0]) == jnp.argmin(jnp.abs(x))).astype(x.dtype)
        w = self.proj_tangent(x, e)
        w = w / vnorm(w)
        far = jnp.where(theta > 1, math.pi * w, jnp.zeros_like(w))
        return jnp.where(pos, scale * u, far)

    def proj(self, x):
        return x / jnp.linalg.norm(x)

    def proj_tangent(self, x, v):
        return v - jnp.sum(x * v) * x

    def inner(self, x, u, v):
        return jnp.sum(u * v)

    def transport(self, x, y, v):
        # Along the great circle: the component along log_x(y) rotates into the plane of
        # x and y, the orthogonal part is unchanged.
        lxy = self.log(x, y)
        th2 = jnp.sum(lxy * lxy)
        pos = th2 > 0
        c = jnp.sum(lxy * v) / jnp.where(pos, th2, jnp.ones_like(th2))
        out = v - c * (lxy + self.log(y, x))
        return jnp.where(pos, out, v)

    def _uniform(self, key, dtype):
        z = jr.normal(key, (self.d + 1,), dtype)
        return z / jnp.linalg.norm(z)
