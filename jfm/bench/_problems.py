"""Benchmark problems: a field, initial points and a reference for their endpoints.

Ready-made problems with exact answers: the Gaussian-mixture velocity under an affine
path (:func:`mixture_problem`) and the Gaussian-to-Gaussian flow with a closed-form
endpoint (:func:`gaussian_problem`, :func:`gaussian_flow`).
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .. import AffinePath, GaussianMixture
from .._checks import check_array, check_callable, check_scalar
from .._custom_types import Args, RealScalarLike, VectorField
from ._reference import Reference, reference_solution


def gaussian_flow(
    mean: Float[ArrayLike, " D"],
    cov: Float[ArrayLike, "D D"],
    path: AffinePath,
    x: Float[ArrayLike, " D"],
    t_from: RealScalarLike,
    t_to: RealScalarLike,
) -> Float[Array, " D"]:
    r"""The exact flow of the marginal velocity of a Gaussian under an affine path.

    For data ``N(m, S)`` and ``x_t = a(t) x1 + s(t) x0`` (``x0 ~ N(0, I)``) the marginal
    is ``N(a m, C_t)``, ``C_t = a^2 S + s^2 I``, and the marginal velocity
    ``u_t(x) = a' m + (a a' S + s s' I) C_t^{-1} (x - a m)`` is linear. All matrices are
    functions of ``S = Q diag(lambda) Q^T``, so they commute and the flow is

    .. math::
        x(t_2) = a(t_2) m + Q \,\mathrm{diag}\Big(\sqrt{c(t_2) / c(t_1)}\Big) Q^T
        \big(x(t_1) - a(t_1) m\big), \qquad c(t) = a(t)^2 \lambda + s(t)^2,

    in either time direction. It is the field
    ``jfm.GaussianMixture(m[None], S[None], [1.0]).velocity_field(path)``.

    Args:
        mean: ``(D,)`` data mean ``m``.
        cov: ``(D, D)`` symmetric positive-definite data covariance ``S``.
        path: a :class:`jfm.AffinePath`.
        x: ``(D,)`` the state at ``t_from`` (ONE example; batch with ``jax.vmap``).
        t_from: the time of ``x``, in ``[0, 1]``.
        t_to: the time to flow to, in ``[0, 1]`` (either side of ``t_from``).

    Returns:
        ``(D,)`` the state at ``t_to``, in the dtype of ``x``.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> path = jfm.AffinePath(jfm.CondOT())
        >>> jfm.bench.gaussian_flow(jnp.ones(2), 4.0 * jnp.eye(2), path, jnp.ones(2), 0.0, 1.0)
        Array([3., 3.], dtype=float32)
    """
    x = check_array(x, "x", ndim=1)
    dt = x.dtype
    mean = check_array(mean, "mean", ndim=1).astype(dt)
    cov = check_array(cov, "cov", ndim=2).astype(dt)
    if mean.shape != x.shape or cov.shape != x.shape * 2:
        raise ValueError(
            f"`mean` must have shape (D,) and `cov` (D, D) with D = x.shape[0] = {x.shape[0]};"
            f" got mean.shape={mean.shape}, cov.shape={cov.shape}."
        )
    if not isinstance(path, AffinePath):
        raise TypeError(f"`path` must be a jfm.AffinePath; got {type(path)}.")
    lam, q = jnp.linalg.eigh(cov)
    a1, s1 = path.alpha(t_from).astype(dt), path.sigma(t_from).astype(dt)
    a2, s2 = path.alpha(t_to).astype(dt), path.sigma(t_to).astype(dt)
    ratio = jnp.sqrt((a2**2 * lam + s2**2) / (a1**2 * lam + s1**2))
    return a2 * mean + q @ (ratio * (q.T @ (x - a1 * mean)))


class Problem(eqx.Module):
    """A field with initial points, a reference for their endpoints, and (optionally)
    points with known log-densities for the likelihood check.

    Build one for your own field with :func:`reference_solution`::

        ref = jfm.bench.reference_solution(field, x0, rtol=1e-12, atol=1e-12)
        problem = jfm.bench.Problem("my field", field, x0, ref)

    Attributes:
        name: a label for tables and plots.
        field: per-example vector field ``field(t, x, args)``.
        x0: ``[B, *event]`` initial points at ``t0``.
        reference: a :class:`Reference` for the states at ``t1``.
        t0: start of the solve (a Python float).
        t1: end of the solve (a Python float).
        args: passed to ``field``.
        logp_points: ``[M, *event]`` points at ``t1`` whose log-density under the flow
            is known, or ``None`` (no likelihood check).
        logp_exact: ``[M]`` their exact log-densities ``log p_{t1}``.
        prior_log_prob: per-example ``log p_{t0}(x)``, the source density of the
            likelihood solve (exact, so that only the solver errs).
    """

    name: str = eqx.field(static=True)
    field: VectorField
    x0: Float[Array, " batch *event"]
    reference: Reference
    t0: float = eqx.field(static=True, default=0.0)
    t1: float = eqx.field(static=True, default=1.0)
    args: Args = None
    logp_points: Float[Array, " M *event"] | None = None
    logp_exact: Float[Array, " M"] | None = None
    prior_log_prob: Callable | None = None

    def __check_init__(self):
        if not isinstance(self.name, str):
            raise TypeError(f"`name` must be a str; got {type(self.name)}.")
        check_callable(self.field, "field")
        if not isinstance(self.reference, Reference):
            raise TypeError(
                "`reference` must be a jfm.bench.Reference (see reference_solution); got "
                f"{type(self.reference)}."
            )
        if self.reference.x1.shape != jnp.shape(self.x0):
            raise ValueError(
                f"`reference.x1` must have the shape of `x0` {jnp.shape(self.x0)}; got "
                f"{self.reference.x1.shape}."
            )
        given = [v is not None for v in (self.logp_points, self.logp_exact, self.prior_log_prob)]
        if any(given) and not all(given):
            raise ValueError(
                "`logp_points`, `logp_exact` and `prior_log_prob` go together: pass all "
                "three (likelihood check) or none."
            )
        if all(given) and jnp.shape(self.logp_exact) != jnp.shape(self.logp_points)[:1]:
            raise ValueError(
                f"`logp_exact` must have shape (M,) = {jnp.shape(self.logp_points)[:1]} to "
                f"match logp_points; got {jnp.shape(self.logp_exact)}."
            )

    @property
    def error_floor(self) -> float:
        """The smallest endpoint error this problem resolves: the larger of the
        reference's largest error and round-off (``64 eps max|x1_ref|``)."""
        x = np.asarray(self.reference.x1)
        roundoff = 64 * np.finfo(x.dtype).eps * max(1.0, float(np.max(np.abs(x))))
        return max(float(np.max(np.asarray(self.reference.error))), roundoff)


