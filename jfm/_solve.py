"""Sampling by ODE integration with diffrax: fixed and adaptive step, joint or vmapped batch."""

import numbers

import diffrax as dfx
import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from ._custom_types import Args, RealScalarLike, VectorField
from ._misc import check_array, check_name, is_concrete

_BATCH_MODES: tuple[str, ...] = ("joint", "vmap")

#: Field evaluations spent by diffrax's initial-step heuristic (Hairer, Norsett & Wanner,
#: Sec. II.4): ``f(t0, y0)`` and ``f(t0 + h0, y0 + h0 f(t0, y0))``.
_INITIAL_STEP_NFE = 2


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


def _check_step_control(solver, steps, rtol, atol, dt0, max_steps, t_start, t_end, dtype):
    """Validate the choice between fixed (``steps``) and adaptive (``rtol``/``atol``) steps.

    Shared by :func:`jfm.sample_ode` and :func:`jfm.log_prob`; ``t_start -> t_end`` is the
    direction of integration (``dt0`` must carry its sign). Returns
    ``(steps, rtol, atol, dt0, adaptive)`` with tolerances and ``dt0`` cast to ``dtype``.
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
    if not isinstance(solver, dfx.AbstractAdaptiveSolver):
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

    if save_at is not None:
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
    jump_ts=None,
):
    """One diffeqsolve of ``dy/dt = vf(t, y, field_args)``; returns (y1, ys, stats, result).

    The field travels in diffrax's ``args`` (not in a closure), so its arrays are seen by
    every adjoint.
    """
    init_nfe = 0
    if adaptive:
        pid = dfx.PIDController(rtol=rtol, atol=atol)
        if dt0 is None:
            # diffrax's initial-step heuristic, on a bare ODETerm in the forward time
            # s = direction * t (diffeqsolve would hand it a wrapped term and skip it).
            direction = jnp.where(t1 > t0, 1, -1).astype(t0.dtype)
            fwd = dfx.ODETerm(lambda s, y, a: a[0] * vf(a[0] * s, y, a[1]))
            tnext, _ = pid.init(
                fwd,
                direction * t0,
                direction * t1,
                y0,
                None,
                (direction, field_args),
                solver.func,
                solver.error_order(fwd),
            )
            dt0 = direction * lax.stop_gradient(tnext - direction * t0)
            init_nfe = _INITIAL_STEP_NFE
        if jump_ts is not None:
            pid = dfx.PIDController(rtol=rtol, atol=atol, jump_ts=jump_ts)
        controller = _FirstRejections(pid)
    else:
        controller = dfx.ConstantStepSize()
        dt0 = (t1 - t0) / steps
    subs = [dfx.SubSaveAt(t1=True)]
    if save_at is not None:
        subs.append(dfx.SubSaveAt(ts=save_at))
    sol = dfx.diffeqsolve(
        dfx.ODETerm(vf),  # bare ODETerm (see the note on dt0 above)
        solver,
        t0,
        t1,
        dt0,
        y0,
        field_args,
        saveat=dfx.SaveAt(subs=subs, controller_state=adaptive),
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
    nfe = _count_nfe(solver, num_steps, early.astype(num_steps.dtype), init_nfe)
    stats = dict(
        nfe=nfe,
        num_steps=num_steps,
        num_accepted_steps=jnp.asarray(sol.stats["num_accepted_steps"]),
        num_rejected_steps=jnp.asarray(sol.stats["num_rejected_steps"]),
    )
    ys = sol.ys[1] if save_at is not None else None
    return sol.ys[0][0], ys, stats, sol.result


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
        solver=solver, adaptive=adaptive, max_steps=max_steps, adjoint=adjoint, jump_ts=jump_ts
    )
    rest = (t0, t1, (field, args), save_at, steps, rtol, atol, dt0)
    if batch == "joint":
        x1, xs, stats, result = _solve_one(_joint_vf, x0, *rest, **common)
        finite = jnp.all(jnp.isfinite(x1))
    else:
        x1, xs, stats, result = jax.vmap(
            lambda y0: _solve_one(_per_example_vf, y0, *rest, **common)
        )(x0)
        if xs is not None:
            xs = jnp.swapaxes(xs, 0, 1)  # [B, T, *event] -> [T, B, *event]
        finite = jnp.all(jnp.isfinite(x1), axis=tuple(range(1, x0.ndim)))
    ok = result == dfx.RESULTS.successful
    if throw:
        msg_max, msg_other, msg_nonfinite = messages
        x1 = eqx.error_if(x1, result == dfx.RESULTS.max_steps_reached, msg_max)
        x1 = eqx.error_if(x1, ~ok, msg_other)
        x1 = eqx.error_if(x1, ~finite, msg_nonfinite)
    return ODEResult(x1=x1, success=ok & finite, result=result, ts=save_at, xs=xs, **stats)


__all__ = ["ODEResult", "sample_ode"]
