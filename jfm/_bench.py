r"""Solver-accuracy harness: references, sweeps, convergence orders, work-precision output.

The public face is the submodule :mod:`jfm.bench` (this file holds the code). It measures
how accurately and how cheaply ODE solvers integrate a vector field ``f(t, x, args)``:

1. a :class:`Problem` bundles a field, initial points ``x0 [B, *event]`` at ``t0`` and a
   :class:`Reference` for the endpoints at ``t1``: either from a high-order solver at a
   very tight tolerance in float64 (:func:`reference_solution`, with its own error
   estimated from a second, independent solve) or from a closed form
   (:func:`gaussian_flow` for a Gaussian-to-Gaussian flow);
   :func:`mixture_problem` and :func:`gaussian_problem` build the ones with known answers,
   including exact log-densities for the likelihood check;
2. :func:`solver_sweep` runs every solver over fixed step counts (``steps=N``) and over
   tolerances (``rtol = atol = tol``) through :func:`jfm.sample_ode` (and
   :func:`jfm.log_prob` when the problem knows its log-densities), and records the
   endpoint error (max and RMS over the points), the log-likelihood error, the NFE and
   the wall time after compilation, one :class:`SweepRecord` per setting;
3. :func:`convergence_orders` fits ``log error = c - p log N`` per fixed-step solver;
   :func:`records_to_markdown`, :func:`write_csv` and :func:`plot_work_precision` write
   the table and the work-precision diagrams (error vs NFE, error vs time).

Errors are measured per point as the Euclidean norm over the event,
``e_i = |x1_hat_i - x1_ref_i|_2``; ``err_max = max_i e_i``, ``err_rms = sqrt(mean_i e_i^2)``.
"""

import csv
import dataclasses
import math
import numbers
import timeit
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from diffrax._local_interpolation import ThirdOrderHermitePolynomialInterpolation
from jaxtyping import Array, ArrayLike, Float, Int

from ._analytic import GaussianMixture
from ._checks import check_array, check_int as _check_int, check_name
from ._custom_types import Args, RealScalarLike, VectorField
from ._paths import AffinePath
from ._sampling import log_prob, sample_ode
from ._sampling.base import check_positive_tol as _check_tol

_BATCH_MODES: tuple[str, ...] = ("joint", "vmap")

# -- a classical RK4 for diffrax ---------------------------------------------------------

_rk4_tableau = dfx.ButcherTableau(
    c=np.array([0.5, 0.5, 1.0]),
    b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
    # Embedded midpoint rule (b = (0, 1, 0, 0), order 2): error = b_sol - b_midpoint.
    b_error=np.array([1 / 6, 1 / 3 - 1, 1 / 3, 1 / 6]),
    a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
)


class RK4(dfx.AbstractERK):
    r"""The classical 4-stage Runge-Kutta method (Kutta, 1901), absent from diffrax.

    Checklist: explicit, order 4, 4 stages (not FSAL), deterministic. It carries an
    embedded midpoint rule (order 2) as error estimate, so it can also take adaptive
    steps, but it is meant for fixed steps: it is the ``"rk4"`` of other libraries
    (torchdiffeq's ``rk4`` uses Kutta's 3/8 variant, also order 4). Dense output: cubic
    Hermite interpolation.

    Examples:
        >>> import diffrax as dfx, jax.numpy as jnp, jfm
        >>> sol = jfm.sample_ode(lambda t, x, a: -x, jnp.ones((1, 1)),
        ...                      solver=jfm.bench.RK4(), steps=10)
        >>> round(float(sol.x1[0, 0]), 6), int(sol.nfe)
        (0.36788, 40)
    """

    tableau: ClassVar[dfx.ButcherTableau] = _rk4_tableau
    interpolation_cls: ClassVar[Callable[..., ThirdOrderHermitePolynomialInterpolation]] = (
        ThirdOrderHermitePolynomialInterpolation.from_k
    )

    def order(self, terms):
        del terms
        return 4


