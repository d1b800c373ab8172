r"""Paths that are isotropic around the data point: ``x_t = x1 + R_t u``.

The conditional law of ``x_t`` given ``x1`` depends only on the radius
``r = ||x_t - x1||``; the direction ``u`` is uniform on the unit sphere and the radius
``R_t`` has a law that shrinks to ``0`` at the data end (``t = 1`` in jfm time). The
conditional flow moves every point radially, ``dx/dt = c_t(r) (x - x1)``, with the
factor ``c_t(r) = (dr/dt) / r`` fixed by mass conservation. :class:`jfm.PoissonPath` and
:class:`jfm.IsotropicPath` are the two final subclasses.
"""

import abc
import math

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_array, check_key, check_scalar_time
from .._custom_types import RealScalarLike
from .._misc import sample_flat
from .affine import _check_pair
from .base import AbstractFlowPath, split_prior_shape


def log_sphere_area(d: int) -> float:
    """``log |S^{d-1}| = log(2 pi^{d/2} / Gamma(d/2))``, the area of the unit sphere in R^d."""
    return math.log(2.0) + 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d)


def uniform_direction(key: PRNGKeyArray, shape: tuple[int, ...], dtype) -> Array:
    """A direction uniform on the unit sphere of ``R^{prod(shape)}``, reshaped to ``shape``."""
    g = sample_flat(jr.normal, key, shape, dtype)
    return g / jnp.sqrt(jnp.sum(g * g))


def safe_norm(v: Array) -> Array:
    """``||v||`` over all axes, with a zero (not NaN) gradient at ``v = 0``."""
    sq = jnp.sum(v * v)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, jnp.ones_like(sq))), jnp.zeros_like(sq))


def _radius(diff: Array) -> Array:
    """``||x - x1||`` floored at the dtype's smallest normal number.

    At ``x = x1`` exactly (which rounding produces when the sampled radius is below the
    resolution of ``x1``) the density and field are their limits at that tiny radius:
    finite, with zero velocity, instead of ``0/0``.
    """
    return jnp.maximum(safe_norm(diff), jnp.finfo(diff.dtype).tiny)


