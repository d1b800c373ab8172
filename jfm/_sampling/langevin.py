r"""Langevin dynamics and predictor-corrector sampling, on the integrate core.

Both are fixed-step Euler-Maruyama schemes written as diffrax solves: Langevin dynamics
is the SDE ``dX = g^2/2 grad log p(X) dt + g dW`` (stationary law ``p``); the
predictor-corrector sampler is a diffrax solver whose step runs Langevin corrector steps
and then one Euler-Maruyama predictor step of :func:`jfm.sample_sde`'s SDE.
"""

from collections.abc import Callable
from typing import ClassVar

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._checks import (
    check_batch,
    check_bool,
    check_callable,
    check_finite,
    check_int,
    check_key,
    check_positive,
    check_scalar_time,
)
from .._custom_types import Args, RealScalarLike, VectorField
from .._misc import sample_flat
from .base import AbstractCountedSolver, Noise, Solution, unsafe_brownian
from .control import check_common, setup
from .core import run
from .sde import (
    Diffusion,
    MarginalDrift,
    call_field,
    check_diffusion,
    diffusion_vf,
    with_brownian_noise,
)


class _LangevinDrift(eqx.Module):
    """``g^2 / 2 * score(t, x, args)`` at the fixed score time ``t`` (one example)."""

    score: VectorField
    t: Float[Array, ""]
    diffusion: Diffusion

    def __call__(self, s, x, args):
        # s is the Langevin time; the score is that of the fixed density p_t.
        g = self.diffusion(s)
        return (0.5 * g**2) * call_field(self.score, "score", self.t, x, args)


def langevin(
    score: VectorField,
    x0: Float[ArrayLike, " batch *event"],
    *,
    key: PRNGKeyArray,
    steps: int,
    step_size: RealScalarLike | None = None,
    diffusion: RealScalarLike | None = None,
    dt: RealScalarLike | None = None,
    t: RealScalarLike = 1.0,
    args: Args = None,
    batch: str = "joint",
    throw: bool = True,
) -> Solution:
    r"""Langevin dynamics for the static density ``p`` with score ``score(t, ., args)``.

    Euler-Maruyama on ``dX = g^2/2 grad log p(X) dt + g dW`` (stationary law ``p``), i.e.
    the unadjusted Langevin algorithm (ULA)

    .. math::
        x_{k+1} = x_k + \epsilon\, \nabla \log p(x_k) + \sqrt{2 \epsilon}\, z_k, \qquad
        z_k \sim N(0, I), \qquad \epsilon = g^2\, dt / 2 ,

    for ``k = 0, ..., steps - 1``. Give the step either as ``step_size=eps`` (ULA's
    convention: ``g = sqrt(2)``, ``dt = eps``) or as ``diffusion=g`` with the Langevin time
    step ``dt``. ULA's stationary law is ``p`` up to an ``O(eps)`` bias (no Metropolis
    correction).

    Checklist: fixed step, weak order 1; stochastic (``key``: one normal draw per step,
    :class:`diffrax.UnsafeBrownianPath`); the score is evaluated at the fixed time ``t``.
    Runs on the integrate core (``nfe = steps`` score calls per example).

    Args:
        score: per-example score field ``score(t, x, args)``.
        x0: ``[B, *event]`` starting points.
        key: PRNG key (keyword-only, required).
        steps: number of Langevin steps (``>= 1``).
        step_size: ``eps > 0`` (ULA convention); excludes ``diffusion``/``dt``.
        diffusion: ``g > 0``, with ``dt``; excludes ``step_size``.
        dt: Langevin time step ``> 0`` (only with ``diffusion``).
        t: the time at which ``score`` is evaluated (scalar in ``[0, 1]``).
        args: conditioning passed to ``score``.
        batch: ``"joint"`` (one Brownian draw of the whole batch per step) or ``"vmap"``
            (keys split per example).
        throw: raise when the chain is not finite, or return the status.

    Returns:
        A :class:`jfm.Solution`: ``x1`` ``[B, *event]`` the chain after ``steps`` steps.

    Raises:
        TypeError: ``key`` missing; ``score`` not callable; non-integer ``steps``.
        ValueError: not exactly one of ``step_size`` and ``diffusion``; ``dt`` missing
            (with ``diffusion``) or given (with ``step_size``); non-positive step,
            diffusion or ``dt``; ``steps < 1``; ``score`` returning another shape.

    Examples:
        >>> import jax.numpy as jnp, jax.random as jr, jfm
        >>> score = lambda t, x, args: -x  # standard normal
        >>> sol = jfm.langevin(score, jnp.zeros((4, 2)), key=jr.key(0), step_size=0.1, steps=10)
        >>> sol.x1.shape, int(sol.nfe)
        ((4, 2), 10)
    """
    check_callable(score, "score")
    check_key(key)
    x0 = check_finite(check_batch(x0, "x0"), "x0")
    dtype = x0.dtype
    steps = check_int(steps, "steps", 1)
    check_common(batch, throw, steps, None)
    t = check_scalar_time(t).astype(dtype)
    if (step_size is None) == (diffusion is None):
        raise ValueError(
            "pass exactly one of `step_size` (ULA: x + eps score + sqrt(2 eps) z) or "
            f"`diffusion` (g, with the time step dt); got step_size={step_size!r}, "
            f"diffusion={diffusion!r}."
        )
    if step_size is not None:
        if dt is not None:
            raise ValueError(
                f"`dt` goes with `diffusion` only; with step_size the step is dt = eps. Got "
                f"dt={dt!r}."
            )
        h = check_positive(step_size, "step_size", dtype)
        g = jnp.sqrt(jnp.asarray(2.0, dtype))
    else:
        if dt is None:
            raise ValueError(
                "`dt` is required with `diffusion`: the update is x + (g^2 dt / 2) score + "
                "g sqrt(dt) z; pass dt=..."
            )
        g = check_positive(diffusion, "diffusion", dtype)
        h = check_positive(dt, "dt", dtype)
    plan = setup(dfx.Euler(), x0, steps=steps, t0=0.0, t1=h * steps, max_steps=steps)
    plan = eqx.tree_at(
        lambda p: p.noise, plan, Noise(diffusion_vf, unsafe_brownian), is_leaf=lambda v: v is None
    )
    return run(
        _LangevinDrift(score, t, Diffusion(None, g)),
        x0,
        key,
        args,
        plan,
        solver=dfx.Euler(),
        batch=batch,
        max_steps=steps,
        throw=throw,
        adjoint=dfx.ForwardMode(),  # UnsafeBrownianPath supports forward mode only
        who="jfm.langevin",
        hint="the step is too large for the score",
    )


