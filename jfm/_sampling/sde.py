r"""Stochastic sampling: the SDE with the marginals of the probability-flow ODE.

For a path with marginals ``p_t``, marginal velocity ``u_t`` and score
``s_t = grad log p_t``, every diffusion coefficient ``g(t) >= 0`` gives an SDE with the
same marginals as the ODE ``dx/dt = u_t(x)`` (the Fokker-Planck equations agree):

.. math::
    dX = \Big[u_t(X) + \tfrac{g(t)^2}{2} s_t(X)\Big] dt + g(t)\, dW_t .

``g = 0`` is the ODE; for a diffusion path (:class:`jfm.DiffusionSDE`) ``g`` equal to the
forward SDE's diffusion is the reverse-time SDE.
"""

import numbers
from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._checks import (
    check_batch,
    check_callable,
    check_finite,
    check_key,
    check_positive,
    is_concrete,
)
from .._custom_types import Args, RealScalarLike, VectorField
from .._paths import AbstractConvertiblePath
from .base import Noise, Solution
from .control import Setup, check_common, check_solver, setup
from .core import run

#: Default resolution of the Brownian tree for adaptive steps, relative to ``t1 - t0``.
_BROWNIAN_TOL = 2.0**-12


def call_field(field, name, t, x, args):
    """``field(t, x, args)`` checked to return ``x``'s shape, cast to ``x``'s dtype."""
    out = jnp.asarray(field(t, x, args))
    if out.shape != x.shape:
        raise ValueError(
            f"`{name}` must return an array of the shape of `x` {x.shape} (one example); "
            f"got shape {out.shape}."
        )
    return out.astype(x.dtype)


class Diffusion(eqx.Module):
    """``g(t)`` as a scalar: a constant (a traced leaf) or a function of ``t``."""

    fn: Callable | None
    value: Float[Array, ""] | None

    def __call__(self, t):
        if self.fn is None:
            return self.value
        return jnp.asarray(self.fn(t))


def check_diffusion(diffusion, t0, t1, dtype) -> Diffusion:
    """``diffusion``: a number ``>= 0`` or ``g(t) -> scalar >= 0`` (checked on 33 times)."""
    if diffusion is None:
        raise TypeError(
            "`diffusion` is required: a number g >= 0 or a function g(t) -> scalar >= 0 "
            "(e.g. diffusion=lambda t: 0.5, or diffusion=sde.diffusion for the reverse SDE)."
        )
    if callable(diffusion):
        ts = jnp.linspace(t0, t1, 33)
        with jax.ensure_compile_time_eval():
            try:
                g = jax.vmap(lambda t: jnp.asarray(diffusion(t)))(ts)
            except TypeError as e:
                raise TypeError(f"`diffusion` must be callable as g(t) -> scalar; {e}") from e
        if g.shape != ts.shape:
            raise ValueError(
                f"`diffusion` must return a scalar g(t) (shape ()); got shape {g.shape[1:]}."
            )
        if not jnp.issubdtype(g.dtype, jnp.floating):
            raise TypeError(f"`diffusion` must return a real float; got dtype {g.dtype}.")
        if is_concrete(g):
            gv = np.asarray(g)
            bad = ~(np.isfinite(gv) & (gv >= 0))
            if np.any(bad):
                raise ValueError(
                    "`diffusion` must be finite and >= 0 on [t0, t1] (g is a standard "
                    f"deviation rate); got g={float(gv[bad][0])} on a grid of times."
                )
        return Diffusion(diffusion, None)
    if isinstance(diffusion, bool) or not isinstance(
        diffusion, (numbers.Real, np.ndarray, np.generic, jax.Array)
    ):
        raise TypeError(
            f"`diffusion` must be a number >= 0 or a function g(t); got {type(diffusion)}."
        )
    return Diffusion(None, check_positive(diffusion, "diffusion", dtype, allow_zero=True))


class MarginalDrift(eqx.Module):
    """``u(t, x) + g(t)^2 / 2 * s(t, x)`` for one example.

    ``score`` is a score field, or a path with parametrization conversions (e.g. an
    :class:`jfm.AffinePath`) through which the score is converted from the same velocity
    evaluation (one field call per drift evaluation).
    """

    velocity: VectorField
    score: VectorField | AbstractConvertiblePath
    diffusion: Diffusion

    def __call__(self, t, x, args):
        u = call_field(self.velocity, "velocity", t, x, args)
        if isinstance(self.score, AbstractConvertiblePath):
            s = self.score.convert(t, x, u, src="velocity", dst="score")
        else:
            s = call_field(self.score, "score", t, x, args)
        g = self.diffusion(t).astype(x.dtype)
        return u + (0.5 * g**2) * s


