"""The integrate core: every jfm sampler goes through it.

It is the one place that holds the argument checks shared by the samplers, the step
control (the shortcuts ``steps=``, ``ts=``, ``rtol``/``atol`` or a diffrax controller),
the joint-or-vmap batching, the exact NFE accounting and the failure reporting. A sampler
states its vector field (and, for an SDE, its noise), and calls :func:`integrate`.
"""

import abc
from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from .._checks import check_array, check_bool, check_int, check_name, check_scalar, is_concrete

BATCH_MODES: tuple[str, ...] = ("joint", "vmap")

#: Field evaluations spent by diffrax's initial-step heuristic (Hairer, Norsett & Wanner,
#: Sec. II.4): ``f(t0, y0)`` and ``f(t0 + h0, y0 + h0 f(t0, y0))``.
INITIAL_STEP_NFE = 2


class Solution(eqx.Module):
    """What every jfm sampler returns: the final state, solver statistics and status.

    Counters are scalars for ``batch="joint"`` (one solve of the whole batch) and arrays
    ``[B]`` for ``batch="vmap"`` (one solve per example); ``*b`` below is ``()`` or
    ``(B,)`` accordingly.

    Attributes:
        x1: ``[B, *event]`` the state where the integration ended: the samples at ``t1``
            for the samplers; for :func:`jfm.log_prob`, which integrates data back to the
            source, the source-end points ``x(t0)``. With ``throw=False`` and a failed
            solve it holds whatever the solver reached.
        nfe: ``*b`` int, evaluations of the per-example field per example (what that
            example's solve costs), exact for the explicit Runge-Kutta solvers, Euler and
            jfm's own solvers; ``-1`` where jfm cannot know it (implicit solvers).
        num_steps: ``*b`` int, steps attempted (accepted + rejected).
        num_accepted_steps: ``*b`` int.
        num_rejected_steps: ``*b`` int (0 for fixed steps).
        success: ``*b`` bool: diffrax reports success AND the result is finite.
        result: diffrax's :class:`diffrax.RESULTS` code, batched like the counters.
        ts: the saved times (``[T]``), or ``None`` without ``saveat``.
        xs: ``[T, B, *event]`` (time-major in both batch modes) the states at ``ts``, or
            ``None``.
        log_prob: ``[B]`` log-densities (nats), where the sampler computes them
            (:func:`jfm.log_prob`), else ``None``.
        stderr: ``[B]`` Hutchinson standard errors of ``log_prob`` (with 2 or more
            probes), else ``None``.
    """

    x1: Float[Array, " batch *event"]
    nfe: Int[Array, "*b"]
    num_steps: Int[Array, "*b"]
    num_accepted_steps: Int[Array, "*b"]
    num_rejected_steps: Int[Array, "*b"]
    success: Bool[Array, "*b"]
    result: dfx.RESULTS
    ts: Array | None = None
    xs: Array | None = None
    log_prob: Float[Array, " batch"] | None = None
    stderr: Float[Array, " batch"] | None = None


class AbstractCountedSolver(dfx.AbstractSolver):
    """A jfm solver that states its cost: ``evaluations_per_step`` field calls per step.

    jfm's own solvers (predictor-corrector, few-NFE solvers) subclass this so that the
    core counts their NFE exactly, as it does for diffrax's Runge-Kutta tableaus.
    """

    @property
    @abc.abstractmethod
    def evaluations_per_step(self) -> int:
        """Evaluations of the per-example field per step."""


# -- NFE accounting -------------------------------------------------------------------------


