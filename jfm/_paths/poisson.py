r"""The Poisson flow path (PFGM, and PFGM++ with ``D`` augmented dimensions)."""

import math

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float

from .._checks import check_int, check_name, check_scalar_time, is_concrete
from .._custom_types import RealScalarLike
from .base import AbstractConvertiblePath, check_event_shape
from .radial import AbstractRadialPath

_KINDS: tuple[str, ...] = ("velocity", "x1", "x0")


class PoissonPath(AbstractRadialPath, AbstractConvertiblePath):
    r"""Poisson flow (PFGM / PFGM++): the electric field of the data in ``N + D`` dims.

    The data ``x in R^N`` is augmented with ``D`` extra coordinates of norm ``r``; the
    Green's function of the Laplacian in ``R^{N+D}`` (the field of a point charge at
    ``(x1, 0)``), restricted to the hyperplane at height ``r``, gives the conditional
    density and field

    .. math::
        p_r(x \mid x_1) = \frac{\Gamma(\frac{N+D}{2})}{\pi^{N/2}\Gamma(\frac D2)}
            \frac{r^D}{(r^2 + \|x - x_1\|^2)^{(N+D)/2}}, \qquad
        \frac{dx}{dr} = \frac{x - x_1}{r},

    i.e. ``u = (p, p f)`` with ``G_1 propto r / (r^2 + ||x - x1||^2)^{(N+D)/2}`` and the
    ODE ``dx/dr = G_{>1} / G_1``. (``D = 1`` is PFGM: ``p ~ r / (r^2 + ||x-x1||^2)^{(N+1)/2}``;
    ``D -> inf`` with ``r = sigma sqrt(D)`` tends to the Gaussian ``N(x1, sigma^2 I)``.)
    ``p_r`` is a multivariate Student-t with ``D`` degrees of freedom and scale
    ``r / sqrt(D)``: heavy tails for small ``D`` (for ``D = 1`` the radius has infinite mean).

    **Sampling by the ratio trick.** ``x_r = x1 + r z`` with
    ``z = (||eps_x|| / ||eps_aug||) u``, ``(eps_x, eps_aug) ~ N(0, I_{N+D})`` and ``u``
    uniform on the sphere: ``||z||^2`` is a ratio of independent chi-squares, so
    ``||z||`` has the density ``propto rho^{N-1} / (1 + rho^2)^{(N+D)/2}``, i.e.
    ``||z||^2 / (1 + ||z||^2) ~ Beta(N/2, D/2)``.

    **Time map.** The construction runs from ``r = 0`` (data) to ``r = r_max`` (prior);
    jfm's time runs from ``t = 0`` (noise) to ``t = 1`` (data). They are related by

    .. math::
        r(t) = r_{\max} (1 - t), \qquad t = 1 - r / r_{\max}, \qquad dr/dt = -r_{\max},

    so in jfm time ``x_t = x1 + (1 - t) x0`` with ``x0 = r_max z`` a prior draw, and the
    conditional velocity is ``dx/dt = -(x - x1) / (1 - t) = -x0``. The marginal field is
    the average of the conditional ones weighted by ``p_t(x | x1)``, see
    :func:`jfm.empirical_field` (PFGM's empirical field, normalized by its ``r``
    component). The prior is ``p_{r_max}(x | 0)``, an approximation of the ``t = 0``
    marginal that is good when ``r_max`` is large compared with the data's spread.

    Parametrizations (``target``/``convert``): ``"velocity"`` (``-x0``), ``"x1"`` and
    ``"x0"``; the relation ``x = x1 + (1 - t) x0`` is affine, so model outputs convert as
    for :class:`jfm.AffinePath`. ``"score"`` is not offered (not affine in ``x0``).

    Checklist: per example, ``d = N = x.size`` (all event axes); scalar ``t`` in
    ``[0, 1]`` (``t = 0`` prior, ``t = 1`` data); the field is singular at ``t = 1``:
    sample the ODE on ``[0, 1 - t_min]``.

    Args:
        r_max: the prior's radius ``r(0)`` (``> 0``), several times the data's spread.
        aug_dim: ``D``, the number of augmented dimensions (PFGM: 1; PFGM++: any ``>= 1``).
        event_shape: optional event shape; ``prior_sample(shape)`` then splits ``shape``
            into batch and event axes by it (else ``shape[0]`` is the batch axis).

    Examples:
        >>> import jax, jax.numpy as jnp, jfm
        >>> path = jfm.PoissonPath(r_max=10.0)
        >>> path.prior_sample((3, 2), key=jax.random.key(0)).shape
        (3, 2)
        >>> path.conditional_velocity(0.5, jnp.ones(2), jnp.zeros(2))
        Array([-2., -2.], dtype=float32)

    References:
        Xu, Liu, Tegmark, Jaakkola, "Poisson Flow Generative Models", NeurIPS 2022;
        Xu, Liu, Tian, Tong, Tegmark, Jaakkola, "PFGM++: Unlocking the Potential of
        Physics-Inspired Generative Models", ICML 2023.
    """

    r_max: float | Float[Array, ""]
    aug_dim: int = eqx.field(static=True, default=1)
    event_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        check_int(self.aug_dim, "aug_dim", 1)
        check_event_shape(self.event_shape)
        if is_concrete(self.r_max):
            r = jnp.asarray(self.r_max)
            if r.shape != ():
                raise ValueError(f"`r_max` must be a scalar; got shape {r.shape}.")
            if not float(r) > 0:
                raise ValueError(f"`r_max` must be > 0; got r_max={float(r)}.")

    @property
    def _event_shape(self):
        return self.event_shape

    def radius(self, t: RealScalarLike) -> Float[Array, ""]:
        """The construction's time ``r(t) = r_max (1 - t)`` at jfm time ``t``."""
        t = check_scalar_time(t)
        return jnp.asarray(self.r_max, t.dtype) * (1 - t)

    # -- radial pieces -------------------------------------------------------------------

    def _log_density_at_radius(self, t, r, d):
        n, aug = d, self.aug_dim
        rho = jnp.asarray(self.r_max, r.dtype) * (1 - t)
        const = math.lgamma(0.5 * (n + aug)) - 0.5 * n * math.log(math.pi) - math.lgamma(0.5 * aug)
        return const + aug * jnp.log(rho) - 0.5 * (n + aug) * jnp.log(rho**2 + r**2)

    def _velocity_factor(self, t, r, d):
        return -jnp.ones_like(r) / (1 - t)

    def _sample_radius(self, t, key, d, dtype):
        eps = jr.normal(key, (d + self.aug_dim,), dtype)
        ratio = jnp.sqrt(jnp.sum(eps[:d] ** 2) / jnp.sum(eps[d:] ** 2))
        return jnp.asarray(self.r_max, dtype) * (1 - t) * ratio

    # -- coupling form x_t = x1 + (1 - t) x0 ---------------------------------------------

    def sample(
        self, t: RealScalarLike, x0: Float[Array, "*_dims"], x1: Float[Array, "*_dims"]
    ) -> Float[Array, "*_dims"]:
        """``x_t = x1 + (1 - t) x0`` for a prior draw ``x0`` (the conditional flow map).

        Args:
            t: scalar jfm time; x0: ``(*dims,)`` a prior draw (``r_max z``); x1: data.

        Returns:
            ``(*dims,)`` in ``x1``'s dtype.
        """
        t, x0, x1 = self._pair(t, x0, x1, "x0", "x1")
        return (x1 + (1 - t) * x0).astype(x1.dtype)

    def target(
        self,
        t: RealScalarLike,
        x0: Float[Array, "*_dims"],
        x1: Float[Array, "*_dims"],
        kind: str = "velocity",
    ) -> Float[Array, "*_dims"]:
        """The conditional regression target: ``velocity`` ``-x0``; ``x1``; ``x0``.

        Raises:
            ValueError: ``kind`` not one of ``"velocity"``, ``"x1"``, ``"x0"``; shapes.
        """
        check_name(kind, "kind", _KINDS)
        _, x0, x1 = self._pair(t, x0, x1, "x0", "x1")
        return {"velocity": -x0, "x1": x1, "x0": x0}[kind]

    def convert(
        self,
        t: RealScalarLike,
        x: Float[Array, "*_dims"],
        pred: Float[Array, "*_dims"],
        *,
        src: str,
        dst: str,
    ) -> Float[Array, "*_dims"]:
        """Convert a prediction at ``(t, x)`` between ``"velocity"``, ``"x1"``, ``"x0"``.

        From ``x = x1 + (1 - t) x0`` and ``v = -x0``: ``x0 = (x - x1) / (1 - t)``,
        ``x1 = x - (1 - t) x0``. Conversions from ``x1`` divide by ``1 - t`` (singular at
        the data end ``t = 1``).

        Args:
            t: scalar time; x: ``(*dims,)`` the point ``x_t``; pred: ``(*dims,)``.
            src, dst: each one of ``"velocity"``, ``"x1"``, ``"x0"``.

        Returns:
            ``(*dims,)`` in ``x``'s dtype.

        Raises:
            ValueError: unknown ``src``/``dst`` (``"score"`` is not offered); shapes.
        """
        check_name(src, "src", _KINDS)
        check_name(dst, "dst", _KINDS)
        t, x, pred = self._pair(t, x, pred, "x", "pred")
        if src == dst:
            return pred
        if src == "x1":
            x1, x0 = pred, (x - pred) / (1 - t)
        elif src == "x0":
            x1, x0 = x - (1 - t) * pred, pred
        else:
            x1, x0 = x + (1 - t) * pred, -pred
        return {"velocity": -x0, "x1": x1, "x0": x0}[dst].astype(x.dtype)


__all__ = ["PoissonPath"]
