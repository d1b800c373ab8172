"""The sampling core's result type and its NFE accounting.

Every jfm sampler returns a :class:`Solution`; jfm's own diffrax solvers subclass
:class:`AbstractCountedSolver`, so that their cost is counted exactly. The rest of the
integrate core: ``control.py`` (checks and step control), ``core.py`` (the solve, the
batching and the failure reporting).
"""

import abc
from collections.abc import Callable
from typing import ClassVar

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Bool, Float, Int

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

    #: The solver counts its evaluations in its state (read with :meth:`nfe_from_state`),
    #: e.g. because some steps cost fewer evaluations than others.
    counts_in_state: ClassVar[bool] = False

    @property
    @abc.abstractmethod
    def evaluations_per_step(self) -> int:
        """Evaluations of the per-example field per step (at most, if counted in state)."""

    def nfe_from_state(self, solver_state) -> Int[Array, ""]:
        """The evaluations made so far, from the solver state (``counts_in_state``)."""
        raise NotImplementedError


# -- NFE accounting -------------------------------------------------------------------------


class FirstRejections(dfx.AbstractAdaptiveStepSizeController):
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
        return FirstRejections(self.controller.wrap(direction))

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
        return solver.evaluations_per_step, bool(getattr(solver, "fsal", False))
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


def solution(x1, success, result, stats, ts=None, xs=None, **extra) -> Solution:
    return Solution(x1=x1, success=success, result=result, ts=ts, xs=xs, **stats, **extra)


class Noise(eqx.Module):
    """Additive diagonal noise ``g(t) dW`` for an SDE solve.

    ``diffusion(t, y, args)`` returns the diffrax control term's vector field (e.g.
    ``g(t) * IdentityLinearOperator``); ``brownian(t0, t1, y0, key)`` builds the Brownian
    motion for that solve (a tree, or an unsafe path for fixed steps).
    """

    diffusion: Callable
    brownian: Callable


def unsafe_brownian(t0, t1, y0, key):
    """Brownian motion for fixed steps: one fresh normal draw per increment (no tree)."""
    return dfx.UnsafeBrownianPath(shape=jax.ShapeDtypeStruct(y0.shape, y0.dtype), key=key)


def unit_noise(t, y, args):
    """The identity diffusion ``I dW`` (for solvers that read the increments themselves)."""
    return lx.IdentityLinearOperator(jax.ShapeDtypeStruct(y.shape, y.dtype))
