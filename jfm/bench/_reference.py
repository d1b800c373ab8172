"""Reference endpoints of a benchmark problem: a tight float64 solve with its own error."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int

from .. import sample_ode
from .._checks import check_array, check_int, check_positive, check_scalar
from .._custom_types import Args, RealScalarLike, VectorField


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


def _require_float64(x: jax.Array, name: str) -> None:
    if x.dtype != jnp.float64:
        raise ValueError(
            f"`{name}` must be float64 for a reference solution (its error must sit far "
            f"below the errors it measures); got dtype {x.dtype}. Enable "
            "jax.config.update('jax_enable_x64', True) and pass x.astype(jnp.float64)."
        )


def _per_point_norm(d: Float[Array, " batch *event"]) -> Float[Array, " batch"]:
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
    those tolerances, both through :func:`jfm.sample_ode`. The reported error of each
    point is ``|x_ref - x_check|_2``: when the check is the more accurate of the two it
    estimates the reference's error, otherwise it bounds the sum of both errors; either
    way it is an honest upper estimate to compare measured errors against. The default
    check is the same 8th-order method because a lower-order one cannot be made accurate
    enough: on a 2-D mixture field, Tsit5 at ``1e-14`` is off by ``1.6e-13`` where Dopri8
    at ``1e-14`` is off by ``1.6e-14`` (both against Dopri8 at ``1e-16``), and a
    fixed-step Dopri8 solve with 256 steps is already at ``1.4e-14``. An independent
    check is what a closed form gives (:func:`gaussian_problem` reports it).

    Float64 only (``x0.dtype == float64``): tolerances of ``1e-12`` to ``1e-14`` are the
    point (``1e-14`` resolves the errors of 8th-order solvers down to ~``1e-13``).

    Args:
        field: per-example vector field ``field(t, x, args)``, ``x`` of shape ``event``.
        x0: ``[B, *event]`` float64 initial points at ``t0``.
        rtol: relative tolerance of the reference solve, e.g. ``1e-12`` (``> 0``).
        atol: absolute tolerance of the reference solve (``> 0``).
        t0: start time.
        t1: end time.
        args: passed to ``field``.
        solver: the reference solver (adaptive); ``None`` for ``dfx.Dopri8()``.
        check_solver: the check (adaptive); ``None`` for the reference solver itself.
        check_factor: the check runs at ``check_factor * rtol``, ``check_factor * atol``
            (``0 < check_factor <= 1``).
        max_steps: step bound of both solves (tight tolerances need many steps).

    Returns:
        A :class:`Reference` (float64): ``x1 [B, *event]``, ``error [B]``, ``nfe [B]``.

    Raises:
        ValueError: ``x0`` not float64; non-positive tolerances; ``check_factor`` outside
            ``(0, 1]``; the options of :func:`jfm.sample_ode`.
        TypeError: non-array ``x0``; non-real tolerances or ``check_factor``; a solver that
            is not a diffrax solver.
    """
    x0 = check_array(x0, "x0")
    _require_float64(x0, "x0")
    check_factor = float(check_scalar(check_factor, "check_factor", lo=0.0, hi=1.0, strict_lo=True))
    rtol_v = float(check_positive(rtol, "rtol", jnp.float64))
    atol_v = float(check_positive(atol, "atol", jnp.float64))
    max_steps = check_int(max_steps, "max_steps", 1)
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
