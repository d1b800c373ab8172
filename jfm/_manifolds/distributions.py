r"""Distributions on manifolds with exact densities (w.r.t. the volume measure) and exact
samplers: the ground truth of Riemannian flow matching's tests and benchmarks."""

import abc
import math

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
from jax.scipy.special import erf, logsumexp
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_array, check_int, check_key
from .base import AbstractManifold, float_dtype, require_manifold, sinc, vnorm
from .product import ProductManifold
from .so3 import SO3, expm_so3
from .sphere import Sphere
from .torus import TWO_PI, FlatTorus


class AbstractManifoldDistribution(eqx.Module):
    """A distribution on ``manifold`` with ``log_prob`` (per example, nats, w.r.t. the
    manifold's volume measure) and ``sample(n, *, key)`` (``[n, *event]``).

    What a :class:`jfm.GeodesicPath` takes as its ``source=``, and the data of the
    tests and benchmarks. ``entropy(n, key=)`` is the Monte Carlo estimate
    ``-mean log p(x_i)`` over ``n`` fresh samples, with its standard error.
    """

    @property
    @abc.abstractmethod
    def manifold(self) -> AbstractManifold:
        """The manifold the distribution lives on."""

    @abc.abstractmethod
    def log_prob(self, x: Float[Array, "*e"]) -> Float[Array, ""]:
        """``log p(x)`` of ONE point, w.r.t. the manifold's volume measure."""

    @abc.abstractmethod
    def sample(self, n: int, *, key: PRNGKeyArray, dtype=None) -> Float[Array, " n *e"]:
        """``n`` independent draws, ``[n, *event]`` in ``dtype`` (default JAX's float)."""

    def entropy(self, n: int, *, key: PRNGKeyArray, dtype=None) -> tuple[Array, Array]:
        """``(H, stderr)``: the Monte Carlo entropy ``-mean_i log p(x_i)`` of ``n`` draws."""
        n = check_int(n, "n", 2)
        lp = jax.vmap(self.log_prob)(self.sample(n, key=key, dtype=dtype))
        return -jnp.mean(lp), jnp.std(lp, ddof=1) / math.sqrt(n)


def _check_n_key(n, key):
    check_key(key)
    return check_int(n, "n")


def _log_weights(weights, k, dtype):
    w = check_array(weights, "weights", ndim=1).astype(dtype)
    if w.shape[0] != k:
        raise ValueError(f"`weights` must have shape ({k},) (one per component); got {w.shape}.")
    return jnp.log(w / jnp.sum(w))


class ManifoldUniform(AbstractManifoldDistribution):
    """The uniform distribution (normalized volume) of a compact manifold:
    ``log p = -log vol(M)`` everywhere.

    Args:
        manifold: a compact :class:`jfm.AbstractManifold`.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> float(jfm.ManifoldUniform(jfm.Sphere(2)).log_prob(jnp.array([0.0, 0, 1])))
        -2.53102...
    """

    space: AbstractManifold

    def __check_init__(self):
        require_manifold(self.space, "manifold")
        if not self.space.compact:
            raise ValueError(f"{type(self.space).__name__} is not compact: no uniform law.")

    @property
    def manifold(self):
        return self.space

    def log_prob(self, x):
        return jnp.full((), -self.space.log_volume, jnp.asarray(x).dtype)

    def sample(self, n, *, key, dtype=None):
        n = _check_n_key(n, key)
        return self.space.random_uniform(n, key=key, dtype=dtype)


class VonMisesFisherMixture(AbstractManifoldDistribution):
    r"""A mixture of von Mises-Fisher distributions on the sphere ``S^2``.

    Component ``k`` (mean direction ``mu_k``, concentration ``kappa_k > 0``) has, w.r.t.
    the area measure of ``S^2``,

    .. math::
        p_k(x) = \frac{\kappa_k}{2\pi (1 - e^{-2\kappa_k})}\, e^{\kappa_k (\mu_k \cdot x - 1)},

    and sampling is exact: ``w = mu . x`` by the inverse CDF
    ``w = 1 + log(u + (1 - u) e^{-2 kappa}) / kappa``, ``u ~ U[0, 1)``, and a uniform
    direction in the tangent plane of ``mu``.

    Args:
        means: ``[K, 3]`` mean directions (normalized here).
        concentrations: ``[K]`` concentrations ``kappa > 0``.
        weights: ``[K]`` positive mixture weights (normalized here).

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> vmf = jfm.VonMisesFisherMixture(jnp.array([[0.0, 0, 1]]), jnp.array([4.0]),
        ...                                 jnp.array([1.0]))
        >>> vmf.sample(3, key=jax.random.key(0)).shape
        (3, 3)
    """

    means: Array
    concentrations: Array
    log_weights: Array

    def __init__(self, means, concentrations, weights):
        means = check_array(means, "means", ndim=2)
        if means.shape[1] != 3:
            raise ValueError(f"`means` must have shape [K, 3] (points of S^2); got {means.shape}.")
        k = means.shape[0]
        kap = check_array(concentrations, "concentrations", ndim=1).astype(means.dtype)
        if kap.shape != (k,):
            raise ValueError(f"`concentrations` must have shape ({k},); got {kap.shape}.")
        self.means = means / jnp.linalg.norm(means, axis=1, keepdims=True)
        self.concentrations = kap
        self.log_weights = _log_weights(weights, k, means.dtype)

    @property
    def manifold(self):
        return Sphere(2)

    def log_prob(self, x):
        x = x.astype(self.means.dtype)
        kap = self.concentrations
        lognorm = jnp.log(kap) - math.log(2 * math.pi) - jnp.log(-jnp.expm1(-2 * kap))
        comp = lognorm + kap * (self.means @ x - 1)
        return logsumexp(comp + self.log_weights)

    def sample(self, n, *, key, dtype=None):
        n = _check_n_key(n, key)
        dtype = float_dtype(dtype)
        kc, ku, kd = jr.split(key, 3)
        comp = jr.categorical(kc, self.log_weights, shape=(n,))
        mu = self.means[comp].astype(dtype)
        kap = self.concentrations[comp].astype(dtype)
        u = jr.uniform(ku, (n,), dtype)
        w = 1 + jnp.log(u + (1 - u) * jnp.exp(-2 * kap)) / kap
        w = jnp.clip(w, -1.0, 1.0)
        z = jr.normal(kd, (n, 3), dtype)
        z = z - jnp.sum(z * mu, axis=1, keepdims=True) * mu
        z = z / jnp.linalg.norm(z, axis=1, keepdims=True)
        x = w[:, None] * mu + jnp.sqrt(1 - w * w)[:, None] * z
        return x / jnp.linalg.norm(x, axis=1, keepdims=True)