def check_fields(velocity, score):
    check_callable(velocity, "velocity")
    if not isinstance(score, AbstractConvertiblePath):
        check_callable(score, "score")


def levy_area(solver):
    """The cheapest Lévy area the solver accepts (a tree's cost grows with it)."""
    need = getattr(solver, "minimal_levy_area", dfx.AbstractBrownianIncrement)
    for area in (dfx.BrownianIncrement, dfx.SpaceTimeLevyArea, dfx.SpaceTimeTimeLevyArea):
        if issubclass(area, need):
            return area
    raise ValueError(f"`solver`={type(solver).__name__}() needs an unsupported Levy area {need}.")


def _can_adapt(solver) -> bool:
    if isinstance(solver, dfx.AbstractSRK):
        return solver.tableau.b_error is not None
    return isinstance(solver, dfx.AbstractAdaptiveSolver)


def diffusion_vf(t, y, field_args):
    # g(t) I: diagonal additive noise, independent of y (the SRK solvers check this). The
    # state keeps its shape (flattening it costs much more than it saves on CPU).
    g = field_args[0].diffusion
    return g(t).astype(y.dtype) * lx.IdentityLinearOperator(jax.ShapeDtypeStruct(y.shape, y.dtype))


class BrownianTree(eqx.Module):
    """Builds a :class:`diffrax.VirtualBrownianTree` of the state's shape per solve."""

    tol: Float[Array, ""]
    levy_area: type = eqx.field(static=True)

    def __call__(self, t0, t1, y0, key):
        shape = jax.ShapeDtypeStruct(y0.shape, y0.dtype)
        return dfx.VirtualBrownianTree(
            t0, t1, tol=self.tol, shape=shape, key=key, levy_area=self.levy_area
        )


NONFINITE_SDE = (
    "a field blows up (e.g. a score from a velocity where sigma(t) = 0: end at t1 < 1 or "
    "let g(t) vanish there), or the step is too large"
)


def with_brownian_noise(plan: Setup, solver, brownian_tol) -> Setup:
    """``plan`` with the tree's noise: its tolerance given, else the step (fixed steps) or
    ``(t1 - t0) / 4096``."""
    control, dtype = plan.control, plan.t_start.dtype
    if brownian_tol is not None:
        tol = check_positive(brownian_tol, "brownian_tol", dtype)
    elif isinstance(control.controller, dfx.ConstantStepSize) and control.dt0 is not None:
        tol = jnp.abs(control.dt0)
    else:
        tol = (plan.t_end - plan.t_start) * _BROWNIAN_TOL
    noise = Noise(diffusion_vf, BrownianTree(tol, levy_area(solver)))
    return eqx.tree_at(lambda p: p.noise, plan, noise, is_leaf=lambda v: v is None)