class _FirstRejections(dfx.AbstractAdaptiveStepSizeController):
    """Wraps an adaptive controller to count first-stage re-evaluations of FSAL solvers.

    An FSAL solver re-evaluates its first stage on every attempt until one step has been
    accepted (diffrax keeps the solver state of the last accepted step), and on each
    attempt that starts at a jump time. diffrax updates the controller state on every
    attempt, accepted or not, which is why the count lives here.
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
        return tnext, (state, jnp.array(False), zero, jnp.array(False))

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, state):
        inner, accepted_any, extra, after_jump = state
        keep, tprev, tnext, made_jump, inner, result = self.controller.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, inner
        )
        keep = jnp.asarray(keep)
        # Before the first accepted step, and on an attempt starting at a jump time
        # (diffrax keeps its made_jump flag until a step is accepted), the first stage
        # is evaluated again.
        again = ~(keep | accepted_any) | after_jump
        extra = extra + again.astype(jnp.int32)
        accepted_any = accepted_any | keep
        after_jump = jnp.where(keep, jnp.asarray(made_jump), after_jump)
        return keep, tprev, tnext, made_jump, (inner, accepted_any, extra, after_jump), result


def stage_counts(solver: dfx.AbstractSolver) -> tuple[int, bool] | None:
    """``(evaluations per step, FSAL)`` for solvers whose cost is known, else ``None``."""
    if isinstance(solver, AbstractCountedSolver):
        return solver.evaluations_per_step, False
    if isinstance(solver, dfx.Euler):
        return 1, False
    if isinstance(solver, dfx.AbstractERK) and isinstance(solver.tableau, dfx.ButcherTableau):
        return int(solver.tableau.num_stages), bool(solver.tableau.fsal)
    if isinstance(solver, dfx.AbstractSRK):  # one drift evaluation per stage
        return len(solver.tableau.b_sol), False
    return None


def count_nfe(solver, num_steps, extra, init_nfe):
    """Field evaluations of one solve: ``s n`` (non-FSAL) or ``(s - 1) n + 1 + extra``
    (FSAL), plus ``init_nfe`` for the initial-step heuristic."""
    counts = stage_counts(solver)
    if counts is None:
        return jnp.full_like(num_steps, -1)
    stages, fsal = counts
    body = (stages - 1) * num_steps + 1 + extra if fsal else stages * num_steps
    return jnp.where(num_steps > 0, body, 0) + init_nfe


# -- argument checks ------------------------------------------------------------------------


def check_solver(solver, example: str = "dfx.Tsit5()"):
    if not isinstance(solver, dfx.AbstractSolver):
        raise TypeError(
            f"`solver` must be a diffrax solver instance, e.g. solver={example}; got "
            f"{solver!r} ({type(solver).__name__})."
        )
    return solver


def check_adjoint(adjoint):
    if adjoint is None:
        return dfx.RecursiveCheckpointAdjoint()
    if not isinstance(adjoint, dfx.AbstractAdjoint):
        raise TypeError(f"`adjoint` must be a diffrax adjoint or None; got {type(adjoint)}.")
    return adjoint


def check_common(batch, throw, max_steps, adjoint):
    """``batch``, ``throw``, ``max_steps`` and ``adjoint``, shared by every sampler."""
    check_name(batch, "batch", BATCH_MODES)
    check_bool(throw, "throw")
    return check_int(max_steps, "max_steps", 1), check_adjoint(adjoint)


def check_grid(ts, name: str = "ts"):
    """A time grid ``[N + 1]``, ``N >= 1``, strictly monotone (checked when concrete)."""
    ts = check_array(ts, name, ndim=1)
    if ts.shape[0] < 2:
        raise ValueError(f"`{name}` must hold at least 2 times (one step); got shape {ts.shape}.")
    if is_concrete(ts):
        d = np.diff(np.asarray(ts))
        if not (np.all(d > 0) or np.all(d < 0)) or not np.all(np.isfinite(np.asarray(ts))):
            raise ValueError(f"`{name}` must be finite and strictly monotone; got {name}={ts}.")
    return ts


def check_interval(t0, t1, ts, dtype, *, default=(0.0, 1.0), forward_only: bool = False):
    """The interval ``(t0, t1)``: from the arguments (default ``default``) or from ``ts``.

    With a grid ``ts``, ``t0``/``t1`` default to its ends and must agree with them when
    given. ``forward_only`` requires ``t0 < t1``.
    """
    if ts is not None:
        ts = check_grid(ts).astype(dtype)
        for name, given, end in (("t0", t0, ts[0]), ("t1", t1, ts[-1])):
            if given is not None:
                given = check_scalar(given, name, dtype)
                if is_concrete((given, end)) and float(given) != float(end):
                    raise ValueError(
                        f"`{name}`={float(given)} disagrees with the grid `ts`, which runs "
                        f"from {float(ts[0])} to {float(ts[-1])}; leave {name} out with ts=."
                    )
        t0, t1 = ts[0], ts[-1]
    else:
        t0 = check_scalar(default[0] if t0 is None else t0, "t0", dtype)
        t1 = check_scalar(default[1] if t1 is None else t1, "t1", dtype)
    if is_concrete((t0, t1)):
        if float(t0) == float(t1):
            raise ValueError(f"`t0` and `t1` must differ; got t0=t1={float(t0)}.")
        if forward_only and float(t0) > float(t1):
            raise ValueError(
                f"`t0` must be below `t1` (this sampler runs forward in jfm time, noise -> "
                f"data); got t0={float(t0)}, t1={float(t1)}."
            )
    return t0, t1, ts


class StepControl(eqx.Module):
    """A resolved step control: the diffrax controller, the first step, and how to count.

    ``heuristic``: run diffrax's initial-step heuristic (adaptive, ``dt0=None``);
    ``adaptive``: the controller is adaptive (its state carries the NFE counters).
    """

    controller: dfx.AbstractStepSizeController
    dt0: Array | None
    adaptive: bool = eqx.field(static=True)
    heuristic: bool = eqx.field(static=True)


def step_control(
    solver,
    *,
    steps,
    rtol,
    atol,
    ts,
    dt0,
    stepsize_controller,
    jump_ts,
    max_steps,
    t_start,
    t_end,
    dtype,
    can_adapt: bool | None = None,
    adapt_hint: str = "dfx.Heun(), dfx.Tsit5() or dfx.Dopri5()",
) -> StepControl:
    """Resolve exactly one of ``steps``, ``ts``, ``rtol``/``atol``, ``stepsize_controller``.

    ``t_start -> t_end`` is the direction of integration (``dt0`` carries its sign; a
    grid ``ts`` is given in that direction). ``can_adapt`` overrides the ODE rule (an
    ``AbstractAdaptiveSolver``) for SDE solvers.
    """
    given = {
        "steps": steps is not None,
        "ts": ts is not None,
        "rtol/atol": rtol is not None or atol is not None,
        "stepsize_controller": stepsize_controller is not None,
    }
    chosen = [k for k, v in given.items() if v]
    how = (
        "pass exactly one of steps=N (fixed step), ts=grid (fixed grid), rtol=... and "
        "atol=... (adaptive PID), or stepsize_controller=<a diffrax controller>"
    )
    if len(chosen) != 1:
        raise ValueError(
            f"{'No step control chosen' if not chosen else 'Step controls exclude each other'}"
            f": {how}; got {', '.join(chosen) or 'none'}."
        )
    if can_adapt is None:
        can_adapt = isinstance(solver, dfx.AbstractAdaptiveSolver)
    if dt0 is not None:
        dt0 = check_scalar(dt0, "dt0", dtype)
        if is_concrete((dt0, t_start, t_end)) and not float(dt0) * float(t_end - t_start) > 0:
            raise ValueError(
                f"`dt0` must be nonzero with the sign of the integration direction "
                f"({float(t_start)} -> {float(t_end)}); got dt0={float(dt0)}."
            )
    if jump_ts is not None:
        jump_ts = check_array(jump_ts, "jump_ts", ndim=1).astype(dtype)
        if jump_ts.shape[0] == 0:
            jump_ts = None

    def no_dt0(what):
        if dt0 is not None:
            raise ValueError(f"`dt0` is for adaptive stepping only; {what}. Got dt0={dt0}.")

    if steps is not None:
        steps = check_int(steps, "steps", 1)
        if steps > max_steps:
            raise ValueError(f"`steps`={steps} exceeds `max_steps`={max_steps}; raise max_steps.")
        no_dt0(f"with steps={steps} the step is (t1 - t0) / steps")
        h = (t_end - t_start) / jnp.asarray(steps, dtype)
        return StepControl(dfx.ConstantStepSize(), h, False, False)
    if ts is not None:
        if ts.shape[0] - 1 > max_steps:
            raise ValueError(
                f"`ts` has {ts.shape[0] - 1} steps, more than `max_steps`={max_steps}."
            )
        no_dt0("a grid ts= fixes every step")
        return StepControl(dfx.StepTo(ts), None, False, False)
    if stepsize_controller is not None:
        c = stepsize_controller
        if not isinstance(c, dfx.AbstractStepSizeController):
            raise TypeError(
                f"`stepsize_controller` must be a diffrax step-size controller, e.g. "
                f"dfx.PIDController(rtol=1e-5, atol=1e-5); got {type(c).__name__}."
            )
        if isinstance(c, dfx.AbstractAdaptiveStepSizeController):
            if not can_adapt:
                raise ValueError(_no_estimate(solver, adapt_hint))
            if jump_ts is not None:
                c = dfx.ClipStepSizeController(c, jump_ts=jump_ts)
            return StepControl(_FirstRejections(c), dt0, True, dt0 is None)
        if isinstance(c, dfx.ConstantStepSize) and dt0 is None:
            raise ValueError(
                "`dt0` is required with stepsize_controller=dfx.ConstantStepSize() (or pass "
                "steps=N instead)."
            )
        return StepControl(c, dt0, False, False)
    if rtol is None or atol is None:
        raise ValueError(f"Adaptive stepping needs both `rtol` and `atol`: {how}.")
    if not can_adapt:
        raise ValueError(_no_estimate(solver, adapt_hint))
    rtol = check_positive_tol(rtol, "rtol", dtype)
    atol = check_positive_tol(atol, "atol", dtype)
    c = dfx.PIDController(rtol=rtol, atol=atol)
    if jump_ts is not None:
        # Steps end exactly at the jump times instead of being rejected across them.
        c = dfx.ClipStepSizeController(c, jump_ts=jump_ts)
    return StepControl(_FirstRejections(c), dt0, True, dt0 is None)


def check_positive_tol(v, name, dtype):
    return check_scalar(v, name, dtype, lo=0.0, strict_lo=True)


def _no_estimate(solver, hint):
    return (
        f"`solver`={type(solver).__name__}() has no error estimate, so it cannot take "
        f"adaptive steps; pass steps=N or ts=..., or an adaptive solver such as {hint}."
    )


def saveat_subs(saveat, t_start, t_end, dtype):
    """``(SubSaveAt pytree or None, ts or None)`` from ``saveat``: times or a ``SaveAt``.

    An array is a set of times, strictly monotone from ``t_start`` to ``t_end``; a
    :class:`diffrax.SaveAt` is used as given (not ``dense``).
    """
    if saveat is None:
        return None, None
    if isinstance(saveat, dfx.SaveAt):
        if saveat.dense:
            raise ValueError("`saveat` with dense=True is not supported; save at times ts=.")
        return saveat.subs, None
    s = check_array(saveat, "saveat", ndim=1)
    if s.shape[0] == 0:
        raise ValueError("`saveat` must hold at least one time; got an empty array.")
    s = s.astype(dtype)
    if is_concrete((s, t_start, t_end)):
        v, a, b = np.asarray(s), float(t_start), float(t_end)
        if np.any(np.diff(v) * np.sign(b - a) <= 0):
            raise ValueError(
                f"`saveat` must be strictly {'increasing' if b > a else 'decreasing'} (the "
                f"direction of integration {a} -> {b}); got saveat={v}."
            )
        if np.any(v < min(a, b)) or np.any(v > max(a, b)):
            raise ValueError(f"`saveat` must lie within [{min(a, b)}, {max(a, b)}]; got {v}.")
    return dfx.SubSaveAt(ts=s), s


# -- one solve ----------------------------------------------------------------------------


class Noise(eqx.Module):
    """Additive diagonal noise ``g(t) dW`` for an SDE solve.

    ``diffusion(t, y, args)`` returns the diffrax control term's vector field (e.g.
    ``g(t) * IdentityLinearOperator``); ``brownian(t0, t1, y0, key)`` builds the Brownian
    motion for that solve (a tree, or an unsafe path for fixed steps).
    """

    diffusion: Callable
    brownian: Callable


def _solve(vf, y0, t_start, t_end, args, control, key, *, solver, noise, subs, max_steps, adjoint):
    """One ``diffeqsolve`` of ``dy = vf dt (+ noise)``; returns ``(y1, ts, ys, stats, result)``."""
    ode = dfx.ODETerm(vf)
    terms = ode
    if noise is not None:
        bm = noise.brownian(t_start, t_end, y0, key)
        terms = dfx.MultiTerm(ode, dfx.ControlTerm(noise.diffusion, bm))
    dt0, init_nfe = control.dt0, 0
    if control.heuristic:
        # diffrax's Hairer-Wanner heuristic, run by the controller's init on a bare
        # ODETerm of the drift in forward time s = direction * t: inside diffeqsolve the
        # term is wrapped and diffrax 0.7.2 would silently start at |dt| = 0.01.
        direction = jnp.where(t_end > t_start, 1, -1).astype(t_start.dtype)
        fwd = dfx.ODETerm(lambda s, y, a: direction * vf(direction * s, y, a))
        tnext, _ = control.controller.init(
            fwd,
            direction * t_start,
            direction * t_end,
            y0,
            None,
            args,
            solver.func,
            solver.error_order(terms),
        )
        dt0 = direction * lax.stop_gradient(tnext - direction * t_start)
        init_nfe = INITIAL_STEP_NFE
    if subs is None:
        # A single SubSaveAt: dfx.BacksolveAdjoint rejects SaveAt(subs=[...]).
        saveat = dfx.SaveAt(t1=True, controller_state=control.adaptive)
    else:
        saveat = dfx.SaveAt(subs=[dfx.SubSaveAt(t1=True), subs], controller_state=control.adaptive)
    sol = dfx.diffeqsolve(
        terms,
        solver,
        t_start,
        t_end,
        dt0,
        y0,
        args,
        saveat=saveat,
        stepsize_controller=control.controller,
        max_steps=max_steps,
        adjoint=adjoint,
        throw=False,
    )
    num_steps = jnp.asarray(sol.stats["num_steps"])
    extra = sol.controller_state[2] if control.adaptive else jnp.zeros((), jnp.int32)
    stats = dict(
        nfe=count_nfe(solver, num_steps, extra.astype(num_steps.dtype), init_nfe),
        num_steps=num_steps,
        num_accepted_steps=jnp.asarray(sol.stats["num_accepted_steps"]),
        num_rejected_steps=jnp.asarray(sol.stats["num_rejected_steps"]),
    )
    if subs is None:
        return sol.ys[0], None, None, stats, sol.result
    return sol.ys[0][0], sol.ts[1], sol.ys[1], stats, sol.result


def _joint_vf(t, y, field_args):
    field, args = field_args
    return jax.vmap(field, in_axes=(None, 0, None))(t, y, args)


def _joint_vf_each(t, y, field_args):
    # args = (shared, per-example): the second part is batched along its axis 0.
    field, args = field_args
    return jax.vmap(field, in_axes=(None, 0, (None, 0)))(t, y, args)


def _per_example_vf(t, y, field_args):
    field, args = field_args
    return field(t, y, args)


def integrate(
    field,
    x,
    t_start,
    t_end,
    args,
    control: StepControl,
    key=None,
    *,
    solver,
    batch: str,
    max_steps: int,
    adjoint,
    saveat=None,
    noise: Noise | None = None,
    each=None,
    joint_field=None,
):
    """Integrate the per-example ``field`` for the batch ``x [B, *event]``.

    ``batch="joint"``: ONE solve of the whole batch with ``jax.vmap(field)`` (or
    ``joint_field``, a field of the whole batch, when the sampler has one, e.g. for a
    batch-wide statistic); ``"vmap"``: ``jax.vmap`` of one solve per example (``key``
    split per example). ``each``: an optional pytree of per-example arrays (leading axis
    ``B``); the field is then called with ``(args, each_i)``. ``field`` and ``args``
    travel in diffrax's ``args`` (not closed over), so every adjoint sees their arrays.
    Returns ``(x1, ts, xs, stats, result)`` with ``xs`` time-major ``[T, B, *event]``.
    Call inside ``eqx.filter_jit``.
    """
    common = dict(solver=solver, noise=noise, subs=saveat, max_steps=max_steps, adjoint=adjoint)
    if batch == "joint":
        if joint_field is not None:
            vf, fa = _per_example_vf, (joint_field, args)
        elif each is None:
            vf, fa = _joint_vf, (field, args)
        else:
            vf, fa = _joint_vf_each, (field, (args, each))
        return _solve(vf, x, t_start, t_end, fa, control, key, **common)

    def one(xi, ki, ei):
        fa = (field, args if each is None else (args, ei))
        return _solve(_per_example_vf, xi, t_start, t_end, fa, control, ki, **common)

    keys = None if key is None else jr.split(key, x.shape[0])
    x1, ts, xs, stats, result = jax.vmap(one)(x, keys, each)
    swap = lambda a: jnp.swapaxes(a, 0, 1) if a.ndim >= 2 else a  # [B, T, ...] -> [T, B, ...]
    if xs is not None:
        xs, ts = jax.tree.map(swap, xs), jax.tree.map(swap, ts)
    return x1, ts, xs, stats, result


def finish(
    x1,
    result,
    finite,
    *,
    throw: bool,
    who: str,
    max_steps: int,
    end: str = "t1",
    nonfinite_hint: str = "",
):
    """``(x1, success)``; with ``throw``, raise (``eqx.error_if``, at run time) on failure.

    ``max_steps`` (static) is named in the message, so the user sees which bound was hit.
    """
    ok = result == dfx.RESULTS.successful
    if throw:
        # Static strings: part of the compiled function, no traced values in them.
        x1 = eqx.error_if(
            x1,
            result == dfx.RESULTS.max_steps_reached,
            f"{who}: max_steps={max_steps} reached before {end}; raise max_steps or loosen "
            "rtol/atol "
            "(or pass throw=False to inspect the partial result).",
        )
        x1 = eqx.error_if(
            x1, ~ok, f"{who}: the diffrax solve failed (see .result with throw=False)."
        )
        x1 = eqx.error_if(
            x1,
            ~finite,
            f"{who}: the result has non-finite values (inf/NaN): "
            + (nonfinite_hint or "the field blows up, or the step is too large for it")
            + "; pass throw=False to inspect.",
        )
    return x1, ok & finite


def finite_per_batch(x, batch):
    """All-finite flag, one per solve: a scalar (joint) or ``[B]`` (vmap)."""
    if batch == "joint":
        return jnp.all(jnp.isfinite(x))
    return jnp.all(jnp.isfinite(x).reshape(x.shape[0], -1), axis=1)


def solution(x1, success, result, stats, ts=None, xs=None, **extra) -> Solution:
    return Solution(x1=x1, success=success, result=result, ts=ts, xs=xs, **stats, **extra)


# -- set-up and run: what every sampler shares ------------------------------------------


class Setup(eqx.Module):
    """A checked solve: its interval (in the direction of integration), step control,
    saved times and noise."""

    t_start: Array
    t_end: Array
    control: StepControl
    subs: object = None
    save_ts: Array | None = None
    noise: Noise | None = None


def setup(
    solver,
    x,
    *,
    steps=None,
    rtol=None,
    atol=None,
    ts=None,
    stepsize_controller=None,
    dt0=None,
    t0=None,
    t1=None,
    saveat=None,
    jump_ts=None,
    max_steps: int,
    forward_only: bool = False,
    reverse: bool = False,
    can_adapt: bool | None = None,
    adapt_hint: str = "dfx.Heun(), dfx.Tsit5() or dfx.Dopri5()",
) -> Setup:
    """Check the interval, step control and ``saveat`` of a solve of the batch ``x``.

    ``reverse``: integrate from ``t1`` back to ``t0`` (a grid ``ts`` is still given from
    ``t0`` to ``t1``).
    """
    t0, t1, ts = check_interval(t0, t1, ts, x.dtype, forward_only=forward_only)
    start, end = (t1, t0) if reverse else (t0, t1)
    if ts is not None and reverse:
        ts = ts[::-1]
    control = step_control(
        solver,
        steps=steps,
        rtol=rtol,
        atol=atol,
        ts=ts,
        dt0=dt0,
        stepsize_controller=stepsize_controller,
        jump_ts=jump_ts,
        max_steps=max_steps,
        t_start=start,
        t_end=end,
        dtype=x.dtype,
        can_adapt=can_adapt,
        adapt_hint=adapt_hint,
    )
    subs, save_ts = saveat_subs(saveat, start, end, x.dtype)
    return Setup(start, end, control, subs, save_ts)


@eqx.filter_jit
def run(
    field,
    x,
    key,
    args,
    plan: Setup,
    *,
    solver,
    batch: str,
    max_steps: int,
    throw: bool,
    adjoint,
    who: str,
    hint: str = "",
    joint_field=None,
) -> Solution:
    """Integrate ``field`` for the batch ``x`` as planned and report: one compiled solve."""
    x1, ts, xs, stats, result = integrate(
        field,
        x,
        plan.t_start,
        plan.t_end,
        args,
        plan.control,
        key,
        solver=solver,
        batch=batch,
        max_steps=max_steps,
        adjoint=adjoint,
        saveat=plan.subs,
        noise=plan.noise,
        joint_field=joint_field,
    )
    finite = finite_per_batch(x1, "joint" if joint_field is not None else batch)
    x1, success = finish(
        x1, result, finite, throw=throw, who=who, max_steps=max_steps, nonfinite_hint=hint
    )
    return solution(
        x1, success, result, stats, plan.save_ts if plan.save_ts is not None else ts, xs
    )