def _check_times(t0: float, t1: float) -> tuple[float, float]:
    t0 = float(check_scalar(t0, "t0", lo=0.0, hi=1.0))
    t1 = float(check_scalar(t1, "t1", lo=0.0, hi=1.0))
    if t0 >= t1:
        raise ValueError(f"`t0` must be smaller than `t1` (noise -> data); got t0={t0}, t1={t1}.")
    return t0, t1


# The set-up maths below runs once per problem; compiled as one program it costs one
# compilation instead of one per eager operation (gaussian_problem on 16 2-D points with
# 4 likelihood points, fresh process, 2 shared cores: 7.4 s eager, 2.7 s compiled).
@eqx.filter_jit
def _marginal_log_prob(gmm: GaussianMixture, path: AffinePath, t: float, x: Array) -> Array:
    """``log p_t(x_i)`` of the mixture's marginal at ``t``, per row of ``x [M, D]``."""
    return jax.vmap(gmm.marginal(path, t).log_prob)(x)


@eqx.filter_jit
def _gaussian_endpoints(
    mean: Array, cov: Array, path: AffinePath, x0: Array, t0: float, t1: float
) -> Array:
    """:func:`gaussian_flow` from ``t0`` to ``t1`` per row of ``x0 [B, D]``."""
    return jax.vmap(lambda x: gaussian_flow(mean, cov, path, x, t0, t1))(x0)


def _check_event(gmm: GaussianMixture, x0: Array, logp_points) -> None:
    # The annotations' `_D` leaves this check to the code: a ValueError naming the argument.
    (d,) = gmm.event_shape
    for name, x in (("x0", x0), ("logp_points", logp_points)):
        if x is not None and jnp.shape(x)[1:] != (d,):
            raise ValueError(
                f"`{name}` must have shape [*, D] with D = {d}, the data dimension; got "
                f"{name}.shape={jnp.shape(x)}."
            )


def _logp_parts(gmm: GaussianMixture, path: AffinePath, logp_points, t0: float, t1: float):
    """Points, their exact ``log p_{t1}`` and the exact ``log p_{t0}``, or three ``None``."""
    if logp_points is None:
        return None, None, None
    pts = check_array(logp_points, "logp_points", ndim=2)
    return pts, _marginal_log_prob(gmm, path, t1, pts), gmm.marginal(path, t0).log_prob