class AbstractRadialPath(AbstractFlowPath):
    r"""A path ``p_t(x | x1)`` that is a function of ``r = ||x - x1||`` only.

    Subclasses define the density as a function of the radius, the radial velocity factor
    and a radius sampler (and ``sample``/``target`` of :class:`jfm.AbstractFlowPath`); this
    class derives the rest of the path interface:

    - ``sample_conditional(t, x1, key=)``: ``x1 + R_t u``, ``u`` uniform on the sphere;
    - ``conditional_velocity(t, x, x1) = c_t(r) (x - x1)``;
    - ``conditional_log_density(t, x, x1)``;
    - ``r`` is floored at the dtype's smallest normal number (``x = x1`` exactly gives the
      finite limits there, with zero velocity);
    - the prior is the conditional law at ``t = 0`` centred at the origin
      (``prior_sample``, ``prior_log_prob``): an approximation of the true ``t = 0``
      marginal (data convolved with the kernel) that is good when the prior's scale is
      large compared with the data's spread;
    - ``x0_sample`` is ``prior_sample``: ``sample(t, x0, x1)`` maps a prior draw.

    Per example (``x`` of event shape, all axes count: ``d = x.size``); scalar ``t``.
    """

    @abc.abstractmethod
    def _log_density_at_radius(self, t: Array, r: Array, d: int) -> Array:
        """``log p_t(x | x1)`` for ``||x - x1|| = r`` in ``R^d`` (density per volume)."""

    @abc.abstractmethod
    def _velocity_factor(self, t: Array, r: Array, d: int) -> Array:
        """``c_t(r)`` with ``dx/dt = c_t(r) (x - x1)`` along the conditional flow."""

    @abc.abstractmethod
    def _sample_radius(self, t: Array, key: PRNGKeyArray, d: int, dtype) -> Array:
        """One draw of the radius ``R_t`` (scalar of ``dtype``)."""

    @property
    @abc.abstractmethod
    def _event_shape(self) -> tuple[int, ...] | None:
        """The event shape the path was built with (``None`` when unknown)."""

    # -- shared interface ----------------------------------------------------------------

    def _pair(self, t, x, x1, a="x", b="x1"):
        x, x1 = _check_pair(x, x1, a, b)
        return check_scalar_time(t).astype(x.dtype), x, x1.astype(x.dtype)

    def conditional_log_density(
        self, t: RealScalarLike, x: Float[Array, "*_dims"], x1: Float[Array, "*_dims"]
    ) -> Float[Array, ""]:
        """``log p_t(x | x1)`` (normalized, per volume of ``R^d``, ``d = x.size``).

        Args:
            t: scalar jfm time in ``[0, 1)``; x: ``(*dims,)`` point; x1: ``(*dims,)`` data.

        Returns:
            A scalar in ``x``'s dtype.
        """
        t, x, x1 = self._pair(t, x, x1)
        return self._log_density_at_radius(t, _radius(x - x1), x.size).astype(x.dtype)

    def conditional_velocity(
        self, t: RealScalarLike, x: Float[Array, "*_dims"], x1: Float[Array, "*_dims"]
    ) -> Float[Array, "*_dims"]:
        """The conditional field ``dx/dt = c_t(||x - x1||) (x - x1)`` in jfm time.

        Args:
            t: scalar jfm time in ``[0, 1)`` (the field is singular at the data end
                ``t = 1``); x: ``(*dims,)``; x1: ``(*dims,)`` data point.

        Returns:
            ``(*dims,)`` in ``x``'s dtype.
        """
        t, x, x1 = self._pair(t, x, x1)
        diff = x - x1
        return (self._velocity_factor(t, _radius(diff), x.size) * diff).astype(x.dtype)

    def sample_conditional(
        self, t: RealScalarLike, x1: Float[Array, "*_dims"], *, key: PRNGKeyArray
    ) -> Float[Array, "*_dims"]:
        """One draw ``x_t = x1 + R_t u`` from ``p_t(. | x1)``.

        Args:
            t: scalar jfm time in ``[0, 1]``; x1: ``(*dims,)`` data point.
            key: PRNG key (keyword-only, required); split into radius and direction keys.

        Returns:
            ``(*dims,)`` in ``x1``'s dtype.
        """
        check_key(key)
        x1 = check_array(x1, "x1")
        t = check_scalar_time(t).astype(x1.dtype)
        key_r, key_u = jr.split(key)
        radius = self._sample_radius(t, key_r, x1.size, x1.dtype)
        return (x1 + radius * uniform_direction(key_u, x1.shape, x1.dtype)).astype(x1.dtype)

    def prior_sample(
        self, shape: tuple[int, ...], *, key: PRNGKeyArray, dtype=None
    ) -> Float[Array, "..."]:
        """Draws from the prior (the conditional law at ``t = 0`` around the origin).

        Args:
            shape: ``(*batch, *event)``. The trailing axes are the event when the path was
                built with ``event_shape``; otherwise ``shape[0]`` is the one batch axis.
            key: PRNG key (keyword-only, required); split into one key per draw.
            dtype: floating dtype (default: JAX's default float).

        Returns:
            An array of ``shape``.

        Raises:
            TypeError: bad ``key``, ``shape`` or ``dtype``.
            ValueError: ``shape`` not ending with ``event_shape``; fewer than 2 axes
                without an ``event_shape``.
        """
        check_key(key)
        batch, event = split_prior_shape(self._event_shape, shape)
        return self._prior_draws(batch, event, key, dtype)

    def x0_sample(
        self, shape: tuple[int, ...], *, key: PRNGKeyArray, dtype=None
    ) -> Float[Array, "..."]:
        """Draws of ``x0`` for ``sample(t, x0, x1)``: prior draws (:meth:`prior_sample`)."""
        return self.prior_sample(shape, key=key, dtype=dtype)

    def _prior_draws(self, batch, event, key, dtype):
        dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"`dtype` must be a floating dtype; got {dtype}.")
        count = math.prod(batch)
        keys = jr.split(key, count)
        origin = jnp.zeros(event, dtype)
        t0 = jnp.zeros((), dtype)
        draws = jax.vmap(lambda k: self.sample_conditional(t0, origin, key=k))(keys)
        return draws.reshape(*batch, *event)

    def prior_log_prob(self, x: Float[Array, "*_dims"]) -> Float[Array, ""]:
        """``log p_0(x | 0)``, the prior's log-density at ONE example ``x``."""
        x = check_array(x, "x")
        return self.conditional_log_density(jnp.zeros((), x.dtype), x, jnp.zeros_like(x))


__all__ = ["AbstractRadialPath"]
