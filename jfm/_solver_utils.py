"""Solver utilities shared by :func:`jfm.sample_ode` and :func:`jfm.log_prob`.

Argument checks for times, tolerances and step control; the exact NFE count from a
solver's Butcher tableau (with the controller wrapper that counts rejections before the
first accepted step); and :func:`solve_counted`, the one ``diffrax.diffeqsolve`` call both
samplers make (initial-step heuristic, step control, NFE).
"""

import numbers

import diffrax as dfx
import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np

from ._checks import is_concrete

#: Field evaluations spent by diffrax's initial-step heuristic (Hairer, Norsett & Wanner,
#: Sec. II.4): ``f(t0, y0)`` and ``f(t0 + h0, y0 + h0 f(t0, y0))``.
_INITIAL_STEP_NFE = 2


class _FirstRejections(dfx.AbstractAdaptiveStepSizeController):
    """Wraps an adaptive controller to count rejected steps before the first accepted one.

    FSAL solvers re-evaluate their first stage on every attempt until one step has been
    accepted (diffrax keeps the solver state of the last accepted step), so these
    rejections cost one more evaluation each. diffrax updates the controller state on
    every attempt (accepted or not), which is why the count lives here.
    """

    controller: dfx.AbstractAdaptiveStepSizeController

    @property
    def rtol(self):
        return self.controller.rtol

    @property
    def atol(self):
        return self.controller.atol

    @property
    def norm(self):
        return self.controller.norm

    def wrap(self, direction):
        return _FirstRejections(self.controller.wrap(direction))

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        tnext, state = self.controller.init(terms, t0, t1, y0, dt0, args, func, error_order)
        zero = jnp.array(0, dtype=jnp.int32)
        return tnext, (state, jnp.array(False), zero, zero, jnp.array(False))

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, state):
        inner, accepted_any, early_rejections, jump_evals, after_jump = state
        keep, tprev, tnext, made_jump, inner, result = self.controller.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, inner
        )
        keep = jnp.asarray(keep)
        early_rejections = early_rejections + jnp.where(keep | accepted_any, 0, 1).astype(jnp.int32)
        accepted_any = accepted_any | keep
        # An attempt that starts at a jump time (``jump_ts``) re-evaluates the first stage
        # of an FSAL solver; diffrax keeps its made_jump flag until a step is accepted.
        jump_evals = jump_evals + jnp.where(after_jump, 1, 0).astype(jnp.int32)
        after_jump = jnp.where(keep, jnp.asarray(made_jump), after_jump)
        state = (inner, accepted_any, early_rejections, jump_evals, after_jump)
        return keep, tprev, tnext, made_jump, state, result


def _stage_counts(solver: dfx.AbstractSolver) -> tuple[int, bool] | None:
    """``(evaluations per step, FSAL)`` for solvers whose cost is known, else ``None``."""
    if isinstance(solver, dfx.Euler):
        return 1, False
    if isinstance(solver, dfx.AbstractERK) and isinstance(solver.tableau, dfx.ButcherTableau):
        return int(solver.tableau.num_stages), bool(solver.tableau.fsal)
    if isinstance(solver, dfx.AbstractSRK):  # SDE solvers (jfm.sample_sde): one drift per stage
        return len(solver.tableau.b_sol), False
    return None


def _count_nfe(solver, num_steps, early_rejections, init_nfe):
    """Field evaluations of one diffeqsolve (see :func:`sample_ode`, "Cost")."""
    counts = _stage_counts(solver)
    if counts is None:
        return jnp.full_like(num_steps, -1)
    stages, fsal = counts
    if fsal:
        # First attempt (and every retry before the first accepted step) evaluates all
        # stages; later steps reuse the last stage of the previous accepted step.
        body = (stages - 1) * num_steps + 1 + early_rejections
    else:
        body = stages * num_steps
    return jnp.where(num_steps > 0, body, 0) + init_nfe