def default_solvers() -> dict[str, dfx.AbstractSolver]:
    """The explicit solvers the harness sweeps by default, by name.

    Euler (order 1), Heun, Midpoint, Ralston (2), Bosh3 (3), :class:`RK4` (4), Dopri5,
    Tsit5 (5), Dopri8 (8).
    """
    return {
        "Euler": dfx.Euler(),
        "Heun": dfx.Heun(),
        "Midpoint": dfx.Midpoint(),
        "Ralston": dfx.Ralston(),
        "Bosh3": dfx.Bosh3(),
        "RK4": RK4(),
        "Dopri5": dfx.Dopri5(),
        "Tsit5": dfx.Tsit5(),
        "Dopri8": dfx.Dopri8(),
    }


# -- references ---------------------------------------------------------------------------


class Reference(eqx.Module):
    """Reference endpoints of a :class:`Problem` and their own error.

    Attributes:
        x1: ``[B, *event]`` reference states at ``t1``.
        error: ``[B]`` the reference's own error per point (Euclidean norm): for a solver
            reference, the distance to a second, independent and tighter solve (an
            estimate); for a closed form, zero (exact up to round-off).
        nfe: ``[B]`` int, field evaluations the reference solve spent per point (0 for a
            closed form).
        method: how it was obtained, e.g. ``"Dopri8 rtol=1e-12"`` or ``"closed form"``.
    """

    x1: Float[Array, " batch *event"]
    error: Float[Array, " batch"]
    nfe: Int[Array, " batch"]
    method: str = eqx.field(static=True)


def _require_float64(x, name):
    if x.dtype != jnp.float64:
        raise ValueError(
            f"`{name}` must be float64 for a reference solution (its error must sit far "
            f"below the errors it measures); got dtype {x.dtype}. Enable "
            "jax.config.update('jax_enable_x64', True) and pass x.astype(jnp.float64)."
        )


def _per_point_norm(d):
    """``|d_i|_2`` over all event axes of ``d [B, *event]`` -> ``[B]``."""
    return jnp.sqrt(jnp.sum(d.reshape(d.shape[0], -1) ** 2, axis=1))


