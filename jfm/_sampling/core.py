"""The integrate core's solve: one ``diffeqsolve`` (initial-step heuristic, NFE), the
joint-or-vmap batching, the failure reporting, and :func:`run`, the one compiled solve
that the samplers call.

It is the one place that integrates: a sampler states its vector field (and, for an SDE,
its noise), checks its arguments with :func:`setup`, and calls :func:`run` (or
:func:`integrate` inside its own compiled function).
"""

import diffrax as dfx
import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr

from .base import INITIAL_STEP_NFE, AbstractCountedSolver, Noise, Solution, count_nfe, solution
from .control import Setup, StepControl

# -- one solve ----------------------------------------------------------------------------


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
    own = isinstance(solver, AbstractCountedSolver) and solver.counts_in_state
    states = dict(controller_state=control.adaptive, solver_state=own)
    if subs is None:
        # A single SubSaveAt: dfx.BacksolveAdjoint rejects SaveAt(subs=[...]).
        saveat = dfx.SaveAt(t1=True, **states)
    else:
        saveat = dfx.SaveAt(subs=[dfx.SubSaveAt(t1=True), subs], **states)
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
    if own:
        nfe = solver.nfe_from_state(sol.solver_state).astype(num_steps.dtype) + init_nfe
    else:
        nfe = count_nfe(solver, num_steps, extra.astype(num_steps.dtype), init_nfe)
    stats = dict(
        nfe=nfe,
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