def _check_time(t, name, dtype):
    if isinstance(t, bool) or not isinstance(t, (numbers.Real, np.ndarray, jax.Array)):
        raise TypeError(f"`{name}` must be a real scalar (float or 0-d array); got {type(t)}.")
    t = jnp.asarray(t)
    if t.shape != ():
        raise ValueError(f"`{name}` must be a scalar (shape ()); got shape {t.shape}.")
    t = t.astype(dtype)
    if is_concrete(t) and not np.isfinite(float(t)):
        raise ValueError(f"`{name}` must be finite; got {name}={float(t)}.")
    return t


def _check_tol(v, name, dtype):
    if isinstance(v, bool) or not isinstance(v, (numbers.Real, np.ndarray, jax.Array)):
        raise TypeError(f"`{name}` must be a positive real scalar; got {type(v)}.")
    v = jnp.asarray(v)
    if v.shape != ():
        raise ValueError(f"`{name}` must be a scalar; got shape {v.shape}.")
    if is_concrete(v) and not float(v) > 0:
        raise ValueError(f"`{name}` must be positive; got {name}={float(v)}.")
    return v.astype(dtype)


def _check_int(v, name, lo):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"`{name}` must be a Python int; got {v!r} ({type(v).__name__}).")
    if v < lo:
        raise ValueError(f"`{name}` must be >= {lo}; got {name}={v}.")
    return int(v)


def _check_step_control(
    solver, steps, rtol, atol, dt0, max_steps, t_start, t_end, dtype, adaptive_hint=None
):
    """Validate the choice between fixed (``steps``) and adaptive (``rtol``/``atol``) steps.

    Shared by :func:`jfm.sample_ode`, :func:`jfm.log_prob` and :func:`jfm.sample_sde`;
    ``t_start -> t_end`` is the direction of integration (``dt0`` must carry its sign).
    ``adaptive_hint`` (SDEs): ``None`` for the ODE rule (an ``AbstractAdaptiveSolver``), or
    ``(can_adapt, message)`` from the caller. Returns ``(steps, rtol, atol, dt0, adaptive)``
    with tolerances and ``dt0`` cast to ``dtype``.
    """
    how = (
        "pass either steps=N (fixed step) or both rtol=... and atol=... (adaptive step); "
        f"got steps={steps!r}, rtol={rtol!r}, atol={atol!r}"
    )
    if steps is not None:
        if rtol is not None or atol is not None:
            raise ValueError(f"`steps` and `rtol`/`atol` exclude each other: {how}.")
        steps = _check_int(steps, "steps", 1)
        if steps > max_steps:
            raise ValueError(
                f"`steps`={steps} exceeds `max_steps`={max_steps}; pass max_steps>={steps}."
            )
        if dt0 is not None:
            raise ValueError(
                f"`dt0` is for adaptive stepping only; with steps={steps} the step is "
                f"(t1 - t0) / steps. Got dt0={dt0!r}."
            )
        return steps, rtol, atol, dt0, False
    if rtol is None or atol is None:
        raise ValueError(f"No step control chosen: {how}.")
    if adaptive_hint is not None:
        if not adaptive_hint[0]:
            raise ValueError(adaptive_hint[1])
    elif not isinstance(solver, dfx.AbstractAdaptiveSolver):
        raise ValueError(
            f"`solver`={type(solver).__name__}() has no error estimate, so it cannot "
            "take adaptive steps (rtol/atol); pass steps=N, or an adaptive solver such "
            "as dfx.Heun(), dfx.Tsit5() or dfx.Dopri5()."
        )
    rtol = _check_tol(rtol, "rtol", dtype)
    atol = _check_tol(atol, "atol", dtype)
    if dt0 is not None:
        dt0 = _check_time(dt0, "dt0", dtype)
        if is_concrete((dt0, t_start, t_end)) and not float(dt0) * float(t_end - t_start) > 0:
            raise ValueError(
                f"`dt0` must be nonzero with the sign of the integration direction "
                f"({float(t_start)} -> {float(t_end)}); got dt0={float(dt0)}."
            )
    return steps, rtol, atol, dt0, True