def mixture_problem(
    gmm: GaussianMixture,
    path: AffinePath,
    x0: Float[ArrayLike, " batch _D"],
    *,
    ref_rtol: RealScalarLike,
    ref_atol: RealScalarLike,
    t0: float = 0.0,
    t1: float = 1.0,
    logp_points: Float[ArrayLike, " M _D"] | None = None,
    name: str | None = None,
) -> Problem:
    r"""The exact marginal velocity of a Gaussian mixture under ``path``, with references.

    The field is ``gmm.velocity_field(path)``; the endpoint reference comes from
    :func:`reference_solution` at ``ref_rtol``/``ref_atol``. The likelihood check (when
    ``logp_points`` are given) is exact: the marginals of the path are the mixtures
    :meth:`jfm.GaussianMixture.marginal`, so ``log p_{t1}`` of the points is known in closed
    form, and the likelihood solve starts from the exact ``log p_{t0}`` (for schedules with
    ``alpha(0) != 0``, e.g. :class:`jfm.VP`, that is not the prior ``N(0, I)``).

    Args:
        gmm: a :class:`jfm.GaussianMixture` (float64).
        path: a :class:`jfm.AffinePath`.
        x0: ``[B, D]`` float64 initial points at ``t0``.
        ref_rtol: relative tolerance of the reference (e.g. ``1e-12``).
        ref_atol: absolute tolerance of the reference (e.g. ``1e-12``).
        t0: start time, ``0 <= t0 < t1``.
        t1: end time, ``t1 <= 1`` (:class:`jfm.VP` needs ``t1 < 1``: its velocity is
            infinite at ``t = 1``).
        logp_points: ``[M, D]`` points at ``t1`` for the likelihood check, or ``None``.
        name: label; default from the path and ``D``.

    Returns:
        A :class:`Problem` whose reference is a Dopri8 solve (:func:`reference_solution`).

    Raises:
        TypeError: ``gmm`` not a :class:`jfm.GaussianMixture`, ``path`` not a
            :class:`jfm.AffinePath`, non-array ``x0``.
        ValueError: ``x0`` or ``logp_points`` not ``[*, D]`` with ``D`` the mixture's
            dimension; ``x0`` not float64; times outside ``0 <= t0 < t1 <= 1``.
    """
    if not isinstance(gmm, GaussianMixture):
        raise TypeError(f"`gmm` must be a jfm.GaussianMixture; got {type(gmm)}.")
    if not isinstance(path, AffinePath):
        raise TypeError(f"`path` must be a jfm.AffinePath; got {type(path)}.")
    t0, t1 = _check_times(t0, t1)
    x0 = check_array(x0, "x0", ndim=2)
    _check_event(gmm, x0, logp_points)
    field = gmm.velocity_field(path)
    ref = reference_solution(field, x0, rtol=ref_rtol, atol=ref_atol, t0=t0, t1=t1)
    pts, exact, prior = _logp_parts(gmm, path, logp_points, t0, t1)
    if name is None:
        name = f"GMM K={gmm.num_components} D={x0.shape[1]} {type(path.schedule).__name__}"
    return Problem(name, field, x0, ref, t0, t1, None, pts, exact, prior)


def gaussian_problem(
    mean: Float[ArrayLike, " D"],
    cov: Float[ArrayLike, "D D"],
    path: AffinePath,
    x0: Float[ArrayLike, " batch _D"],
    *,
    t0: float = 0.0,
    t1: float = 1.0,
    logp_points: Float[ArrayLike, " M _D"] | None = None,
    name: str | None = None,
) -> Problem:
    r"""A Gaussian-to-Gaussian flow with closed-form reference (:func:`gaussian_flow`).

    The field is the exact marginal velocity of data ``N(mean, cov)`` under ``path``
    (a one-component :class:`jfm.GaussianMixture`); the reference endpoints are the
    closed-form flow (error zero up to round-off), and the log-densities of the
    likelihood check are the Gaussian marginals ``N(a(t1) m, a^2 S + s^2 I)``.

    Args:
        mean: ``(D,)`` data mean.
        cov: ``(D, D)`` symmetric positive-definite data covariance.
        path: a :class:`jfm.AffinePath`.
        x0: ``[B, D]`` initial points at ``t0`` (float64 recommended).
        t0: start time, ``0 <= t0 < t1``.
        t1: end time, ``t1 <= 1``.
        logp_points: ``[M, D]`` points at ``t1`` for the likelihood check, or ``None``.
        name: label.

    Returns:
        A :class:`Problem` whose reference is ``"closed form"``.

    Raises:
        ValueError: ``x0`` or ``logp_points`` not ``[*, D]`` with ``D = mean.shape[0]``;
            times outside ``0 <= t0 < t1 <= 1``.
    """
    t0, t1 = _check_times(t0, t1)
    x0 = check_array(x0, "x0", ndim=2)
    mean = check_array(mean, "mean", ndim=1)
    gmm = GaussianMixture(mean[None], check_array(cov, "cov", ndim=2)[None], jnp.ones((1,)))
    _check_event(gmm, x0, logp_points)
    x1 = _gaussian_endpoints(gmm.means[0], gmm.covs[0], path, x0, t0, t1)
    ref = Reference(
        x1=x1,
        error=jnp.zeros(x0.shape[:1], x1.dtype),
        nfe=jnp.zeros(x0.shape[:1], jnp.int32),
        method="closed form",
    )
    pts, exact, prior = _logp_parts(gmm, path, logp_points, t0, t1)
    if name is None:
        name = f"Gaussian D={x0.shape[1]} {type(path.schedule).__name__}"
    return Problem(name, gmm.velocity_field(path), x0, ref, t0, t1, None, pts, exact, prior)