def reference_solution(
    field: VectorField,
    x0: Float[ArrayLike, " batch *event"],
    *,
    rtol: RealScalarLike,
    atol: RealScalarLike,
    t0: RealScalarLike = 0.0,
    t1: RealScalarLike = 1.0,
    args: Args = None,
    solver: dfx.AbstractSolver | None = None,
    check_solver: dfx.AbstractSolver | None = None,
    check_factor: float = 1e-2,
    max_steps: int = 2**16,
) -> Reference:
    r"""A reference solution per initial point, with an estimate of its own error.

    Solves ``dx/dt = field(t, x, args)`` from ``t0`` to ``t1`` for each point on its own
    (``batch="vmap"``: own step sizes, so no point is held to another's accuracy) with a
    high-order ``solver`` (default :class:`diffrax.Dopri8`) at ``rtol``/``atol``, and
    again with ``check_solver`` (default: the same solver) at ``check_factor`` times
    those tolerances. The reported error of each point is ``|x_ref - x_check|_2``: when
    the check is the more accurate of the two it estimates the reference's error,
    otherwise it bounds the sum of both errors; either way it is an honest upper
    estimate to compare measured errors against. The default check is the same
    8th-order method because a lower-order one cannot be made accurate enough: on a
    2-D mixture field, Tsit5 at ``1e-14`` is off by ``1.6e-13`` where Dopri8 at
    ``1e-14`` is off by ``1.6e-14`` (both against Dopri8 at ``1e-16``), and a fixed-step
    Dopri8 solve with 256 steps is already at ``1.4e-14``. An independent check is
    what a closed form gives (:func:`gaussian_problem` reports it).

    Float64 only (``x0.dtype == float64``): tolerances of ``1e-12`` to ``1e-14`` are the
    point (``1e-14`` resolves the errors of 8th-order solvers down to ~``1e-13``).

    Args:
        field: per-example vector field ``field(t, x, args)``.
        x0: ``[B, *event]`` float64 initial points at ``t0``.
        rtol, atol: tolerances of the reference solve, e.g. ``1e-12``.
        t0, t1: start and end time.
        args: passed to ``field``.
        solver: the reference solver (adaptive); ``None`` for ``dfx.Dopri8()``.
        check_solver: the check (adaptive); ``None`` for the reference solver itself.
        check_factor: the check runs at ``check_factor * rtol``, ``check_factor * atol``
            (``0 < check_factor <= 1``).
        max_steps: step bound of both solves (tight tolerances need many steps).

    Returns:
        A :class:`Reference` (float64).

    Raises:
        ValueError: ``x0`` not float64; bad tolerances or ``check_factor``; the options
            of :func:`jfm.sample_ode`.
        TypeError: non-array ``x0``; a solver that is not a diffrax solver.
    """
    x0 = check_array(x0, "x0")
    _require_float64(x0, "x0")
    if isinstance(check_factor, bool) or not isinstance(check_factor, numbers.Real):
        raise TypeError(f"`check_factor` must be a real number; got {check_factor!r}.")
    if not 0 < check_factor <= 1:
        raise ValueError(f"`check_factor` must lie in (0, 1]; got check_factor={check_factor}.")
    rtol_v = float(_check_tol(rtol, "rtol", jnp.float64))
    atol_v = float(_check_tol(atol, "atol", jnp.float64))
    solver = dfx.Dopri8() if solver is None else solver
    check_solver = solver if check_solver is None else check_solver
    common = dict(t0=t0, t1=t1, args=args, batch="vmap", max_steps=max_steps)
    ref = sample_ode(field, x0, solver=solver, rtol=rtol_v, atol=atol_v, **common)
    chk = sample_ode(
        field,
        x0,
        solver=check_solver,
        rtol=rtol_v * check_factor,
        atol=atol_v * check_factor,
        **common,
    )
    return Reference(
        x1=ref.x1,
        error=_per_point_norm(ref.x1 - chk.x1),
        nfe=ref.nfe,
        method=f"{type(solver).__name__} rtol={rtol_v:.0e} atol={atol_v:.0e} (checked by "
        f"{type(check_solver).__name__} at x{check_factor:g})",
    )


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
        t_from, t_to: times in ``[0, 1]``.

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


# -- problems -----------------------------------------------------------------------------


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
        t0, t1: start and end of the solve (Python floats).
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
        if not callable(self.field):
            raise TypeError(f"`field` must be callable as field(t, x, args); got {self.field}.")
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


