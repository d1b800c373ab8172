"""The analytic ground truth: Gaussian-mixture data under an affine Gaussian path.

For data ``x1 ~ sum_k w_k N(mu_k, Sigma_k)`` and the path ``x_t = a x1 + s x0`` with
``x0 ~ N(0, I)`` (``a = alpha(t)``, ``s = sigma(t)``), every marginal ``p_t`` is again a
Gaussian mixture, so the marginal velocity, score and log-density are known exactly.
Tests and solver benchmarks measure against them.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg as jsl
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._checks import (
    check_array,
    check_int,
    check_key,
    check_parametrization,
    check_scalar_time,
    is_concrete,
)
from ._custom_types import Args, RealScalarLike
from ._paths import AffinePath


def _as_float_array(x, name: str) -> Array:
    """``check_array`` that also takes (nested) lists and tuples of numbers."""
    return check_array(np.asarray(x) if isinstance(x, (list, tuple)) else x, name)


def _check_path(path) -> AffinePath:
    if not isinstance(path, AffinePath):
        raise TypeError(
            "`path` must be a jfm.AffinePath (a Gaussian path x_t = alpha x1 + sigma x0); "
            f"got {type(path)}."
        )
    return path


def _check_values(means: np.ndarray, covs: np.ndarray, weights: np.ndarray) -> None:
    """Host-side checks of concrete mixture parameters (relative tolerance sqrt(eps))."""
    tol = float(np.sqrt(np.finfo(means.dtype).eps))
    for name, v in (("means", means), ("covs", covs), ("weights", weights)):
        if not np.all(np.isfinite(v)):
            raise ValueError(f"`{name}` must be finite; got non-finite entries in {name}.")
    if np.any(weights < 0):
        raise ValueError(f"`weights` must be non-negative; got weights={weights}.")
    total = float(np.sum(weights, dtype=np.float64))
    if abs(total - 1.0) > tol:
        raise ValueError(
            f"`weights` must sum to 1 (to within {tol:.1e}); got sum={total}. "
            "Normalise them: weights / weights.sum()."
        )
    c64 = covs.astype(np.float64)
    for k, c in enumerate(c64):
        scale = float(np.max(np.abs(c)))
        asym = float(np.max(np.abs(c - c.T)))
        if asym > tol * scale:
            raise ValueError(
                f"`covs` must be symmetric; covs[{k}] differs from its transpose by {asym:.3g} "
                f"(relative tolerance {tol:.1e})."
            )
        lam_min = float(np.linalg.eigvalsh(0.5 * (c + c.T))[0])
        if not lam_min > 0:
            raise ValueError(
                f"`covs` must be positive definite; covs[{k}] has smallest eigenvalue "
                f"{lam_min:.3g}."
            )


def _log_normal_terms(means, covs, log_weights, x):
    r"""Per-component ``log w_k + log N(x; m_k, C_k)`` and ``y_k = C_k^{-1} (x - m_k)``.

    Cholesky ``C_k = L L^T``: ``z = L^{-1}(x - m)``, ``y = L^{-T} z``,
    ``log N = -|z|^2 / 2 - sum log diag L - D/2 log(2 pi)``. Shapes: means ``(K, D)``,
    covs ``(K, D, D)``, log_weights ``(K,)``, x ``(D,)`` -> ``(K,)``, ``(K, D)``.
    """
    d = x.shape[0]
    half_log_2pi = 0.5 * d * math.log(2 * math.pi)

    def one(m, c, lw):
        chol = jnp.linalg.cholesky(c)
        z = jsl.solve_triangular(chol, x - m, lower=True)
        y = jsl.solve_triangular(chol, z, lower=True, trans="T")
        logdet_half = jnp.sum(jnp.log(jnp.diagonal(chol)))
        return lw - 0.5 * jnp.sum(z**2) - logdet_half - half_log_2pi, y

    return jax.vmap(one)(means, covs, log_weights)


class GaussianMixture(eqx.Module):
    r"""A Gaussian mixture ``p(x) = sum_k w_k N(x; mu_k, Sigma_k)`` on ``R^D``.

    The analytic ground truth of jfm: under any :class:`jfm.AffinePath`
    ``x_t = a x1 + s x0`` (``x0 ~ N(0, I)``, ``a = alpha(t)``, ``s = sigma(t)``) component
    ``k`` gives ``p_t(x | k) = N(a mu_k, C_k)`` with ``C_k = a^2 Sigma_k + s^2 I`` and the
    marginal ``p_t`` is the mixture with the same weights. With responsibilities
    ``r_k(x) = w_k N(x; a mu_k, C_k) / sum_j w_j N(x; a mu_j, C_j)`` and
    ``y_k = C_k^{-1} (x - a mu_k)``:

    .. math::
        \nabla \log p_t(x) = -\sum_k r_k y_k, \qquad
        E[x_1 | x_t = x] = \sum_k r_k (\mu_k + a \Sigma_k y_k), \qquad
        E[x_0 | x_t = x] = s \sum_k r_k y_k,

    and the marginal velocity (the marginalization trick) is
    ``u_t(x) = a' E[x1 | x] + s' E[x0 | x] = sum_k r_k (a' mu_k + (a' a Sigma_k + s' s I) y_k)``.
    No division by ``s``: finite at ``t = 1`` when every ``Sigma_k`` is positive definite
    (except where the schedule's ``s'`` itself is infinite, e.g. :class:`jfm.VP` at
    ``t = 1``). Responsibilities use ``logsumexp`` and Cholesky solves (no inverses); a
    field evaluation costs ``O(K D^3)``.

    A frozen pytree (:class:`equinox.Module`) whose arrays are leaves: it can be built
    and differentiated inside ``jax.jit``. Event shape ``(D,)``; the mixture's dtype is
    ``means.dtype`` (``covs`` and ``weights`` are cast to it). Per-example methods compute
    in the dtype of their input ``x``.

    Args:
        means: ``(K, D)`` component means.
        covs: ``(K, D, D)`` symmetric positive-definite covariances.
        weights: ``(K,)`` non-negative mixture weights summing to 1.

    Raises:
        TypeError: non-array or non-floating inputs.
        ValueError: wrong shapes (always); when the values are concrete (not traced):
            non-finite entries, negative weights, weights not summing to 1 (to within
            ``sqrt(eps)`` of the dtype), non-symmetric (same relative tolerance) or
            non-positive-definite covariances.

    Examples:
        >>> import jax.numpy as jnp, jax.random as jr, jfm
        >>> gmm = jfm.GaussianMixture.isotropic(jnp.array([[-2.0, 0.0], [2.0, 0.0]]), 0.5)
        >>> gmm.sample(3, key=jr.key(0)).shape
        (3, 2)
        >>> u = gmm.velocity_field(jfm.AffinePath(jfm.CondOT()))
        >>> u(0.5, jnp.zeros(2), None).shape
        (2,)
    """

    means: Float[Array, "K D"]
    covs: Float[Array, "K D D"]
    weights: Float[Array, " K"]

    def __init__(self, means: ArrayLike, covs: ArrayLike, weights: ArrayLike):
        means = _as_float_array(means, "means")
        if means.ndim != 2 or 0 in means.shape:
            raise ValueError(
                f"`means` must have shape (K, D) with K, D >= 1; got shape {means.shape}."
            )
        k, d = means.shape
        covs = _as_float_array(covs, "covs")
        if covs.shape != (k, d, d):
            raise ValueError(
                f"`covs` must have shape (K, D, D) = {(k, d, d)} to match means.shape="
                f"{means.shape}; got shape {covs.shape}."
            )
        weights = _as_float_array(weights, "weights")
        if weights.shape != (k,):
            raise ValueError(
                f"`weights` must have shape (K,) = {(k,)} to match means.shape={means.shape}; "
                f"got shape {weights.shape}."
            )
        dtype = means.dtype
        covs, weights = covs.astype(dtype), weights.astype(dtype)
        if is_concrete((means, covs, weights)):
            _check_values(np.asarray(means), np.asarray(covs), np.asarray(weights))
        self.means, self.covs, self.weights = means, covs, weights

    @classmethod
    def isotropic(
        cls,
        means: ArrayLike,
        std: ArrayLike,
        weights: ArrayLike | None = None,
    ) -> "GaussianMixture":
        """A mixture with covariances ``std_k^2 I``.

        Args:
            means: ``(K, D)``.
            std: a positive scalar (shared) or ``(K,)`` per-component standard deviations.
            weights: ``(K,)``; ``None`` for equal weights ``1/K``.

        Returns:
            A :class:`GaussianMixture` in the dtype of ``means``.
        """
        means = _as_float_array(means, "means")
        if means.ndim != 2 or 0 in means.shape:
            raise ValueError(
                f"`means` must have shape (K, D) with K, D >= 1; got shape {means.shape}."
            )
        k, d = means.shape
        std = _as_float_array(std, "std").astype(means.dtype)
        if std.shape not in ((), (k,)):
            raise ValueError(
                f"`std` must be a scalar or have shape (K,) = {(k,)}; got {std.shape}."
            )
        if is_concrete(std) and not np.all(np.asarray(std) > 0):
            raise ValueError(f"`std` must be positive; got std={np.asarray(std)}.")
        std = jnp.broadcast_to(std, (k,))
        covs = (std**2).reshape(k, 1, 1) * jnp.eye(d, dtype=means.dtype).reshape(1, d, d)
        if weights is None:
            weights = jnp.full((k,), 1 / k, means.dtype)
        return cls(means, covs, weights)

    # -- basic properties ----------------------------------------------------------------

    @property
    def num_components(self) -> int:
        """``K``, the number of components."""
        return self.means.shape[0]

    @property
    def event_shape(self) -> tuple[int]:
        """``(D,)``."""
        return (self.means.shape[1],)

    @property
    def dtype(self):
        """The floating dtype of the parameters."""
        return self.means.dtype

    def mean(self) -> Float[Array, " D"]:
        """The mixture mean ``sum_k w_k mu_k``, shape ``(D,)``."""
        return self.weights @ self.means

    def covariance(self) -> Float[Array, "D D"]:
        """The mixture covariance ``sum_k w_k (Sigma_k + mu_k mu_k^T) - m m^T``, ``(D, D)``."""
        m = self.mean()
        second = jnp.einsum("k,kij->ij", self.weights, self.covs) + jnp.einsum(
            "k,ki,kj->ij", self.weights, self.means, self.means
        )
        return second - jnp.outer(m, m)

    def _check_x(self, x, name: str = "x") -> Array:
        x = _as_float_array(x, name)
        if x.shape != self.event_shape:
            raise ValueError(
                f"`{name}` must have the event shape (D,) = {self.event_shape}; got shape "
                f"{x.shape}. This acts on ONE example: batch with jax.vmap."
            )
        return x

    # -- density and sampling --------------------------------------------------------------

    def log_prob(self, x: ArrayLike) -> Float[Array, ""]:
        """``log p(x) = logsumexp_k (log w_k + log N(x; mu_k, Sigma_k))`` of ONE example.

        Args:
            x: ``(D,)``. Batch with ``jax.vmap``.

        Returns:
            A scalar in the dtype of ``x`` (``-inf`` nowhere: all components have full
            support).
        """
        x = self._check_x(x)
        dt = x.dtype
        logp, _ = _log_normal_terms(
            self.means.astype(dt), self.covs.astype(dt), jnp.log(self.weights.astype(dt)), x
        )
        return jax.nn.logsumexp(logp)

    def sample(self, n: int, *, key: PRNGKeyArray) -> Float[Array, "n D"]:
        """Draw ``n`` i.i.d. samples: a component ``k ~ Categorical(w)``, then
        ``mu_k + L_k z`` with ``Sigma_k = L_k L_k^T`` and ``z ~ N(0, I)``.

        A pure function of ``key`` (same key, same samples).

        Args:
            n: number of samples, a positive Python int (static).
            key: PRNG key (keyword-only, required).

        Returns:
            ``(n, D)`` in the mixture's dtype.

        Raises:
            TypeError: ``n`` not an int; ``key`` not a PRNG key.
            ValueError: ``n < 1``.
        """
        n = check_int(n, "n")
        check_key(key)
        k, d = self.means.shape
        key_k, key_z = jr.split(key)
        idx = jr.categorical(key_k, jnp.log(self.weights), shape=(n,))
        z = jr.normal(key_z, (n, d), self.dtype)
        chol = jnp.linalg.cholesky(self.covs)
        if k <= d:  # all components' L_k z: memory n K D
            lz_all = jnp.einsum("kij,nj->nki", chol, z)
            lz = jnp.take_along_axis(lz_all, idx.reshape(n, 1, 1), axis=1)[:, 0]
        else:  # gather each sample's factor: memory n D^2
            lz = jnp.einsum("nij,nj->ni", chol[idx], z)
        return self.means[idx] + lz

    # -- the path's marginals --------------------------------------------------------------

    def marginal(self, path: AffinePath, t: RealScalarLike) -> "GaussianMixture":
        """The marginal ``p_t`` of ``path`` at time ``t``: the mixture with means
        ``a mu_k`` and covariances ``a^2 Sigma_k + s^2 I`` (same weights).

        Args:
            path: a :class:`jfm.AffinePath`.
            t: scalar time in ``[0, 1]``.

        Returns:
            A :class:`GaussianMixture` in the mixture's dtype.

        Raises:
            TypeError: ``path`` not an :class:`jfm.AffinePath`.
            ValueError: ``t`` not a scalar in ``[0, 1]``.
        """
        _check_path(path)
        t = check_scalar_time(t)
        dt = self.dtype
        a, s = path.alpha(t).astype(dt), path.sigma(t).astype(dt)
        d = self.means.shape[1]
        covs_t = a**2 * self.covs + s**2 * jnp.eye(d, dtype=dt).reshape(1, d, d)
        # Valid by construction: bypass the host-side checks of __init__.
        return eqx.tree_at(lambda g: (g.means, g.covs), self, (a * self.means, covs_t))

    def field(self, path: AffinePath, kind: str) -> "MixtureField":
        """The exact marginal field of parametrization ``kind`` under ``path``.

        Args:
            path: a :class:`jfm.AffinePath`.
            kind: ``"velocity"`` (``u_t(x)``), ``"score"`` (``grad log p_t(x)``), ``"x1"``
                (``E[x1 | x_t = x]``) or ``"x0"`` (``E[x0 | x_t = x]``).

        Returns:
            A :class:`MixtureField`, a per-example ``f(t, x, args)`` (``args`` ignored).

        Raises:
            TypeError: ``path`` not an :class:`jfm.AffinePath`.
            ValueError: unknown ``kind``.
        """
        check_parametrization(kind)
        return MixtureField(self, _check_path(path), kind)

    def velocity_field(self, path: AffinePath) -> "MixtureField":
        """The exact marginal velocity ``u_t(x) = E[a' x1 + s' x0 | x_t = x]`` as a
        per-example field ``f(t, x, args)``; see :meth:`field`."""
        return self.field(path, "velocity")

    def score_field(self, path: AffinePath) -> "MixtureField":
        """The exact marginal score ``grad_x log p_t(x)`` as a per-example field
        ``f(t, x, args)``; see :meth:`field`. Infinite-free on ``[0, 1]`` when every
        ``Sigma_k`` is positive definite."""
        return self.field(path, "score")

    def x1_field(self, path: AffinePath) -> "MixtureField":
        """The posterior mean (ideal denoiser) ``E[x1 | x_t = x]`` as a per-example field
        ``f(t, x, args)``; see :meth:`field`."""
        return self.field(path, "x1")


class MixtureField(eqx.Module):
    """An exact marginal field of a :class:`GaussianMixture` under a :class:`jfm.AffinePath`.

    Built by :meth:`GaussianMixture.field` (or ``velocity_field``/``score_field``/
    ``x1_field``). A pytree holding the mixture and the path, so it passes through
    ``eqx.filter_jit`` without recompiling for new arrays of the same shapes.

    Call as ``f(t, x, args)`` (diffrax's signature): ``t`` a scalar in ``[0, 1]``, ``x``
    of shape ``(D,)``, ``args`` ignored; returns ``(D,)`` in the dtype of ``x``. Its arrays
    make it unhashable, so compile it with ``eqx.filter_jit(field)`` (or pass it as an
    argument of a jitted function), not ``jax.jit(field)``.
    """

    mixture: GaussianMixture
    path: AffinePath
    kind: str = eqx.field(static=True)

    def __call__(self, t: RealScalarLike, x: ArrayLike, args: Args = None) -> Float[Array, " D"]:
        mix = self.mixture
        x = mix._check_x(x)
        dt = x.dtype
        t = check_scalar_time(t).astype(dt)
        path = self.path
        a, s = path.alpha(t).astype(dt), path.sigma(t).astype(dt)
        d = x.shape[0]
        means, covs = mix.means.astype(dt), mix.covs.astype(dt)
        covs_t = a**2 * covs + s**2 * jnp.eye(d, dtype=dt).reshape(1, d, d)
        logp, y = _log_normal_terms(a * means, covs_t, jnp.log(mix.weights.astype(dt)), x)
        r = jax.nn.softmax(logp)  # responsibilities, (K,)
        y_bar = r @ y  # sum_k r_k C_k^{-1} (x - a mu_k)
        if self.kind == "score":
            return -y_bar
        if self.kind == "x0":
            return s * y_bar
        x1_hat = r @ (means + a * jnp.einsum("kij,kj->ki", covs, y))
        if self.kind == "x1":
            return x1_hat
        da, ds = path.d_alpha(t).astype(dt), path.d_sigma(t).astype(dt)
        return da * x1_hat + (ds * s) * y_bar


__all__ = ["GaussianMixture", "MixtureField"]
