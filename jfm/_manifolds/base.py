r"""The manifold interface: a frozen pytree with the maps Riemannian flow matching needs.

Every manifold here is embedded in (or equal to) a Euclidean space: a point is an array
of the manifold's ``event_shape`` (``(d + 1,)`` for the sphere ``S^d``, ``(3, 3)`` for
``SO(3)``), and a tangent vector at ``x`` is an array of the same shape in the tangent
space ``T_x M``. All methods act on ONE point (batch with :func:`jax.vmap`), work under
``jax.jit``/``jax.vmap``/``jax.grad`` and keep the dtype of their inputs.
"""

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_int


class AbstractManifold(eqx.Module):
    r"""A Riemannian manifold ``M`` with its exponential map, logarithm and metric.

    Abstract methods (one point ``x`` of ``event_shape``; ``v``, ``u`` tangent at ``x``):

    - ``exp(x, v)``: the exponential map, the end at time 1 of the geodesic from ``x``
      with initial velocity ``v``;
    - ``log(x, y)``: its inverse, the tangent vector at ``x`` of the shortest geodesic to
      ``y`` (a fixed choice on the cut locus, e.g. antipodal points of the sphere);
    - ``proj(x)``: the closest point of ``M`` to an ambient ``x`` (near ``M``);
    - ``proj_tangent(x, v)``: the orthogonal projection onto ``T_x M``;
    - ``inner(x, u, v)``: the metric ``g_x(u, v)``;
    - ``transport(x, y, v)``: parallel transport of ``v`` along the geodesic to ``y``;
    - ``random_uniform(shape, *, key)``: the uniform law (normalized volume measure) of a
      compact manifold;
    - ``log_volume``: ``log vol(M)``; ``dim``: the intrinsic dimension;
      ``event_shape``: the shape of a point.

    ``dist(x, y)`` defaults to ``sqrt(g_x(log_x y, log_x y))``; the manifolds override it
    with a formula accurate to round-off at small and large distances.

    For every manifold here the derivative of ``proj`` at a point of ``M`` is the
    tangent projector; the Riemannian divergence of a tangent field ``f`` is then
    ``tr d(P f(proj(.)))``, the trace in ambient coordinates (used by
    :func:`jfm.manifold_divergence`).
    """

    @property
    @abc.abstractmethod
    def event_shape(self) -> tuple[int, ...]:
        """The shape of one point (and of one tangent vector)."""

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """The intrinsic dimension of ``M``."""

    @property
    @abc.abstractmethod
    def compact(self) -> bool:
        """Whether ``M`` is compact (then it has a uniform distribution)."""

    @property
    @abc.abstractmethod
    def log_volume(self) -> float:
        """``log vol(M)`` for the manifold's metric (compact manifolds only)."""

    @abc.abstractmethod
    def exp(self, x: Float[Array, "*e"], v: Float[Array, "*e"]) -> Float[Array, "*e"]:
        """The exponential map ``exp_x(v)``."""

    @abc.abstractmethod
    def log(self, x: Float[Array, "*e"], y: Float[Array, "*e"]) -> Float[Array, "*e"]:
        """The logarithm ``log_x(y)`` (``exp_x(log_x y) = y``)."""

    @abc.abstractmethod
    def proj(self, x: Float[Array, "*e"]) -> Float[Array, "*e"]:
        """The closest point of ``M`` to ``x``."""

    @abc.abstractmethod
    def proj_tangent(self, x: Float[Array, "*e"], v: Float[Array, "*e"]) -> Float[Array, "*e"]:
        """The orthogonal projection of an ambient ``v`` onto ``T_x M``."""

    @abc.abstractmethod
    def inner(
        self, x: Float[Array, "*e"], u: Float[Array, "*e"], v: Float[Array, "*e"]
    ) -> Float[Array, ""]:
        """The metric ``g_x(u, v)``."""

    @abc.abstractmethod
    def transport(
        self, x: Float[Array, "*e"], y: Float[Array, "*e"], v: Float[Array, "*e"]
    ) -> Float[Array, "*e"]:
        """Parallel transport of ``v`` in ``T_x M`` to ``T_y M`` along the geodesic."""

    @abc.abstractmethod
    def _uniform(self, key: PRNGKeyArray, dtype) -> Float[Array, "*e"]:
        """One uniform draw (compact manifolds)."""

    def dist(self, x: Float[Array, "*e"], y: Float[Array, "*e"]) -> Float[Array, ""]:
        """The geodesic distance ``d(x, y)``."""
        v = self.log(x, y)
        return jnp.sqrt(self.inner(x, v, v))

    def norm(self, x: Float[Array, "*e"], v: Float[Array, "*e"]) -> Float[Array, ""]:
        """``|v|_x = sqrt(g_x(v, v))``."""
        return jnp.sqrt(self.inner(x, v, v))

    def random_uniform(
        self, shape: int | tuple[int, ...], *, key: PRNGKeyArray, dtype=None
    ) -> Float[Array, "..."]:
        """``shape`` (an int ``n`` or a batch shape) independent uniform draws.

        Returns ``(*shape, *event_shape)`` points in ``dtype`` (default JAX's default
        float). Raises ``ValueError`` for a non-compact manifold.
        """
        if not self.compact:
            raise ValueError(
                f"{type(self).__name__} is not compact and has no uniform distribution; "
                "give the path a source distribution instead."
            )
        shape = (shape,) if isinstance(shape, int) and not isinstance(shape, bool) else shape
        if not isinstance(shape, tuple) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
        ):
            raise TypeError(f"`shape` must be an int or a tuple of ints; got {shape!r}.")
        dtype = float_dtype(dtype)
        n = math.prod(shape)
        keys = jax.random.split(key, max(n, 1))[:n]
        pts = jax.vmap(lambda k: self._uniform(k, dtype))(keys)
        return pts.reshape(*shape, *self.event_shape)

    def check_point(self, x, name: str = "x", batch: bool = False):
        """``x`` as a floating array of shape ``(*event_shape)`` (``(B, *event_shape)``
        with ``batch``); raises ``TypeError``/``ValueError`` naming ``name``."""
        if not isinstance(x, (jax.Array, float, int)) and not hasattr(x, "__array__"):
            raise TypeError(f"`{name}` must be an array; got {type(x)}.")
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"`{name}` must have a floating dtype; got {x.dtype}.")
        ev = self.event_shape
        want = ("B", *ev) if batch else ev
        ok = x.ndim == len(ev) + int(batch) and tuple(x.shape[int(batch) :]) == ev
        if not ok:
            raise ValueError(
                f"`{name}` must have shape {tuple(want)} (points of {self!r}); got shape {x.shape}."
            )
        return x