def solve_counted(
    vf,
    y0,
    t_start,
    t_end,
    field_args,
    steps,
    rtol,
    atol,
    dt0,
    *,
    solver,
    adaptive,
    max_steps,
    adjoint,
    save_at=None,
    jump_ts=None,
):
    """One diffeqsolve of ``dy/dt = vf(t, y, field_args)`` from ``t_start`` to ``t_end``.

    Either time direction. Adaptive (``adaptive=True``): PID control with ``rtol``/``atol``
    and, for ``dt0=None``, diffrax's initial-step heuristic run by the controller's
    ``init`` on a bare :class:`diffrax.ODETerm` in the forward time
    ``s = direction * t`` (inside ``diffeqsolve`` the term is wrapped and diffrax 0.7.2
    would skip the heuristic, starting at ``|dt| = 0.01``); it costs
    ``_INITIAL_STEP_NFE`` evaluations. Fixed: ``steps`` steps of ``(t_end - t_start) /
    steps``. The field travels in diffrax's ``args`` (not in a closure), so every adjoint
    sees its arrays. Without ``save_at`` only ``SaveAt(t1=True)`` is requested (all that
    :class:`diffrax.BacksolveAdjoint` supports). ``jump_ts`` (adaptive only): times where
    the field jumps, handed to the PID controller so that steps end there.

    Returns:
        ``(y(t_end), ys_at_save_at or None, stats, result)`` with ``stats`` a dict of
        ``nfe`` (exact, :func:`count_nfe`), ``num_steps``, ``num_accepted_steps`` and
        ``num_rejected_steps``.
    """
    init_nfe = 0
    if adaptive:
        pid = dfx.PIDController(rtol=rtol, atol=atol)
        if dt0 is None:
            direction = jnp.where(t_end > t_start, 1, -1).astype(t_start.dtype)
            fwd = dfx.ODETerm(lambda s, y, a: a[0] * vf(a[0] * s, y, a[1]))
            tnext, _ = pid.init(
                fwd,
                direction * t_start,
                direction * t_end,
                y0,
                None,
                (direction, field_args),
                solver.func,
                solver.error_order(fwd),
            )
            dt0 = direction * lax.stop_gradient(tnext - direction * t_start)
            init_nfe = _INITIAL_STEP_NFE
        if jump_ts is not None:
            pid = dfx.PIDController(rtol=rtol, atol=atol, jump_ts=jump_ts)
        controller = _FirstRejections(pid)
    else:
        controller = dfx.ConstantStepSize()
        dt0 = (t_end - t_start) / steps
    if save_at is None:
        saveat = dfx.SaveAt(t1=True, controller_state=adaptive)
    else:
        subs = [dfx.SubSaveAt(t1=True), dfx.SubSaveAt(ts=save_at)]
        saveat = dfx.SaveAt(subs=subs, controller_state=adaptive)
    sol = dfx.diffeqsolve(
        dfx.ODETerm(vf),  # bare ODETerm (see the note on dt0 above)
        solver,
        t_start,
        t_end,
        dt0,
        y0,
        field_args,
        saveat=saveat,
        stepsize_controller=controller,
        max_steps=max_steps,
        adjoint=adjoint,
        throw=False,
    )
    num_steps = jnp.asarray(sol.stats["num_steps"])
    # First-stage re-evaluations of FSAL solvers: retries before the first accepted step
    # and attempts starting at a jump time.
    early = (
        sol.controller_state[2] + sol.controller_state[3]
        if adaptive
        else jnp.zeros((), num_steps.dtype)
    )
    stats = dict(
        nfe=_count_nfe(solver, num_steps, early.astype(num_steps.dtype), init_nfe),
        num_steps=num_steps,
        num_accepted_steps=jnp.asarray(sol.stats["num_accepted_steps"]),
        num_rejected_steps=jnp.asarray(sol.stats["num_rejected_steps"]),
    )
    if save_at is None:
        return sol.ys[0], None, stats, sol.result
    return sol.ys[0][0], sol.ys[1], stats, sol.result