def _check_times(t0, t1):
    for name, v in (("t0", t0), ("t1", t1)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 <= v <= 1:
            raise ValueError(f"`{name}` must be a Python float in [0, 1]; got {name}={v!r}.")
    if t0 >= t1:
        raise ValueError(f"`t0` must be smaller than `t1` (noise -> data); got {t0}, {t1}.")
    return float(t0), float(t1)


def _logp_parts(gmm: GaussianMixture, path, logp_points, t0, t1):
    if logp_points is None:
        return None, None, None
    pts = check_array(logp_points, "logp_points", ndim=2)
    exact = jax.vmap(gmm.marginal(path, t1).log_prob)(pts)
    return pts, exact, gmm.marginal(path, t0).log_prob


def mixture_problem(
    gmm: GaussianMixture,
    path: AffinePath,
    x0: Float[ArrayLike, " batch D"],
    *,
    ref_rtol: RealScalarLike,
    ref_atol: RealScalarLike,
    t0: float = 0.0,
    t1: float = 1.0,
    logp_points: Float[ArrayLike, " M D"] | None = None,
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
        ref_rtol, ref_atol: reference tolerances (e.g. ``1e-12``).
        t0, t1: time span, ``0 <= t0 < t1 <= 1`` (:class:`jfm.VP` needs ``t1 < 1``: its
            velocity is infinite at ``t = 1``).
        logp_points: ``[M, D]`` points at ``t1`` for the likelihood check, or ``None``.
        name: label; default from the path and ``D``.

    Returns:
        A :class:`Problem`.
    """
    if not isinstance(gmm, GaussianMixture):
        raise TypeError(f"`gmm` must be a jfm.GaussianMixture; got {type(gmm)}.")
    if not isinstance(path, AffinePath):
        raise TypeError(f"`path` must be a jfm.AffinePath; got {type(path)}.")
    t0, t1 = _check_times(t0, t1)
    x0 = check_array(x0, "x0", ndim=2)
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
    x0: Float[ArrayLike, " batch D"],
    *,
    t0: float = 0.0,
    t1: float = 1.0,
    logp_points: Float[ArrayLike, " M D"] | None = None,
    name: str | None = None,
) -> Problem:
    r"""A Gaussian-to-Gaussian flow with closed-form reference (:func:`gaussian_flow`).

    The field is the exact marginal velocity of data ``N(mean, cov)`` under ``path``
    (a one-component :class:`jfm.GaussianMixture`); the reference endpoints are the
    closed-form flow (error zero up to round-off), and the log-densities of the
    likelihood check are the Gaussian marginals ``N(a(t1) m, a^2 S + s^2 I)``.

    Args:
        mean: ``(D,)``; cov: ``(D, D)`` symmetric positive definite.
        path: a :class:`jfm.AffinePath`.
        x0: ``[B, D]`` initial points at ``t0`` (float64 recommended).
        t0, t1: ``0 <= t0 < t1 <= 1``.
        logp_points: ``[M, D]`` points at ``t1`` for the likelihood check, or ``None``.
        name: label.

    Returns:
        A :class:`Problem` whose reference is ``"closed form"``.
    """
    t0, t1 = _check_times(t0, t1)
    x0 = check_array(x0, "x0", ndim=2)
    mean = check_array(mean, "mean", ndim=1)
    gmm = GaussianMixture(mean[None], check_array(cov, "cov", ndim=2)[None], jnp.ones((1,)))
    if gmm.event_shape != (x0.shape[1],):
        raise ValueError(
            f"`x0` must have shape [B, D] with D = mean.shape[0] = {mean.shape[0]}; got "
            f"x0.shape={x0.shape}."
        )
    flow = jax.vmap(lambda x: gaussian_flow(gmm.means[0], gmm.covs[0], path, x, t0, t1))
    x1 = flow(x0)
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


# -- sweeps -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SweepRecord:
    """One solver setting on one problem (host-side numbers).

    Attributes:
        problem: the problem's name.
        library: who solved it (``"jfm"``, i.e. diffrax through :func:`jfm.sample_ode`;
            other libraries' runs can be recorded in the same form).
        solver: solver name.
        mode: ``"fixed"`` (``steps``) or ``"adaptive"`` (``tol``).
        steps: the fixed step count, or ``None``.
        tol: ``rtol = atol`` of the adaptive solve, or ``None``.
        nfe: field evaluations per point (mean over points for per-point solves).
        err_max, err_rms: endpoint error vs the reference (see the module docstring).
        time_s: wall time of the solve after compilation (min over repeats), seconds.
        compile_s: time of the first call of this solver and mode (compile + run).
        logp_nfe, logp_err_max, logp_err_rms: the likelihood solve's NFE and
            ``|log p_hat - log p|`` (max, RMS over points); NaN without a check.
        ref_error: the problem's :attr:`Problem.error_floor`.
    """

    problem: str
    library: str
    solver: str
    mode: str
    steps: int | None
    tol: float | None
    nfe: float
    err_max: float
    err_rms: float
    time_s: float
    compile_s: float
    logp_nfe: float = math.nan
    logp_err_max: float = math.nan
    logp_err_rms: float = math.nan
    ref_error: float = math.nan

    @property
    def setting(self) -> str:
        """``"N=16"`` or ``"tol=1e-06"``."""
        return f"N={self.steps}" if self.mode == "fixed" else f"tol={self.tol:.0e}"


def endpoint_errors(x1: ArrayLike, x1_ref: ArrayLike) -> tuple[float, float]:
    """``(max_i e_i, sqrt(mean_i e_i^2))`` with ``e_i = |x1_i - x1_ref_i|_2``.

    Args:
        x1, x1_ref: ``[B, *event]`` of equal shapes.

    Returns:
        Two Python floats.
    """
    x1 = np.asarray(x1, np.float64)
    x1_ref = np.asarray(x1_ref, np.float64)
    if x1.shape != x1_ref.shape or x1.ndim < 1:
        raise ValueError(
            f"`x1` and `x1_ref` must have equal shapes [B, *event]; got {x1.shape}, {x1_ref.shape}."
        )
    e = np.sqrt(np.sum((x1 - x1_ref).reshape(x1.shape[0], -1) ** 2, axis=1))
    return float(np.max(e)), float(np.sqrt(np.mean(e**2)))


def _solvers_dict(solvers) -> dict[str, dfx.AbstractSolver]:
    if isinstance(solvers, Mapping):
        items = dict(solvers)
    elif isinstance(solvers, Sequence) and not isinstance(solvers, str):
        items = {type(s).__name__: s for s in solvers}
    else:
        raise TypeError(
            "`solvers` must be a dict name -> diffrax solver or a list of diffrax solvers; "
            f"got {type(solvers)}."
        )
    if not items:
        raise ValueError("`solvers` must hold at least one solver; got none.")
    for name, s in items.items():
        if not isinstance(s, dfx.AbstractSolver):
            raise TypeError(f"`solvers`[{name!r}] must be a diffrax solver; got {type(s)}.")
    return items


def _check_settings(steps, tolerances):
    if not isinstance(steps, Sequence) or not isinstance(tolerances, Sequence):
        raise TypeError("`steps` and `tolerances` must be sequences (lists/tuples).")
    steps = tuple(_check_int(n, "steps", 1) for n in steps)
    tols = []
    for v in tolerances:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > 0:
            raise ValueError(f"`tolerances` must hold positive numbers; got {v!r}.")
        tols.append(float(v))
    if not steps and not tols:
        raise ValueError(
            "Nothing to sweep: pass steps=[...] (fixed step counts) and/or "
            "tolerances=[...] (rtol = atol of adaptive solves)."
        )
    return steps, tuple(tols)


def _time(fn, repeat):
    """(first call seconds, min of ``repeat`` later calls) of ``fn()``, blocked."""
    start = timeit.default_timer()
    out = jax.block_until_ready(fn())
    first = timeit.default_timer() - start
    jax.block_until_ready(fn())  # warm-up after compilation
    best = min(timeit.repeat(lambda: jax.block_until_ready(fn()), number=1, repeat=repeat))
    return out, first, best


def solver_sweep(
    problem: Problem,
    solvers: Mapping[str, dfx.AbstractSolver] | Sequence[dfx.AbstractSolver],
    *,
    steps: Sequence[int] = (),
    tolerances: Sequence[float] = (),
    repeat: int = 3,
    batch: str = "joint",
    log_likelihood: bool = True,
    max_steps: int = 4096,
) -> list[SweepRecord]:
    r"""Run every solver over fixed step counts and tolerances on ``problem``.

    For each solver: for each ``N`` in ``steps`` a solve with ``steps=N``; for each
    ``tol`` in ``tolerances`` (adaptive solvers only; :class:`diffrax.Euler` has no error
    estimate and is skipped) a solve with ``rtol = atol = tol``, both by
    :func:`jfm.sample_ode` from ``problem.x0`` (in its dtype) with ``batch``. Recorded:
    the endpoint error against ``problem.reference``, ``ODEResult.nfe``, and the wall
    time after compilation: the first call compiles (steps and tolerances are traced, so
    one compilation per solver and mode), one warm-up call follows, then the minimum of
    ``timeit.repeat(..., number=1, repeat=repeat)`` with ``jax.block_until_ready``. The
    time includes jfm's Python-side argument checks and dispatch (tens of microseconds),
    as a user's call does. With ``log_likelihood`` and a problem that has
    ``logp_points``, the same setting also runs :func:`jfm.log_prob` (exact divergence,
    from ``problem.prior_log_prob``) and records its NFE and error (not timed).

    Settings whose solve fails (e.g. ``max_steps`` reached, non-finite endpoint) are
    recorded with NaN errors.

    Args:
        problem: a :class:`Problem`.
        solvers: ``{name: solver}`` or a list of diffrax solvers (named by class).
        steps: fixed step counts (each ``1 <= N <= max_steps``).
        tolerances: tolerances of the adaptive solves.
        repeat: timing repeats (``>= 1``).
        batch: ``"joint"`` (one solve of the batch, shared steps) or ``"vmap"`` (one
            per point), see :func:`jfm.sample_ode`.
        log_likelihood: also run the likelihood check where the problem has one.
        max_steps: step bound of each solve (static; one value for the whole sweep).

    Returns:
        A list of :class:`SweepRecord`, solver by solver, fixed steps then tolerances.

    Raises:
        TypeError: ``problem`` or ``solvers`` of the wrong type.
        ValueError: nothing to sweep, non-positive steps or tolerances, ``repeat < 1``,
            unknown ``batch``.
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"`problem` must be a jfm.bench.Problem; got {type(problem)}.")
    items = _solvers_dict(solvers)
    steps, tols = _check_settings(steps, tolerances)
    repeat = _check_int(repeat, "repeat", 1)
    check_name(batch, "batch", _BATCH_MODES)
    max_steps = _check_int(max_steps, "max_steps", 1)
    if steps and max(steps) > max_steps:
        raise ValueError(f"`steps` up to {max(steps)} exceed `max_steps`={max_steps}.")
    do_logp = log_likelihood and problem.logp_points is not None
    floor = problem.error_floor
    common = dict(t0=problem.t0, t1=problem.t1, args=problem.args, max_steps=max_steps)
    records = []
    for name, solver in items.items():
        settings = [("fixed", dict(steps=n), n, None) for n in steps]
        if isinstance(solver, dfx.AbstractAdaptiveSolver):
            settings += [("adaptive", dict(rtol=v, atol=v), None, v) for v in tols]
        first_of_mode: dict[str, float] = {}
        for mode, control, n, tol in settings:

            def run(control=control):
                return sample_ode(
                    problem.field,
                    problem.x0,
                    solver=solver,
                    batch=batch,
                    throw=False,
                    **control,
                    **common,
                )

            sol, first, best = _time(run, repeat)
            compile_s = first_of_mode.setdefault(mode, first)
            ok = bool(np.all(np.asarray(sol.success)))
            err_max, err_rms = (
                endpoint_errors(sol.x1, problem.reference.x1) if ok else (math.nan, math.nan)
            )
            logp = {}
            if do_logp:
                lp, info = log_prob(
                    problem.field,
                    problem.logp_points,
                    solver=solver,
                    prior_log_prob=problem.prior_log_prob,
                    batch=batch,
                    throw=False,
                    **control,
                    **common,
                )
                d = np.abs(np.asarray(lp, np.float64) - np.asarray(problem.logp_exact))
                good = bool(np.all(np.asarray(info.success)))
                logp = dict(
                    logp_nfe=float(np.mean(np.asarray(info.nfe))),
                    logp_err_max=float(np.max(d)) if good else math.nan,
                    logp_err_rms=float(np.sqrt(np.mean(d**2))) if good else math.nan,
                )
            records.append(
                SweepRecord(
                    problem=problem.name,
                    library="jfm",
                    solver=name,
                    mode=mode,
                    steps=n,
                    tol=tol,
                    nfe=float(np.mean(np.asarray(sol.nfe))),
                    err_max=err_max,
                    err_rms=err_rms,
                    time_s=best,
                    compile_s=compile_s,
                    ref_error=floor,
                    **logp,
                )
            )
    return records


# -- convergence order --------------------------------------------------------------------


def fit_order(
    steps: Sequence[int] | ArrayLike,
    errors: Sequence[float] | ArrayLike,
    *,
    floor: float = 0.0,
    max_points: int | None = None,
) -> tuple[float, int]:
    r"""The convergence order ``p`` of a fixed-step method from a log-log fit.

    Least squares of ``log e = c - p log N`` over the points with a finite error above
    ``10 * floor`` (below it the error is the reference's or round-off, not the
    method's), optionally only the ``max_points`` of them with the largest ``N`` (the
    asymptotic regime; coarse steps may be pre-asymptotic).

    Args:
        steps: step counts ``N``.
        errors: the errors at those step counts (same length).
        floor: the error floor of the measurement (e.g. :attr:`Problem.error_floor`).
        max_points: fit only the finest this many valid points (``>= 2``); ``None``: all.

    Returns:
        ``(p, number of points used)``; ``p`` is NaN with fewer than 2 points.

    Examples:
        >>> import jfm
        >>> p, n = jfm.bench.fit_order([10, 20, 40], [1e-2, 2.5e-3, 6.25e-4])
        >>> round(p, 6), n
        (2.0, 3)
    """
    n = np.asarray(steps, np.float64)
    e = np.asarray(errors, np.float64)
    if n.ndim != 1 or n.shape != e.shape:
        raise ValueError(
            f"`steps` and `errors` must be 1-d of equal length; got shapes {n.shape}, {e.shape}."
        )
    if np.any(n <= 0):
        raise ValueError(f"`steps` must be positive; got {n}.")
    keep = np.isfinite(e) & (e > 10 * floor) & (e > 0)
    if max_points is not None:
        max_points = _check_int(max_points, "max_points", 2)
        finest = np.argsort(-n)
        keep[finest[np.cumsum(keep[finest]) > max_points]] = False
    if keep.sum() < 2:
        return math.nan, int(keep.sum())
    slope = np.polyfit(np.log(n[keep]), np.log(e[keep]), 1)[0]
    return float(-slope), int(keep.sum())


def convergence_orders(
    records: Sequence[SweepRecord], *, metric: str = "err_rms", max_points: int | None = None
) -> list[tuple[str, str, str, float, int]]:
    """Fitted order of every fixed-step sweep in ``records`` (:func:`fit_order`).

    Args:
        records: from :func:`solver_sweep` (any problems and libraries mixed).
        metric: ``"err_rms"`` or ``"err_max"``.
        max_points: passed to :func:`fit_order`.

    Returns:
        ``(problem, library, solver, order, points used)`` per fixed-step sweep, with the
        floor of each record's ``ref_error``.
    """
    check_name(metric, "metric", ("err_rms", "err_max"))
    groups: dict[tuple[str, str, str], list[SweepRecord]] = {}
    for r in records:
        if r.mode == "fixed":
            groups.setdefault((r.problem, r.library, r.solver), []).append(r)
    out = []
    for (prob, lib, solver), rs in groups.items():
        floor = max(0.0 if math.isnan(r.ref_error) else r.ref_error for r in rs)
        p, used = fit_order(
            [r.steps for r in rs],
            [getattr(r, metric) for r in rs],
            floor=floor,
            max_points=max_points,
        )
        out.append((prob, lib, solver, p, used))
    return out


# -- output -------------------------------------------------------------------------------

_COLUMNS = [f.name for f in dataclasses.fields(SweepRecord)]


def write_csv(records: Sequence[SweepRecord], path: str) -> None:
    """Write ``records`` to a CSV file, one row per :class:`SweepRecord` (all fields)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(_COLUMNS)
        for r in records:
            w.writerow(["" if v is None else v for v in dataclasses.astuple(r)])


def _fmt(v, spec=".2e"):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def records_to_markdown(records: Sequence[SweepRecord]) -> str:
    """A Markdown table of ``records``; errors at or below ``10 x`` the problem's floor
    are marked ``*`` (not resolved by the reference)."""
    head = (
        "| problem | library | solver | setting | NFE | err max | err RMS | time (ms) | "
        "logp NFE | logp err max | logp err RMS |"
    )
    lines = [head, "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        mark = "*" if r.err_max <= 10 * r.ref_error else ""
        lines.append(
            f"| {r.problem} | {r.library} | {r.solver} | {r.setting} | {r.nfe:.0f} | "
            f"{_fmt(r.err_max)}{mark} | {_fmt(r.err_rms)} | {1e3 * r.time_s:.3f} | "
            f"{_fmt(r.logp_nfe, '.0f')} | {_fmt(r.logp_err_max)} | {_fmt(r.logp_err_rms)} |"
        )
    return "\n".join(lines)


def plot_work_precision(
    records: Sequence[SweepRecord],
    *,
    x: str = "nfe",
    y: str = "err_rms",
    ax=None,
    title: str | None = None,
):
    """A work-precision diagram: error vs cost, one line per (library, solver, mode).

    Log-log axes; fixed steps solid with circles, adaptive dashed with squares, other
    libraries than jfm dotted with triangles; the error floor as a grey line.

    Args:
        records: :class:`SweepRecord` of ONE problem (several libraries may mix).
        x: ``"nfe"`` or ``"time_s"``.
        y: ``"err_rms"``, ``"err_max"``, ``"logp_err_rms"`` or ``"logp_err_max"``.
        ax: a matplotlib Axes to draw into, or ``None`` for a new figure.
        title: axes title (default: the problem's name).

    Returns:
        The matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    check_name(x, "x", ("nfe", "time_s", "logp_nfe"))
    check_name(y, "y", ("err_rms", "err_max", "logp_err_rms", "logp_err_max"))
    if not records:
        raise ValueError("`records` is empty: nothing to plot.")
    problems = {r.problem for r in records}
    if len(problems) != 1:
        raise ValueError(f"`records` must come from ONE problem; got {sorted(problems)}.")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 5))
    groups: dict[tuple[str, str, str], list[SweepRecord]] = {}
    for r in records:
        groups.setdefault((r.library, r.solver, r.mode), []).append(r)
    cmap = plt.get_cmap("tab20")
    names = sorted({(lib, s) for lib, s, _ in groups})
    for (lib, solver, mode), rs in groups.items():
        # In the order of the setting (N up, tol down), not of x: noisy times stay honest.
        rs = sorted(rs, key=lambda r: r.steps if mode == "fixed" else -r.tol)
        pts = [(getattr(r, x), getattr(r, y)) for r in rs]
        pts = [(a, b) for a, b in pts if np.isfinite(a) and np.isfinite(b) and b > 0 and a > 0]
        if not pts:
            continue
        xs, ys = zip(*pts)
        style = "-o" if mode == "fixed" else "--s"
        if lib != "jfm":
            style = ":^" if mode == "fixed" else ":v"
        ax.loglog(
            xs,
            ys,
            style,
            color=cmap(names.index((lib, solver)) % 20),
            ms=4,
            lw=1.2,
            label=f"{solver} {mode}" + ("" if lib == "jfm" else f" ({lib})"),
        )
    floor = max(r.ref_error for r in records)
    if np.isfinite(floor) and floor > 0 and y.startswith("err"):
        ax.axhline(floor, color="0.6", lw=1, ls="-", zorder=0, label="reference floor")
    ax.set_xlabel({"nfe": "NFE per point", "time_s": "wall time (s)", "logp_nfe": "NFE"}[x])
    ax.set_ylabel(y.replace("_", " "))
    ax.set_title(title or records[0].problem, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return ax


__all__ = [
    "RK4",
    "Problem",
    "Reference",
    "SweepRecord",
    "convergence_orders",
    "default_solvers",
    "endpoint_errors",
    "fit_order",
    "gaussian_flow",
    "gaussian_problem",
    "mixture_problem",
    "plot_work_precision",
    "records_to_markdown",
    "reference_solution",
    "solver_sweep",
    "write_csv",
]