def float_dtype(dtype):
    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`dtype` must be a floating dtype; got {dtype}.")
    return dtype


def check_dim(d, name: str = "d", lo: int = 1) -> int:
    return check_int(d, name, lo)


def sinc(a):
    """``sin(a) / a``, with its Taylor series near 0 (accurate to round-off, smooth)."""
    small = jnp.abs(a) < 1e-2
    safe = jnp.where(small, jnp.ones_like(a), a)
    a2 = a * a
    return jnp.where(small, 1 - a2 / 6 + a2 * a2 / 120, jnp.sin(safe) / safe)


def vnorm(v):
    """The Euclidean norm of all entries, with a zero gradient at 0 (not NaN)."""
    sq = jnp.sum(v * v)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, jnp.ones_like(sq))), jnp.zeros_like(sq))


def require_manifold(m, name: str = "manifold"):
    if not isinstance(m, AbstractManifold):
        raise TypeError(
            f"`{name}` must be a jfm.AbstractManifold (e.g. jfm.Sphere(2), jfm.FlatTorus(2), "
            f"jfm.SO3()); got {type(m).__name__}."
        )
    return m


def batch_map(fn, nbatch: int):
    """``fn`` vmapped over ``nbatch`` leading axes of all its arguments."""
    for _ in range(nbatch):
        fn = jax.vmap(fn)
    return fn