def sample_sde(
    velocity: VectorField,
    score: VectorField | AbstractConvertiblePath,
    x0: Float[ArrayLike, " batch *event"],
    *,
    diffusion: RealScalarLike | Callable,
    key: PRNGKeyArray,
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
    brownian_tol: RealScalarLike | None = None,
    max_steps: int = 4096,
    throw: bool = True,
    adjoint: dfx.AbstractAdjoint | None = None,
) -> Solution:
    r"""Sample by the SDE with the marginals of the ODE ``dx/dt = velocity``.

    .. math::
        dX = \Big[u_t(X) + \tfrac{g(t)^2}{2} s_t(X)\Big] dt + g(t)\, dW_t, \qquad
        X_{t_0} = x_0,

    with ``u = velocity``, ``s = score`` (the score of the same marginals) and
    ``g = diffusion``. For every ``g >= 0`` the marginals are those of the ODE; a larger
    ``g`` corrects errors of ``u`` and ``s`` more strongly at the price of a rougher path.

    Checklist: strong order and adaptivity are the ``solver``'s (:class:`diffrax.Euler`:
    Euler-Maruyama, strong order 1 for this additive noise; :class:`diffrax.SRA1`,
    :class:`diffrax.ShARK` (adaptive), :class:`diffrax.SEA`, :class:`diffrax.SPaRK`,
    :class:`diffrax.Heun`); stochastic (``key``); forward in time only (``t0 < t1``).

    Noise: diagonal additive ``g(t) dW`` on a :class:`diffrax.VirtualBrownianTree` over
    ``[t0, t1]`` with tolerance ``brownian_tol`` (default: the step for ``steps=N``, else
    ``(t1 - t0) / 4096``) and the cheapest Lévy area the solver accepts. A tree returns
    the same value at its dyadic nodes whatever its tolerance, so one key is one Brownian
    path for all dyadic step counts and adaptive steps: solutions at different step sizes
    are comparable path by path. ``batch="joint"``: one tree of shape ``[B, *event]``;
    ``"vmap"``: ``jr.split(key, B)``, one tree per example.

    Step control, batching, ``nfe`` and failures: as :func:`jfm.sample_ode` (adaptive
    control needs a solver with an error estimate: SRA1, ShARK, SPaRK, Heun). ``nfe``
    counts drift evaluations per example (one per stage). A drift evaluation is one call
    of ``velocity`` and one of ``score``; pass ``score=path`` (the
    :class:`jfm.AffinePath` the velocity belongs to) to convert the score from the same
    velocity call (:func:`jfm.score_from_velocity`'s formula): ONE field call.

    Args:
        velocity: per-example marginal velocity ``u(t, x, args)``.
        score: per-example marginal score ``s(t, x, args)`` of the same path, or that
            path (an :class:`jfm.AffinePath`) to derive the score from ``velocity``.
        x0: ``[B, *event]`` samples of ``p_{t0}``.
        diffusion: ``g``: a number ``>= 0`` (traced) or ``g(t) -> scalar >= 0``.
        key: PRNG key for the Brownian motion (keyword-only, required).
        solver: a diffrax solver instance, e.g. ``dfx.Euler()`` or ``dfx.ShARK()``.
        steps, rtol, atol, ts, stepsize_controller, dt0: step control, as in
            :func:`jfm.sample_ode` (exactly one of the first five).
        t0, t1: start and end times, ``t0 < t1`` (default 0 and 1, or the ends of ``ts``).
        args: conditioning passed to both fields.
        saveat: ``[T]`` increasing times, or a :class:`diffrax.SaveAt`.
        batch: ``"joint"`` or ``"vmap"``.
        brownian_tol: tolerance of the Brownian tree (positive).
        max_steps: bound on the steps attempted.
        throw: raise on failure, or return the status.
        adjoint: diffrax adjoint (default ``dfx.RecursiveCheckpointAdjoint()``).

    Returns:
        A :class:`jfm.Solution`.

    Raises:
        TypeError: ``key`` missing or not a key; ``velocity``/``score``/``diffusion`` of the
            wrong kind; ``solver`` not a diffrax solver.
        ValueError: ``diffusion`` negative or non-finite; a field returning another shape
            than ``x``; ``x0`` without batch axis; ``t0 >= t1``; bad step control; bad
            ``saveat``, ``batch`` or ``brownian_tol``.

    Examples:
        >>> import diffrax as dfx, jax.numpy as jnp, jax.random as jr, jfm
        >>> path = jfm.AffinePath(jfm.CondOT())
        >>> gmm = jfm.GaussianMixture.isotropic(jnp.array([[-2.0, 0.0], [2.0, 0.0]]), 0.5)
        >>> x0 = jr.normal(jr.key(0), (8, 2))
        >>> sol = jfm.sample_sde(gmm.velocity_field(path), gmm.score_field(path), x0,
        ...     diffusion=lambda t: 0.5 * (1 - t), key=jr.key(1), solver=dfx.Euler(), steps=20)
        >>> sol.x1.shape, int(sol.nfe)
        ((8, 2), 20)
    """
    check_solver(solver, "dfx.Euler()")
    check_fields(velocity, score)
    check_key(key)
    x0 = check_finite(check_batch(x0, "x0"), "x0")
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
        max_steps=max_steps,
        forward_only=True,
        can_adapt=_can_adapt(solver),
        adapt_hint="dfx.ShARK(), dfx.SRA1(), dfx.SPaRK() or dfx.Heun()",
    )
    plan = with_brownian_noise(plan, solver, brownian_tol)
    g = check_diffusion(diffusion, plan.t_start, plan.t_end, x0.dtype)
    return run(
        MarginalDrift(velocity, score, g),
        x0,
        key,
        args,
        plan,
        solver=solver,
        batch=batch,
        max_steps=max_steps,
        throw=throw,
        adjoint=adjoint,
        who="jfm.sample_sde",
        hint=NONFINITE_SDE,
    )
