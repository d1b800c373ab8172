"""The integrate core's set-up: the argument checks every sampler shares and the step
control (``steps=``, ``ts=``, ``rtol``/``atol`` or a diffrax controller, jump times)."""

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .._checks import check_array, check_bool, check_int, check_name, check_scalar, is_concrete
from .base import BATCH_MODES, FirstRejections, Noise

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
        "pass exactly one of `steps`=N (fixed step), `ts`=grid (fixed grid), `rtol`=... and "
        "`atol`=... (adaptive PID), or `stepsize_controller`=<a diffrax controller>"
    )
    if len(chosen) != 1:
        raise ValueError(
            f"{'No step control chosen' if not chosen else 'Step controls exclude each other'}"
            f": {how}; got {', '.join(chosen) or 'none'}."
        )
    if can_adapt is None:
        # A wrapping solver (e.g. jfm.ProjectedSolver) adapts only if its inner one can.
        can_adapt = isinstance(solver, dfx.AbstractAdaptiveSolver) and bool(
            getattr(solver, "has_error_estimate", True)
        )
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
            return StepControl(FirstRejections(c), dt0, True, dt0 is None)
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
    return StepControl(FirstRejections(c), dt0, True, dt0 is None)


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
