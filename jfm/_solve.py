"""Sampling by ODE integration with diffrax: fixed and adaptive step, joint or vmapped batch."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from ._checks import check_array, check_name, is_concrete
from ._custom_types import Args, RealScalarLike, VectorField
from ._solver_utils import (  # noqa: F401  (re-exported: other modules import them from here)
    _INITIAL_STEP_NFE as _INITIAL_STEP_NFE,
    _check_int as _check_int,
    _check_step_control as _check_step_control,
    _check_time as _check_time,
    _check_tol as _check_tol,
    _count_nfe as _count_nfe,
    _FirstRejections as _FirstRejections,
    _stage_counts as _stage_counts,
    solve_counted as solve_counted,
)

_BATCH_MODES: tuple[str, ...] = ("joint", "vmap")


class ODEResult(eqx.Module):
    """What :func:`jfm.sample_ode` returns: samples, solver statistics and the status.

    Counters are scalars for ``batch="joint"`` (one solve for the whole batch) and arrays
    ``[B]`` for ``batch="vmap"`` (one solve per example); ``*b`` below is ``()`` or
    ``(B,)`` accordingly.

    Attributes:
        x1: ``[B, *event]`` the state at ``t1`` (same dtype as ``x0``). With
            ``throw=False`` and a failed solve it holds whatever the solver reached.
        nfe: ``*b`` int, evaluations of the per-example field per example: what that
            example's solve costs. It is computed from the solver's Butcher tableau and
            the step counts, not measured (see :func:`jfm.sample_ode`); ``-1`` for solvers
            whose count jfm cannot know (implicit and non-Runge-Kutta solvers).
        num_steps: ``*b`` int, steps attempted (accepted + rejected).
        num_accepted_steps: ``*b`` int.
        num_rejected_steps: ``*b`` int (always 0 for fixed steps).
        success: ``*b`` bool, ``True`` when diffrax reports success AND ``x1`` is finite
            (fixed-step solvers never detect inf/NaN themselves).
        result: diffrax's :class:`diffrax.RESULTS` code, batched like the counters.
        ts: ``[T]`` the ``save_at`` times, or ``None``.
        xs: ``[T, B, *event]`` (time-major in both batch modes) the states at ``ts``, or
            ``None``.
    """

    x1: Float[Array, " batch *event"]
    nfe: Int[Array, "*b"]
    num_steps: Int[Array, "*b"]
    num_accepted_steps: Int[Array, "*b"]
    num_rejected_steps: Int[Array, "*b"]
    success: Bool[Array, "*b"]
    result: dfx.RESULTS
    ts: Float[Array, " T"] | None = None
    xs: Float[Array, " T batch *event"] | None = None


def _check_save_at(save_at, t0, t1, dtype):
    """Check ``save_at`` (``None`` or ``[T]`` times, monotone in ``t0 -> t1``, within range)."""
    if save_at is None:
        return None
    save_at = check_array(save_at, "save_at", ndim=1)
    if save_at.shape[0] == 0:
        raise ValueError("`save_at` must hold at least one time; got an empty array.")
    save_at = save_at.astype(dtype)
    if is_concrete((save_at, t0, t1)):
        s, a, b = np.asarray(save_at), float(t0), float(t1)
        diffs = np.diff(s) * np.sign(b - a)
        if np.any(diffs <= 0):
            raise ValueError(
                "`save_at` must be strictly "
                f"{'increasing' if b > a else 'decreasing'} (the direction t0={a} -> "
                f"t1={b}); got save_at={s}."
            )
        if np.any(s < min(a, b)) or np.any(s > max(a, b)):
            raise ValueError(
                f"`save_at` must lie within [{min(a, b)}, {max(a, b)}] (between t0 and "
                f"t1); got save_at={s}."
            )
    return save_at


def sample_ode(
    field: VectorField,
    x0: Float[ArrayLike, "..."],
    *,
    solver: dfx.AbstractSolver,
    steps: int | None = None,
    rtol: RealScalarLike | None = None,
    atol: RealScalarLike | None = None,
    t0: RealScalarLike = 0.0,
    t1: RealScalarLike = 1.0,
    args: Args = None,
    save_at: Float[ArrayLike, "..."] | None = None,
    batch: str = "joint",
    dt0: RealScalarLike | None = None,
    max_steps: int = 4096,
    throw: bool = True,
    adjoint: dfx.AbstractAdjoint | None = None,
    jump_ts: Float[ArrayLike, " J"] | None = None,
) -> ODEResult:
    r"""Transport a batch of points along the ODE ``dx/dt = field(t, x, args)`` from t0 to t1.

    Solves :math:`\dot x = u(t, x)`, :math:`x(t_0) = x_0` with a diffrax solver for every
    example of the batch, e.g. noise at ``t0 = 0`` to samples at ``t1 = 1``, or data back
    to noise with ``t0 = 1, t1 = 0`` (``t0 > t1`` is supported).

    Checklist: order and adaptivity are the ``solver``'s (``steps=N``: fixed step
    ``dt = (t1 - t0) / N``; ``rtol``/``atol``: adaptive PID control, which needs a solver
    with an embedded error estimate); deterministic; either time direction.

    Step control (exactly one, no defaults: the accuracy/cost choice is the user's):

    - ``steps=N``: :class:`diffrax.ConstantStepSize` with ``dt = (t1 - t0) / N``
      (exactly ``N`` steps; ``N <= max_steps``).
    - ``rtol=..., atol=...``: :class:`diffrax.PIDController` (I-control, RMS error norm
      of ``y_error / (atol + rtol |y|)``). With ``dt0=None`` the first step comes from
      diffrax's Hairer-Wanner heuristic (computed here by the controller's ``init`` on a
      bare :class:`diffrax.ODETerm`: inside ``diffeqsolve`` the term is wrapped and
      diffrax 0.7.2 would silently start at ``|dt| = 0.01``); it costs 2 evaluations.

    Batching:

    - ``batch="joint"``: ONE ``diffeqsolve`` of the whole batch with the vector field
      ``jax.vmap(field, in_axes=(None, 0, None))``. All examples share the step sizes,
      chosen from the error norm over the whole batch; each step is one batched field
      call (one model forward on the whole batch): the fastest on accelerators, but an
      adaptive solve takes the steps the hardest example needs for every example.
    - ``batch="vmap"``: ``jax.vmap`` of one ``diffeqsolve`` per example: each example
      gets its own step sizes and counters (an easy example is not held to the hardest
      one's accuracy). But ``vmap`` of a ``while_loop`` runs until the slowest example
      is done and evaluates the field on the whole batch at every iteration (finished
      examples are masked out), so the compute is about ``B x`` the evaluations of the
      slowest example, however cheap the others are; the per-example ``nfe`` reports
      what each example would cost alone. Use it for per-example statistics or when
      examples differ wildly in difficulty; prefer ``"joint"`` for throughput.

    Cost (``ODEResult.nfe``, per example, exact for :class:`diffrax.Euler` and the
    explicit Runge-Kutta solvers): with ``s`` the number of stages of the tableau
    (Euler: 1), ``n`` the steps attempted (accepted + rejected) and ``r0`` the rejected
    attempts before the first accepted step,
    ``nfe = s n`` (non-FSAL) or ``(s - 1) n + 1 + r0`` (FSAL: the last stage of an
    accepted step is the first of the next; each retry before the first accepted step
    re-evaluates the first stage), plus 2 for the initial step when ``dt0=None`` in
    adaptive mode. Computed from diffrax's counters (``r0`` by a thin wrapper around the
    PID controller), without host callbacks; checked against counted calls in the tests.

    Failure: the solve runs with diffrax's ``throw=False``. With ``throw=True`` (default)
    an error is raised (``eqx.error_if``, at run time, also under ``jax.jit``) when
    ``max_steps`` is reached before ``t1``, when diffrax reports another failure, or when
    ``x1`` has inf/NaN. With ``throw=False`` nothing is raised: check ``success`` and
    ``result``.

    Compilation: the solve is wrapped in :func:`equinox.filter_jit`. Arrays (``x0``,
    ``save_at``, arrays in ``args`` and arrays inside an ``eqx.Module`` field, e.g. model
    parameters) and the numbers ``t0``, ``t1``, ``steps``, ``rtol``, ``atol``, ``dt0``
    (cast to arrays of ``x0``'s dtype) are traced; everything else (plain functions, the
    solver, ``batch``, ``max_steps``, ``throw``, whether ``dt0``/``save_at`` are given)
    is static. A second call with the same shapes and static values does not recompile; a
    new function object (e.g. a fresh ``lambda``) does. The field and ``args`` are
    handed to diffrax as its ``args`` (not closed over), so every diffrax adjoint sees
    their arrays.

    Args:
        field: per-example vector field ``field(t, x, args) -> dx/dt`` with ``x`` of shape
            ``event`` and ``t`` a scalar; a function or a callable ``eqx.Module``.
        x0: ``[B, *event]`` initial points at ``t0``. Its floating dtype sets the dtype of
            times, tolerances and outputs.
        solver: a diffrax solver instance, e.g. ``dfx.Tsit5()``.
        steps: number of fixed steps (``1 <= steps <= max_steps``).
        rtol, atol: tolerances of the adaptive controller (both, positive).
        t0, t1: start and end times (``t0 != t1``; ``t0 > t1`` integrates backwards).
        args: conditioning passed to ``field`` unchanged (a pytree).
        save_at: ``[T]`` times, strictly monotone in the direction ``t0 -> t1`` and within
            ``[min(t0, t1), max(t0, t1)]``, at which to also return the states.
        batch: ``"joint"`` or ``"vmap"`` (see above).
        dt0: adaptive mode only: the first step, signed like ``t1 - t0``; ``None`` lets
            the heuristic pick it.
        max_steps: upper bound on the steps attempted (static; sets the loop bound).
        throw: raise on failure (see above) or return the status.
        adjoint: diffrax adjoint for gradients (default
            ``dfx.RecursiveCheckpointAdjoint()``; ``jax.jvp`` through the solve needs
            ``dfx.ForwardMode()``).
        jump_ts: adaptive mode only: ``[J]`` times where the field is discontinuous in
            ``t`` (e.g. the edges of a guidance interval), passed to
            :class:`diffrax.PIDController` so that steps end exactly there instead of
            being rejected repeatedly across the jump. ``None`` (default) takes
            ``field.jump_ts`` when the field has that attribute (e.g.
            :func:`jfm.classifier_free_guidance` with an ``interval``), else none. After a
            jump an FSAL solver re-evaluates its first stage (counted in ``nfe``).
            Ignored with ``steps=N``.

    Returns:
        An :class:`jfm.ODEResult`.

    Raises:
        TypeError: ``solver`` not a diffrax solver, ``field`` not callable, non-array or
            non-floating ``x0``, non-integer ``steps``/``max_steps``.
        ValueError: neither or both of ``steps`` and ``rtol``/``atol``; ``steps <= 0``;
            adaptive stepping with a solver without error estimate (e.g. ``dfx.Euler``);
            unknown ``batch``; ``x0`` without a batch axis; bad ``save_at``; ``t0 == t1``.

    Examples:
        >>> import diffrax as dfx, jax.numpy as jnp, jfm
        >>> field = lambda t, x, args: -x
        >>> sol = jfm.sample_ode(field, jnp.ones((3, 2)), solver=dfx.Heun(), steps=4)
        >>> sol.x1.shape, int(sol.nfe), int(sol.num_steps)
        ((3, 2), 8, 4)
    """
    # -- argument checks (Python, at trace time) ------------------------------------------
    if not isinstance(solver, dfx.AbstractSolver):
        raise TypeError(
            f"`solver` must be a diffrax solver instance, e.g. solver=dfx.Tsit5(); got "
            f"{solver!r} ({type(solver).__name__})."
        )
    if not callable(field):
        raise TypeError(
            f"`field` must be callable as field(t, x, args) -> dx/dt; got {type(field)}."
        )
    check_name(batch, "batch", _BATCH_MODES)
    x0 = check_array(x0, "x0")
    if x0.ndim < 1:
        raise ValueError(
            f"`x0` must have a batch axis: shape [B, *event]; got shape {x0.shape}. For a "
            "single example pass x0[None]."
        )
    dtype = x0.dtype
    t0 = _check_time(t0, "t0", dtype)
    t1 = _check_time(t1, "t1", dtype)
    if is_concrete((t0, t1)) and float(t0) == float(t1):
        raise ValueError(f"`t0` and `t1` must differ; got t0=t1={float(t0)}.")
    if not isinstance(throw, bool):
        raise TypeError(f"`throw` must be a bool; got {throw!r}.")
    max_steps = _check_int(max_steps, "max_steps", 1)
    if adjoint is None:
        adjoint = dfx.RecursiveCheckpointAdjoint()
    elif not isinstance(adjoint, dfx.AbstractAdjoint):
        raise TypeError(f"`adjoint` must be a diffrax adjoint or None; got {type(adjoint)}.")

    steps, rtol, atol, dt0, adaptive = _check_step_control(
        solver, steps, rtol, atol, dt0, max_steps, t0, t1, dtype
    )

    if jump_ts is None:
        jump_ts = getattr(field, "jump_ts", None)
    if jump_ts is not None:
        jump_ts = check_array(jump_ts, "jump_ts", ndim=1).astype(dtype)
        if not adaptive or jump_ts.shape[0] == 0:
            jump_ts = None

    save_at = _check_save_at(save_at, t0, t1, dtype)

    messages = (
        # Static strings (part of the compiled function): no traced values in them.
        f"jfm.sample_ode: max_steps={max_steps} reached before t1; raise max_steps or "
        "loosen rtol/atol (or pass throw=False to inspect the partial result).",
        "jfm.sample_ode: the diffrax solve failed (see ODEResult.result with throw=False).",
        "jfm.sample_ode: the solution has non-finite values (inf/NaN) at the end: the field "
        "blows up, or the fixed step is too large for it; use more steps or an adaptive "
        "solver, or check the field (pass throw=False to inspect).",
    )
    steps_arr = None if steps is None else jnp.asarray(steps, dtype)
    return _sample_ode(
        field,
        x0,
        t0,
        t1,
        args,
        save_at,
        steps_arr,
        rtol,
        atol,
        dt0,
        solver=solver,
        adaptive=adaptive,
        batch=batch,
        max_steps=max_steps,
        throw=throw,
        adjoint=adjoint,
        messages=messages,
        jump_ts=jump_ts,
    )


def _per_example_vf(t, y, field_args):
    field, args = field_args
    return field(t, y, args)


def _joint_vf(t, y, field_args):
    field, args = field_args
    return jax.vmap(field, in_axes=(None, 0, None))(t, y, args)


def _solve_one(
    vf,
    y0,
    t0,
    t1,
    field_args,
    save_at,
    steps,
    rtol,
    atol,
    dt0,
    *,
    solver,
    adaptive,
    max_steps,
    adjoint,
):
    """Former name and argument order of :func:`jfm._solver_utils.solve_counted` (kept for
    modules that import it from here); returns ``(y1, ys, stats, result)``."""
    return solve_counted(
        vf,
        y0,
        t0,
        t1,
        field_args,
        steps,
        rtol,
        atol,
        dt0,
        solver=solver,
        adaptive=adaptive,
        max_steps=max_steps,
        adjoint=adjoint,
        save_at=save_at,
    )


@eqx.filter_jit
def _sample_ode(
    field,
    x0,
    t0,
    t1,
    args,
    save_at,
    steps,
    rtol,
    atol,
    dt0,
    *,
    solver,
    adaptive,
    batch,
    max_steps,
    throw,
    adjoint,
    messages,
    jump_ts=None,
):
    common = dict(
        solver=solver,
        adaptive=adaptive,
        max_steps=max_steps,
        adjoint=adjoint,
        save_at=save_at,
        jump_ts=jump_ts,
    )
    rest = (t0, t1, (field, args), steps, rtol, atol, dt0)
    if batch == "joint":
        x1, xs, stats, result = solve_counted(_joint_vf, x0, *rest, **common)
        finite = jnp.all(jnp.isfinite(x1))
    else:
        x1, xs, stats, result = jax.vmap(
            lambda y0: solve_counted(_per_example_vf, y0, *rest, **common)
        )(x0)
        if xs is not None:
            xs = jnp.swapaxes(xs, 0, 1)  # [B, T, *event] -> [T, B, *event]
        finite = jnp.all(jnp.isfinite(x1), axis=tuple(range(1, x0.ndim)))
    x1, success = _check_result(x1, result, finite, throw, messages)
    return ODEResult(x1=x1, success=success, result=result, ts=save_at, xs=xs, **stats)


def _check_result(x1, result, finite, throw, messages):
    """``(x1, success)``; with ``throw`` raise (``eqx.error_if``) on a failed solve.

    ``messages = (max_steps reached, other diffrax failure, non-finite x1)``.
    """
    ok = result == dfx.RESULTS.successful
    if throw:
        msg_max, msg_other, msg_nonfinite = messages
        x1 = eqx.error_if(x1, result == dfx.RESULTS.max_steps_reached, msg_max)
        x1 = eqx.error_if(x1, ~ok, msg_other)
        x1 = eqx.error_if(x1, ~finite, msg_nonfinite)
    return x1, ok & finite


__all__ = ["ODEResult", "sample_ode"]