class WrappedNormalMixture(AbstractManifoldDistribution):
    r"""A mixture of wrapped normal distributions on the flat torus ``T^d``.

    Component ``k``: ``x = (mu_k + s_k * z) mod 2 pi``, ``z ~ N(0, I)`` (diagonal scales),
    whose density on ``[0, 2 pi)^d`` (the torus' volume) is the sum over windings,

    .. math::
        p_k(x) = \prod_{j=1}^{d} \sum_{m=-W}^{W}
        \mathcal N(x_j + 2\pi m;\ \mu_{kj}, s_{kj}^2),

    truncated at ``W = windings`` (the first neglected term is below
    ``exp(-((2W - 1) pi)^2 / (2 s^2))`` relative: round-off for ``s <= 1`` and ``W = 3``).

    Args:
        means: ``[K, d]`` mean angles.
        scales: ``[K, d]`` standard deviations (``> 0``).
        weights: ``[K]`` positive mixture weights.
        windings: ``W``, the windings summed on each side (static, default 3).

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> wn = jfm.WrappedNormalMixture(jnp.ones((1, 2)), jnp.full((1, 2), 0.5),
        ...                               jnp.ones(1))
        >>> wn.sample(4, key=jax.random.key(0)).shape
        (4, 2)
    """

    means: Array
    scales: Array
    log_weights: Array
    windings: int = eqx.field(static=True)

    def __init__(self, means, scales, weights, windings: int = 3):
        means = check_array(means, "means", ndim=2)
        scales = check_array(scales, "scales", ndim=2).astype(means.dtype)
        if scales.shape != means.shape:
            raise ValueError(
                f"`scales` must have the shape of `means` {means.shape}; got {scales.shape}."
            )
        self.means = jnp.mod(means, TWO_PI)
        self.scales = scales
        self.log_weights = _log_weights(weights, means.shape[0], means.dtype)
        self.windings = check_int(windings, "windings", 0)

    @property
    def manifold(self):
        return FlatTorus(self.means.shape[1])

    def log_prob(self, x):
        x = x.astype(self.means.dtype)
        m = jnp.arange(-self.windings, self.windings + 1, dtype=x.dtype) * TWO_PI
        z = (x[None, :, None] + m[None, None, :] - self.means[:, :, None]) / self.scales[:, :, None]
        per_dim = logsumexp(-0.5 * z * z, axis=-1) - jnp.log(self.scales)
        per_dim = per_dim - 0.5 * math.log(2 * math.pi)
        return logsumexp(jnp.sum(per_dim, axis=1) + self.log_weights)

    def sample(self, n, *, key, dtype=None):
        n = _check_n_key(n, key)
        dtype = float_dtype(dtype)
        kc, kz = jr.split(key)
        comp = jr.categorical(kc, self.log_weights, shape=(n,))
        z = jr.normal(kz, (n, self.means.shape[1]), dtype)
        x = self.means[comp].astype(dtype) + self.scales[comp].astype(dtype) * z
        return jnp.mod(x, TWO_PI)


def _log_chi3_cdf(r):
    """``log P(|z| <= r)``, ``z ~ N(0, I_3)``: ``erf(r / sqrt 2) - sqrt(2/pi) r e^{-r^2/2}``."""
    return jnp.log(erf(r / math.sqrt(2)) - math.sqrt(2 / math.pi) * r * jnp.exp(-0.5 * r * r))