# -- predictor-corrector ---------------------------------------------------------------


def langevin_update(x, s, eps, z):
    """``x + eps s + sqrt(2 eps) z``."""
    return x + eps * s + jnp.sqrt(2 * eps) * z


class _JointDrift(eqx.Module):
    """The drift of a whole batch ``[B, *event]`` (the corrector's statistics are batch-wide)."""

    drift: MarginalDrift

    @property
    def diffusion(self):
        return self.drift.diffusion

    def __call__(self, t, y, args):
        return jax.vmap(self.drift, in_axes=(None, 0, None))(t, y, args)


class PredictorCorrector(AbstractCountedSolver, dfx.AbstractItoSolver):
    """Euler-Maruyama predictor with Langevin corrector steps, as a diffrax solver.

    Each step from ``t_k`` first runs ``corrector_steps`` Langevin steps for
    ``p_{t_k}`` on the whole batch with Song et al.'s signal-to-noise step rule, then one
    Euler-Maruyama step of the SDE terms to ``t_{k+1}``. The state is the batch
    ``[B, *event]``; the corrector's noise comes from ``key`` (split per step, carried in
    the solver state). Fixed steps only.
    """

    score: VectorField
    snr: Float[Array, ""]
    key: PRNGKeyArray
    corrector_steps: int = eqx.field(static=True)

    term_structure: ClassVar = dfx.AbstractTerm
    interpolation_cls: ClassVar[Callable[..., dfx.LocalLinearInterpolation]] = (
        dfx.LocalLinearInterpolation
    )

    @property
    def evaluations_per_step(self) -> int:
        return 1 + self.corrector_steps

    def order(self, terms):
        return 1

    def strong_order(self, terms):
        return 0.5

    def init(self, terms, t0, t1, y0, args):
        return self.key

    def _correct(self, x, t, key, args):
        s = jax.vmap(lambda xi: call_field(self.score, "score", t, xi, args))(x)
        z = sample_flat(jr.normal, key, x.shape, x.dtype)
        # Song et al.'s rule: norms averaged over the batch, one step for all examples
        # (per-example norms make huge steps where one example's score nearly vanishes).
        axes = tuple(range(1, x.ndim))
        ns = jnp.mean(jnp.sqrt(jnp.sum(s**2, axis=axes)))
        nz = jnp.mean(jnp.sqrt(jnp.sum(z**2, axis=axes)))
        ok = ns > 0
        eps = jnp.where(ok, 2 * (self.snr.astype(x.dtype) * nz / jnp.where(ok, ns, 1)) ** 2, 0)
        return langevin_update(x, s, eps, z)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        key, sub = jr.split(solver_state)
        y = y0
        for j in range(self.corrector_steps):
            y = self._correct(y, t0, jr.fold_in(sub, j), args[1])
        y1, _, dense, _, result = dfx.Euler().step(terms, t0, t1, y, args, None, made_jump)
        return y1, None, dict(y0=y0, y1=y1), key, result

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


