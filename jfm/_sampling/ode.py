"""Sampling by ODE integration: ``dx/dt = field(t, x, args)`` on the integrate core."""

import diffrax as dfx
import equinox as eqx
from jaxtyping import ArrayLike, Float, PRNGKeyArray

from .._checks import check_batch, check_callable, check_finite, check_key
from .._custom_types import Args, RealScalarLike, VectorField
from .base import Noise, Solution, unit_noise, unsafe_brownian
from .control import check_common, check_solver, setup
from .core import run
from .solvers import AbstractFlowSolver


def sample_ode(
    field: VectorField,
    x0: Float[ArrayLike, " batch *event"],
    *,
    solver: dfx.AbstractSolver,
    steps: int | None = None,
    rtol: RealScalarLike | None = None,
    atol: RealScalarLike | None = None,
    ts: Float[ArrayLike, " N"] | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    dt0: RealScalarLike | None = None,
    t0: RealScalarLike | None = None,
    t1: RealScalarLike | None = None,
    args: Args = None,
    saveat: Float[ArrayLike, " T"] | dfx.SaveAt | None = None,
    batch: str = "joint",
    max_steps: int = 4096,
    throw: bool = True,
    adjoint: dfx.AbstractAdjoint | None = None,
    jump_ts: Float[ArrayLike, " J"] | None = None,
    key: PRNGKeyArray | None = None,
) -> Solution:
    r"""Transport a batch along the ODE ``dx/dt = field(t, x, args)`` from ``t0`` to ``t1``.

    Solves :math:`\dot x = u(t, x)`, :math:`x(t_0) = x_0` for every example, e.g. noise at
    ``t0 = 0`` to samples at ``t1 = 1`` (the defaults), or data back to noise with
    ``t0=1, t1=0``.

    Checklist: order and adaptivity are the ``solver``'s; deterministic; either time
    direction.

    Step control (exactly one; no defaults: the accuracy/cost choice is the user's):

    - ``steps=N``: :class:`diffrax.ConstantStepSize`, ``dt = (t1 - t0) / N``.
    - ``ts=grid``: :class:`diffrax.StepTo` on the grid ``[N + 1]`` (strictly monotone, in
      the direction of integration); ``t0``/``t1`` default to its ends.
    - ``rtol=..., atol=...``: :class:`diffrax.PIDController` (RMS norm of
      ``err / (atol + rtol |y|)``). With ``dt0=None`` the first step comes from diffrax's
      Hairer-Wanner heuristic (2 evaluations). Jump times of the field (``jump_ts=``, or
      ``field.jump_ts`` when the field has that attribute, e.g.
      :func:`jfm.classifier_free_guidance` with an ``interval``) go to a
      :class:`diffrax.ClipStepSizeController`, so that steps end exactly there.
    - ``stepsize_controller=``: any diffrax controller, as in ``diffeqsolve`` (adaptive
      ones are wrapped for the jump times and NFE count; ``ConstantStepSize`` needs
      ``dt0``).

    Few-NFE solvers: jfm's solvers for affine paths (:class:`jfm.DPMSolverPP`,
    :class:`jfm.DPMSolverPP2S`, :class:`jfm.UniPC`, :class:`jfm.DEIS`, :class:`jfm.EDM`)
    take ``steps=N`` or a grid ``ts=`` (e.g. :func:`jfm.time_grid`); they convert the
    field's output (their ``pred``) to the data prediction themselves. ``jfm.EDM`` with
    churn (``gamma > 0``) is stochastic and needs ``key=``; its noise comes from a
    :class:`diffrax.UnsafeBrownianPath` (``adjoint`` defaults to
    :class:`diffrax.ForwardMode`).

    Batching: ``batch="joint"`` (default) makes ONE ``diffeqsolve`` of the whole batch
    with ``jax.vmap(field)``: shared step sizes (from the error norm over the batch), one
    batched field call per stage; the fastest on accelerators. ``batch="vmap"`` vmaps one
    solve per example: own step sizes and counters, but the loop runs until the slowest
    example is done and evaluates the field on the whole batch at every iteration.

    Cost (``nfe``, per example, exact for Euler, the explicit Runge-Kutta solvers and
    jfm's solvers): with ``s`` stages, ``n`` steps attempted and ``r`` first-stage
    re-evaluations (rejections before the first accepted step, attempts starting at a jump
    time), ``nfe = s n`` (non-FSAL) or ``(s - 1) n + 1 + r`` (FSAL), plus 2 for the
    initial-step heuristic. Computed from diffrax's counters, without host callbacks.

    Failure: with ``throw=True`` (default) an error is raised at run time (also under
    ``jax.jit``) when ``max_steps`` is reached, diffrax reports another failure, or the
    result has inf/NaN; with ``throw=False`` check ``success`` and ``result``.

    Compilation: wrapped in :func:`equinox.filter_jit`; arrays (``x0``, times, tolerances,
    arrays in ``args`` or inside an ``eqx.Module`` field) are traced, everything else is
    static. A second call with the same shapes does not recompile; a fresh ``lambda``
    does. ``jax.jvp`` through the solve needs ``adjoint=dfx.ForwardMode()``.

    Args:
        field: per-example field ``field(t, x, args) -> dx/dt`` (``x`` of the event shape).
        x0: ``[B, *event]`` initial points; their dtype sets the dtype of everything.
        solver: a diffrax solver instance, e.g. ``dfx.Tsit5()``.
        steps: number of fixed steps, ``1 <= steps <= max_steps``.
        rtol, atol: tolerances of the adaptive controller (both, positive).
        ts: ``[N + 1]`` fixed time grid.
        stepsize_controller: a diffrax step-size controller.
        dt0: first step for adaptive control (signed like ``t1 - t0``); ``None``: heuristic.
        t0, t1: start and end times (default 0 and 1, or the ends of ``ts``; ``t0 != t1``).
        args: conditioning passed to ``field`` unchanged.
        saveat: ``[T]`` times (strictly monotone from ``t0`` to ``t1``) at which to also
            return the states, or a :class:`diffrax.SaveAt` (not ``dense``).
        batch: ``"joint"`` or ``"vmap"``.
        max_steps: bound on the steps attempted (static).
        throw: raise on failure, or return the status.
        adjoint: diffrax adjoint (default ``dfx.RecursiveCheckpointAdjoint()``).
        jump_ts: ``[J]`` times where the field jumps (adaptive control only).
        key: PRNG key, for stochastic solvers only (``jfm.EDM`` with ``gamma > 0``).

    Returns:
        A :class:`jfm.Solution` (``x1`` ``[B, *event]``, ``nfe``, step counts, ``success``,
        ``result``, ``ts``/``xs`` with ``saveat``).

    Raises:
        TypeError: ``solver``/``stepsize_controller``/``adjoint`` of the wrong type,
            ``field`` not callable, ``x0`` not a floating array, non-int ``steps``.
        ValueError: not exactly one step control; adaptive control with a solver without
            error estimate; ``steps > max_steps``; unknown ``batch``; ``x0`` without a
            batch axis; bad ``ts``/``saveat``/``dt0``; ``t0 == t1``.

    Examples:
        >>> import diffrax as dfx, jax.numpy as jnp, jfm
        >>> field = lambda t, x, args: -x
        >>> sol = jfm.sample_ode(field, jnp.ones((3, 2)), solver=dfx.Heun(), steps=4)
        >>> sol.x1.shape, int(sol.nfe), int(sol.num_steps)
        ((3, 2), 8, 4)
    """
    check_solver(solver)
    check_callable(field, "field")
    x0 = check_finite(check_batch(x0, "x0"), "x0")
    stochastic = isinstance(solver, AbstractFlowSolver) and solver.stochastic
    if stochastic:
        check_key(key)
        if adjoint is None:
            adjoint = dfx.ForwardMode()  # UnsafeBrownianPath supports forward mode only
    elif key is not None:
        raise ValueError(
            f"`key` is for stochastic solvers only (e.g. jfm.EDM(path, gamma=0.3)); "
            f"solver={type(solver).__name__}() is deterministic. Leave key out."
        )
    max_steps, adjoint = check_common(batch, throw, max_steps, adjoint)
    plan = setup(
        solver,
        x0,
        steps=steps,
        rtol=rtol,
        atol=atol,
        ts=ts,
        stepsize_controller=stepsize_controller,
        dt0=dt0,
        t0=t0,
        t1=t1,
        saveat=saveat,
        jump_ts=getattr(field, "jump_ts", None) if jump_ts is None else jump_ts,
        max_steps=max_steps,
    )
    if stochastic:
        plan = eqx.tree_at(
            lambda p: p.noise, plan, Noise(unit_noise, unsafe_brownian), is_leaf=lambda v: v is None
        )
    return run(
        field,
        x0,
        key,
        args,
        plan,
        solver=solver,
        batch=batch,
        max_steps=max_steps,
        throw=throw,
        adjoint=adjoint,
        who="jfm.sample_ode",
    )
