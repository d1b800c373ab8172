"""Solver sweeps: every solver over fixed step counts and tolerances on one problem.

All solves go through jfm's public samplers, :func:`jfm.sample_ode` (endpoints) and
:func:`jfm.log_prob` (the likelihood check), as a user's call would.
"""

import math
import timeit
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import diffrax as dfx
import jax
import numpy as np

from .. import log_prob, sample_ode
from .._checks import check_int, check_name, check_positive
from ._problems import Problem
from ._record import SweepRecord, endpoint_errors

_BATCH_MODES: tuple[str, ...] = ("joint", "vmap")


def _solvers_dict(solvers: Any) -> dict[str, dfx.AbstractSolver]:
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


def _check_settings(
    steps: Sequence[int], tolerances: Sequence[float]
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    for name, v in (("steps", steps), ("tolerances", tolerances)):
        if isinstance(v, str) or not isinstance(v, Sequence):
            raise TypeError(f"`{name}` must be a sequence (list or tuple); got {type(v)}.")
    steps = tuple(check_int(n, "steps", 1) for n in steps)
    tols = tuple(float(check_positive(v, "tolerances")) for v in tolerances)
    if not steps and not tols:
        raise ValueError(
            "Nothing to sweep: pass steps=[...] (fixed step counts) and/or "
            "tolerances=[...] (rtol = atol of adaptive solves)."
        )
    return steps, tols


def _time(fn: Callable[[], Any], repeat: int) -> tuple[Any, float, float]:
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
    the endpoint error against ``problem.reference``, ``Solution.nfe``, and the wall
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
        TypeError: ``problem`` or ``solvers`` of the wrong type; ``steps`` or
            ``tolerances`` not a list/tuple; a step count, ``repeat`` or ``max_steps``
            that is not an int.
        ValueError: nothing to sweep, no solvers, non-positive steps or tolerances,
            ``repeat < 1``, unknown ``batch``, ``steps`` beyond ``max_steps``.
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"`problem` must be a jfm.bench.Problem; got {type(problem)}.")
    items = _solvers_dict(solvers)
    steps, tols = _check_settings(steps, tolerances)
    repeat = check_int(repeat, "repeat", 1)
    check_name(batch, "batch", _BATCH_MODES)
    max_steps = check_int(max_steps, "max_steps", 1)
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
