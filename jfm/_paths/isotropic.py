r"""Isotropic paths from a user radial CDF ``psi_tau(r)`` (the general ODE construction)."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optimistix as optx
from jaxtyping import Array, Float

from .._checks import check_bool, check_callable, check_name, is_concrete
from .._custom_types import RealScalarLike
from .base import check_event_shape
from .radial import AbstractRadialPath, log_sphere_area, safe_norm

_KINDS: tuple[str, ...] = ("velocity",)

#: Bisection steps after the bracket expansion (the bracket in log-radius is a few units
#: wide; 128 halvings reach float64 resolution with a wide margin).
_BISECTION_STEPS = 128


class CDFReport(eqx.Module):
    """What :func:`jfm.check_cdf` found: ``ok`` and a tuple of human-readable problems."""

    ok: bool = eqx.field(static=True)
    problems: tuple[str, ...] = eqx.field(static=True)

    def __str__(self) -> str:
        if self.ok:
            return "CDF ok"
        return "CDF problems:\n- " + "\n- ".join(self.problems)


def check_cdf(cdf: Callable, *, T: float = 1.0) -> CDFReport:
    r"""Validate a radial CDF ``psi_tau(r)`` in the construction's time ``tau in (0, T]``.

    Evaluated (eagerly, in JAX's default float) on ``tau in T * geomspace(1e-3, 1, 12)``
    and ``r in {0} u T * geomspace(1e-8, 1e8, 161)``. Checks, each reported by name:

    - finite values;
    - ``psi_tau(0) = 0`` and ``0 <= psi <= 1`` (to ``tol = max(1e-6, 100 eps)``);
    - ``psi_tau(r) -> 1`` as ``r -> inf`` (``psi >= 1 - 1e-3`` at ``r = 1e8 T``);
    - non-decreasing in ``r``: on the grid and through the autodiff density
      ``r d psi/dr >= -tol`` (a negative density is no distribution);
    - the data limit ``psi_tau(r) -> 1`` as ``tau -> 0`` for every ``r > 0``: the median
      radius at ``tau = 1e-6 T`` must be below 5% of the median at ``tau = T``.

    Args:
        cdf: ``cdf(tau, r) -> scalar`` for scalar ``tau, r`` (jit-traceable).
        T: the construction's prior time (``> 0``, concrete).

    Returns:
        A :class:`jfm.CDFReport` (``report.ok``, ``report.problems``).

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> jfm.check_cdf(lambda tau, r: jnp.tanh(r / tau)).ok
        True
        >>> jfm.check_cdf(lambda tau, r: 0.5 * jnp.tanh(r / tau)).ok
        False
    """
    if not callable(cdf):
        raise TypeError(f"`cdf` must be callable cdf(tau, r) -> scalar; got {type(cdf)}.")
    if not is_concrete(T):
        raise ValueError("`T` must be concrete (not traced) to validate the CDF.")
    T = float(T)
    if not T > 0:
        raise ValueError(f"`T` must be > 0; got T={T}.")
    dtype = jnp.result_type(float)
    eps = float(jnp.finfo(dtype).eps)
    tol = max(1e-6, 100 * eps)
    taus = T * np.geomspace(1e-3, 1.0, 12)
    radii = np.concatenate([[0.0], T * np.geomspace(1e-8, 1e8, 161)])
    problems = []

    def grid(fn, ts, rs):
        ts = jnp.asarray(ts, dtype)
        rs = jnp.asarray(rs, dtype)
        return np.asarray(jax.vmap(lambda a: jax.vmap(lambda b: fn(a, b))(rs))(ts), np.float64)

    def d_r(a, b):
        return jax.jvp(lambda rr: jnp.asarray(cdf(a, rr)), (b,), (jnp.ones_like(b),))[1]

    with jax.ensure_compile_time_eval():
        try:
            psi = grid(lambda a, b: jnp.asarray(cdf(a, b)), taus, radii)
            dens = grid(lambda a, b: b * d_r(a, b), taus, radii[1:])
            ends = grid(lambda a, b: jnp.asarray(cdf(a, b)), [T * 1e-6, T], radii[1:])
        except Exception as e:  # noqa: BLE001 - report whatever the user's function raised
            return CDFReport(False, (f"cdf(tau, r) could not be evaluated: {e!r}",))
    if psi.shape != (len(taus), len(radii)):
        return CDFReport(False, (f"cdf(tau, r) must return a scalar; got shape {psi.shape[2:]}",))
    if not np.all(np.isfinite(psi)) or not np.all(np.isfinite(dens)):
        i, j = np.argwhere(~np.isfinite(psi))[0] if not np.all(np.isfinite(psi)) else (0, 0)
        problems.append(
            f"non-finite values (first at tau={taus[i]:.3g}, r={radii[j]:.3g}); cdf must be "
            "finite for tau > 0, r >= 0"
        )
    else:
        if np.max(np.abs(psi[:, 0])) > tol:
            problems.append(
                f"psi_tau(0) must be 0; got up to {np.max(np.abs(psi[:, 0])):.3g} (wrong limit)"
            )
        if np.min(psi[:, -1]) < 1 - 1e-3:
            problems.append(
                "psi_tau(r) must tend to 1 as r -> inf; at r=1e8*T it is "
                f"{np.min(psi[:, -1]):.3g} (wrong limit)"
            )
        if np.min(psi) < -tol or np.max(psi) > 1 + tol:
            problems.append(
                f"psi must lie in [0, 1]; got values in [{np.min(psi):.3g}, {np.max(psi):.3g}]"
            )
        if np.min(np.diff(psi, axis=1)) < -tol or np.min(dens) < -tol:
            i, j = np.unravel_index(np.argmin(dens), dens.shape)
            problems.append(
                "psi_tau(r) must be non-decreasing in r (its r-derivative is the radial "
                f"density); it decreases near tau={taus[i]:.3g}, r={radii[1:][j]:.3g} "
                "(non-monotone)"
            )
        if np.all(np.isfinite(ends)):
            med = [radii[1:][min(np.searchsorted(row, 0.5), len(row) - 1)] for row in ends]
            if not med[0] <= 0.05 * med[1]:
                problems.append(
                    "psi_tau(r) must tend to 1 as tau -> 0 for every r > 0 (the path must "
                    f"reach the data): the median radius is {med[0]:.3g} at tau=1e-6*T vs "
                    f"{med[1]:.3g} at tau=T (wrong limit)"
                )
    return CDFReport(not problems, tuple(problems))


class IsotropicPath(AbstractRadialPath):
    r"""The isotropic path of a radial CDF ``psi_tau(r)``: ``x = x1 + R u``, ``P(R <= r) = psi``.

    Give any CDF of the radius ``R = ||x - x1||`` in the construction's time ``tau``
    (``tau = 0`` data, ``tau = T`` prior) with ``psi_tau(0) = 0``, ``psi_tau(inf) = 1``,
    non-decreasing in ``r`` and ``psi_tau(r) -> 1`` as ``tau -> 0`` for ``r > 0``, e.g.
    ``tanh(r / tau)`` or ``1 - exp(-r / tau)``. Mass conservation in the ball of radius
    ``r`` fixes the density and the radial field (with ``S_{d-1}`` the sphere's area):

    .. math::
        p_\tau(x \mid x_1) = \frac{\partial_r \psi_\tau(r)}{S_{d-1} r^{d-1}}, \qquad
        p f = -\frac{\partial_\tau \psi_\tau(r)}{S_{d-1} r^d} (x - x_1), \qquad
        \frac{dx}{d\tau} = -\frac{\partial_\tau \psi}{r\, \partial_r \psi} (x - x_1),

    i.e. ``phi = (1/r^{d-1}) d psi/dr`` and ``varphi = -(1/r^d) d psi/dtau`` of the
    construction. Along the conditional flow the quantile ``psi_tau(R_tau)`` is constant.
    Both derivatives come from autodiff of ``psi`` (``jax.jvp``), no hand derivatives.
    The Gaussian path ``N(x1, sigma^2 I)`` is the special case
    ``psi = P(d/2, r^2 / (2 sigma^2))`` (the regularized incomplete gamma function).

    **Time map.** ``tau = T (1 - t)`` between the construction's time and jfm's ``t``
    (``t = 0`` prior/noise, ``t = 1`` data); ``d tau/dt = -T``. All methods take jfm's
    ``t``; the CDF is called as ``cdf(T * (1 - t), r)``.

    **Sampling.** The radius by inverse CDF: ``R = psi_tau^{-1}(c)``, ``c ~ U[eps, 1-eps]``
    (``eps`` the dtype's machine epsilon: the extreme quantiles beyond are truncated),
    found by bisection in ``log r`` (:class:`optimistix.Bisection` with bracket expansion;
    jittable, vmappable, differentiable by the implicit function theorem); the direction
    uniform on the sphere. ``sample(t, x0, x1)`` maps a prior draw ``x0`` along the
    conditional flow: ``x1 + psi_tau^{-1}(psi_T(||x0||)) x0 / ||x0||``, so
    :func:`jfm.cfm_loss` trains on this path with ``kind="velocity"``.

    Numerics: where ``psi`` saturates in floating point (``psi = 1``, e.g. ``r >> tau``
    for ``tanh``), ``d psi/dr`` underflows and the density is ``0`` and the field
    ``0/0``. The training and sampling points stay inside the support; an empirical
    field (:func:`jfm.empirical_field`) far from all data is NaN in that regime. Write
    ``psi`` so that its autodiff derivative does not cancel: ``jnp.tanh``'s derivative
    ``1 - tanh^2`` is exactly 0 beyond ``r/tau ~ 9`` (float32) / ``19`` (float64), while
    the same function as ``1 - 2 * jax.nn.sigmoid(-2 r / tau)`` keeps a positive density
    to ``r/tau ~ 44`` / ``354``; likewise ``-jnp.expm1(-r / tau)`` for ``1 - exp``. The
    radius is floored at the dtype's smallest normal number.

    Checklist: per example (``d = x.size``); scalar jfm ``t`` in ``[0, 1]``; the field
    is singular at ``t = 1``; the density is singular at ``x = x1`` when
    ``d psi/dr (0) > 0`` and ``d >= 2`` (as for ``tanh``). The prior is the ``t = 0``
    conditional around the origin (choose ``T`` so its spread exceeds the data's).

    Args:
        cdf: ``cdf(tau, r) -> scalar`` for scalar ``tau, r``, jit-traceable and
            differentiable (static: compared by identity).
        T: the construction's prior time ``tau(t = 0)`` (``> 0``, default 1).
        event_shape: optional event shape; ``prior_sample(shape)`` then splits ``shape``
            into batch and event axes by it (else ``shape[0]`` is the batch axis).
        validate: run :func:`jfm.check_cdf` at construction (when ``T`` is concrete) and
            raise on any problem (default ``True``).

    Raises:
        ValueError: ``validate=True`` and the CDF fails :func:`jfm.check_cdf` (the message
            lists the problems); ``T <= 0``.

    Examples:
        >>> import jax, jax.numpy as jnp, jfm
        >>> path = jfm.IsotropicPath(cdf=lambda tau, r: jnp.tanh(r / tau))
        >>> path.prior_sample((4, 2), key=jax.random.key(0)).shape
        (4, 2)
        >>> path.conditional_velocity(0.5, jnp.array([0.3, 0.4]), jnp.zeros(2))
        Array([-0.6, -0.8], dtype=float32)
    """

    cdf: Callable = eqx.field(static=True)
    T: float | Float[Array, ""] = 1.0
    event_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)
    validate: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        check_callable(self.cdf, "cdf", "(tau, r) -> scalar")
        check_event_shape(self.event_shape)
        check_bool(self.validate, "validate")
        if is_concrete(self.T):
            if jnp.shape(self.T) != () or not float(self.T) > 0:
                raise ValueError(f"`T` must be a positive scalar; got T={self.T!r}.")
            if self.validate:
                report = check_cdf(self.cdf, T=float(self.T))
                if not report.ok:
                    raise ValueError(
                        f"`cdf` is not a valid radial CDF psi_tau(r): {str(report)}\n(pass "
                        "validate=False to skip this check at your own risk)."
                    )

    @property
    def _event_shape(self):
        return self.event_shape

    # -- psi in jfm time and its derivatives ---------------------------------------------

    def _psi(self, t, r):
        tau = jnp.asarray(self.T, r.dtype) * (1 - t)
        return jnp.asarray(self.cdf(tau, r)).astype(r.dtype)

    def _d_psi(self, t, r):
        """``(d psi/dt, d psi/dr)`` in jfm time (two forward-mode tangents)."""
        one = jnp.ones_like(r)
        _, dt = jax.jvp(lambda s: self._psi(s, r), (t,), (one,))
        _, dr = jax.jvp(lambda s: self._psi(t, s), (r,), (one,))
        return dt, dr

    def _inverse(self, t, c):
        """``r`` with ``psi(t, r) = c``, by bisection in ``log r`` (``t < 1``)."""
        dtype = c.dtype

        def fn(y, args):
            s, q = args
            return self._psi(s, jnp.exp(y)) - q

        solver = optx.Bisection(
            rtol=0.0, atol=float(8 * jnp.finfo(dtype).eps), expand_if_necessary=True
        )
        sol = optx.root_find(
            fn,
            solver,
            jnp.zeros((), dtype),
            args=(t, c),
            options=dict(lower=jnp.asarray(-1.0, dtype), upper=jnp.asarray(1.0, dtype)),
            max_steps=_BISECTION_STEPS,
            throw=False,
        )
        return jnp.exp(sol.value)

    def _quantile_radius(self, t, c):
        eps = jnp.finfo(c.dtype).eps
        c = jnp.clip(c, eps, 1 - eps)
        inside = t < 1
        r = self._inverse(jnp.where(inside, t, jnp.zeros_like(t)), c)
        return jnp.where(inside, r, jnp.zeros_like(r))

    # -- radial pieces -------------------------------------------------------------------

    def _log_density_at_radius(self, t, r, d):
        _, dr = self._d_psi(t, r)
        return jnp.log(dr) - log_sphere_area(d) - (d - 1) * jnp.log(r)

    def _velocity_factor(self, t, r, d):
        dt, dr = self._d_psi(t, r)
        return -(dt / dr) / r  # this order keeps r * dr from underflowing at tiny r

    def _sample_radius(self, t, key, d, dtype):
        eps = jnp.finfo(dtype).eps
        c = jr.uniform(key, (), dtype, minval=eps, maxval=1 - eps)
        return self._quantile_radius(t, c)

    # -- coupling form -------------------------------------------------------------------

    def sample(
        self, t: RealScalarLike, x0: Float[Array, "*_dims"], x1: Float[Array, "*_dims"]
    ) -> Float[Array, "*_dims"]:
        """Map a prior draw ``x0`` along the conditional flow to jfm time ``t``.

        ``x_t = x1 + psi_tau^{-1}(psi_T(||x0||)) x0 / ||x0||`` with ``tau = T (1 - t)``:
        if ``x0`` is a prior draw, ``x_t ~ p_t(. | x1)``, and ``d x_t / dt`` is the
        conditional velocity at ``x_t`` (``target``).

        Args:
            t: scalar jfm time in ``[0, 1]``; x0: ``(*dims,)`` prior draw; x1: data.

        Returns:
            ``(*dims,)`` in ``x1``'s dtype.
        """
        t, x0, x1 = self._pair(t, x0, x1, "x0", "x1")
        r0 = safe_norm(x0)
        c = self._psi(jnp.zeros_like(t), r0)
        r = self._quantile_radius(t, c)
        unit = x0 / jnp.where(r0 > 0, r0, jnp.ones_like(r0))
        return (x1 + r * unit).astype(x1.dtype)

    def target(
        self,
        t: RealScalarLike,
        x0: Float[Array, "*_dims"],
        x1: Float[Array, "*_dims"],
        kind: str = "velocity",
    ) -> Float[Array, "*_dims"]:
        """The conditional target: the velocity at ``sample(t, x0, x1)`` (``kind="velocity"``).

        Only the velocity: it is not affine in ``x1`` or ``x0``, so other
        parametrizations would not convert marginal predictions into velocities (this is
        an :class:`jfm.AbstractFlowPath`, not an :class:`jfm.AbstractConvertiblePath`).

        Raises:
            ValueError: ``kind`` other than ``"velocity"``.
        """
        check_name(kind, "kind", _KINDS)
        return self.conditional_velocity(t, self.sample(t, x0, x1), x1)


__all__ = ["CDFReport", "IsotropicPath", "check_cdf"]