class IsotropicSO3Mixture(AbstractManifoldDistribution):
    r"""A mixture of isotropic concentrated distributions on ``SO(3)``.

    Component ``k`` is ``R = mu_k Exp(w)`` with ``w ~ N(0, s_k^2 I_3)`` conditioned on
    ``|w| < pi`` (a Gaussian in exponential coordinates, truncated to the ball where
    ``Exp`` is one-to-one, so the density is exact, with no windings). With
    ``theta = d(mu_k, R)`` the rotation angle, w.r.t. the volume of :class:`jfm.SO3`
    (``8 pi^2`` in all), whose element in exponential coordinates is
    ``sinc(theta / 2)^2 d^3 w``:

    .. math::
        p_k(R) = \frac{(2\pi s_k^2)^{-3/2} e^{-\theta^2 / (2 s_k^2)}}
                      {Z_k\, \mathrm{sinc}(\theta / 2)^2}, \qquad
        Z_k = P(|w| < \pi) = \mathrm{erf}(r/\sqrt2) - \sqrt{2/\pi}\, r e^{-r^2/2},
        \ r = \pi / s_k .

    Sampling is exact (rejection of ``|w| >= pi``, accepted with probability ``Z_k``).

    Args:
        means: ``[K, 3, 3]`` rotation matrices.
        scales: ``[K]`` standard deviations ``s_k > 0`` (radians).
        weights: ``[K]`` positive mixture weights.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> d = jfm.IsotropicSO3Mixture(jnp.eye(3)[None], jnp.array([0.3]), jnp.ones(1))
        >>> d.sample(2, key=jax.random.key(0)).shape
        (2, 3, 3)
    """

    means: Array
    scales: Array
    log_weights: Array

    def __init__(self, means, scales, weights):
        means = check_array(means, "means", ndim=3)
        if means.shape[1:] != (3, 3):
            raise ValueError(f"`means` must have shape [K, 3, 3]; got {means.shape}.")
        k = means.shape[0]
        scales = check_array(scales, "scales", ndim=1).astype(means.dtype)
        if scales.shape != (k,):
            raise ValueError(f"`scales` must have shape ({k},); got {scales.shape}.")
        self.means = means
        self.scales = scales
        self.log_weights = _log_weights(weights, k, means.dtype)

    @property
    def manifold(self):
        return SO3()

    def log_prob(self, x):
        x = x.astype(self.means.dtype)
        theta = jax.vmap(lambda m: SO3().dist(m, x))(self.means)
        s = self.scales
        logq = -1.5 * jnp.log(2 * math.pi * s * s) - 0.5 * (theta / s) ** 2
        comp = logq - _log_chi3_cdf(math.pi / s) - 2 * jnp.log(sinc(0.5 * theta))
        return logsumexp(comp + self.log_weights)

    def sample(self, n, *, key, dtype=None):
        n = _check_n_key(n, key)
        dtype = float_dtype(dtype)
        kc, kw = jr.split(key)
        comp = jr.categorical(kc, self.log_weights, shape=(n,))

        def one(k, s):
            def draw(state):
                kk, _ = state
                kk, sub = jr.split(kk)
                return kk, s * jr.normal(sub, (3,), dtype)

            init = draw((k, jnp.zeros(3, dtype)))
            _, w = lax.while_loop(lambda st: vnorm(st[1]) >= math.pi, draw, init)
            return expm_so3(w)

        e = jax.vmap(one)(jr.split(kw, n), self.scales[comp].astype(dtype))
        return self.means[comp].astype(dtype) @ e


class ProductDistribution(AbstractManifoldDistribution):
    """The product of independent distributions on the factors of a
    :class:`jfm.ProductManifold`: ``log p(x) = sum_i log p_i(x_i)``, points flat.

    Args:
        *factors: two or more :class:`jfm.AbstractManifoldDistribution`.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> d = jfm.ProductDistribution(jfm.ManifoldUniform(jfm.FlatTorus(2)),
        ...                             jfm.ManifoldUniform(jfm.Sphere(2)))
        >>> d.sample(3, key=jax.random.key(0)).shape
        (3, 5)
    """

    factors: tuple[AbstractManifoldDistribution, ...]

    def __init__(self, *factors):
        if len(factors) < 2:
            raise ValueError(f"A ProductDistribution needs >= 2 factors; got {len(factors)}.")
        for i, f in enumerate(factors):
            if not isinstance(f, AbstractManifoldDistribution):
                raise TypeError(
                    f"`factors[{i}]` must be a jfm.AbstractManifoldDistribution; got "
                    f"{type(f).__name__}."
                )
        self.factors = tuple(factors)

    @property
    def manifold(self):
        return ProductManifold(*(f.manifold for f in self.factors))

    def log_prob(self, x):
        parts = self.manifold.split(x)
        return sum(f.log_prob(p) for f, p in zip(self.factors, parts))

    def sample(self, n, *, key, dtype=None):
        n = _check_n_key(n, key)
        keys = jr.split(key, len(self.factors))
        parts = [f.sample(n, key=k, dtype=dtype).reshape(n, -1) for f, k in zip(self.factors, keys)]
        return jnp.concatenate(parts, axis=1)