def sample_pc(
    velocity: VectorField,
    score: VectorField,
    x0: Float[ArrayLike, " batch *event"],
    *,
    diffusion: RealScalarLike | Callable,
    key: PRNGKeyArray,
    steps: int,
    corrector_steps: int = 1,
    snr: RealScalarLike = 0.16,
    t0: RealScalarLike | None = None,
    t1: RealScalarLike | None = None,
    args: Args = None,
    brownian_tol: RealScalarLike | None = None,
    throw: bool = True,
) -> Solution:
    r"""Predictor-corrector sampling: Euler-Maruyama predictor, Langevin corrector.

    On the grid ``t_k = t0 + k (t1 - t0) / steps``, each step first runs
    ``corrector_steps`` Langevin steps for ``p_{t_k}`` (score ``s = score(t_k, .)``) with
    the signal-to-noise step rule of Song et al. (``b`` runs over the batch),

    .. math::
        \epsilon = 2 \Big(r \frac{\mathrm{mean}_b \|z_b\|}{\mathrm{mean}_b \|s_b\|}\Big)^2,
        \qquad x_b \leftarrow x_b + \epsilon\, s_b + \sqrt{2 \epsilon}\, z_b ,

    (``r = snr``, ``z ~ N(0, I)``), then one Euler-Maruyama step of the SDE of
    :func:`jfm.sample_sde` (drift ``u + g^2/2 s``, diffusion ``g``) to ``t_{k+1}``. With
    ``diffusion=sde.diffusion`` and ``velocity=sde.probability_flow(score)`` the predictor
    is the reverse-time diffusion SDE (score-SDE's PC sampler). As in Song et al. the step
    is shared by the batch (so an example's result depends on its batch); ``eps = 0`` if
    all ``s_b = 0``. The batch is therefore always solved jointly.

    Checklist: fixed step; stochastic; forward in time (``t0 < t1``). The predictor uses
    the Brownian tree of ``key`` that ``sample_sde(..., solver=dfx.Euler(), steps=steps)``
    uses, so ``corrector_steps=0`` reproduces that solve; the corrector's noise comes
    from ``jr.fold_in(key, 1)``. A diffrax solver (:class:`PredictorCorrector`) on the
    integrate core.

    Args:
        velocity, score, diffusion, x0, t0, t1, args, brownian_tol, throw: as in
            :func:`jfm.sample_sde` (``score`` must be a field: the corrector calls it).
        key: PRNG key (keyword-only, required).
        steps: predictor steps ``N >= 1``.
        corrector_steps: Langevin steps per predictor step (``>= 0``; default 1).
        snr: the signal-to-noise ratio ``r > 0`` of the step rule (default 0.16, Song et
            al.'s choice for VE SDEs on CIFAR-10).

    Returns:
        A :class:`jfm.Solution` with ``nfe = steps * (1 + corrector_steps)``.

    Raises:
        TypeError/ValueError: as :func:`jfm.sample_sde`; ``snr <= 0``;
            ``corrector_steps < 0``.

    References:
        Song et al., "Score-Based Generative Modeling through Stochastic Differential
        Equations", ICLR 2021, Algorithms 2-5.
    """
    check_callable(velocity, "velocity")
    check_callable(score, "score")
    check_key(key)
    x0 = check_finite(check_batch(x0, "x0"), "x0")
    steps = check_int(steps, "steps", 1)
    corrector_steps = check_int(corrector_steps, "corrector_steps", 0)
    check_bool(throw, "throw")
    plan = setup(dfx.Euler(), x0, steps=steps, t0=t0, t1=t1, max_steps=steps, forward_only=True)
    plan = with_brownian_noise(plan, dfx.Euler(), brownian_tol)
    g = check_diffusion(diffusion, plan.t_start, plan.t_end, x0.dtype)
    snr = check_positive(snr, "snr", x0.dtype)
    return run(
        None,
        x0,
        key,
        args,
        plan,
        solver=PredictorCorrector(score, snr, jr.fold_in(key, 1), corrector_steps),
        batch="joint",
        max_steps=steps,
        throw=throw,
        adjoint=dfx.RecursiveCheckpointAdjoint(),
        who="jfm.sample_pc",
        hint="a field blows up or the step (or snr) is too large",
        joint_field=_JointDrift(MarginalDrift(velocity, score, g)),
    )
