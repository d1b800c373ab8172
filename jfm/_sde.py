r"""Stochastic sampling: SDEs with the ODE's marginals, predictor-corrector, Langevin.

For a path with marginals ``p_t``, marginal velocity ``u_t`` and score
``s_t = grad log p_t``, every diffusion coefficient ``g(t) >= 0`` gives an SDE with the
same marginals as the ODE ``dx/dt = u_t(x)`` (the Fokker-Planck equations agree):

.. math::
    dX = \Big[u_t(X) + \tfrac{g(t)^2}{2} s_t(X)\Big] dt + g(t)\, dW_t .

``g = 0`` is the ODE; for a diffusion path (:class:`jfm.DiffusionSDE`) ``g`` equal to the
forward SDE's diffusion is the reverse-time SDE. The solves use diffrax
(``MultiTerm(ODETerm, ControlTerm)`` with diagonal noise on a ``VirtualBrownianTree``);
step control and NFE counting are shared with :func:`jfm.sample_ode`.
"""

import numbers
from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._checks import check_array, check_key, check_name, check_scalar_time, is_concrete
from ._custom_types import Args, RealScalarLike, VectorField
from ._misc import sample_flat
from ._paths import AffinePath
from ._solve import (
    _BATCH_MODES,
    _INITIAL_STEP_NFE,
    ODEResult,
    _check_int,
    _check_result,
    _check_save_at,
    _check_step_control,
    _check_time,
    _check_tol,
    _count_nfe,
    _FirstRejections,
)

#: Default resolution of the Brownian tree for adaptive steps, relative to ``t1 - t0``.
_BROWNIAN_TOL = 2.0**-12


def _brownian_tol(brownian_tol, steps, t0, t1, dtype):
    """The tree's tolerance: given, else ``dt`` (fixed steps) or ``(t1 - t0) / 4096``."""
    if brownian_tol is not None:
        return _check_tol(brownian_tol, "brownian_tol", dtype)
    if steps is not None:
        return (t1 - t0) / steps
    return (t1 - t0) * _BROWNIAN_TOL


# -- fields ---------------------------------------------------------------------------------


class ScoreFromVelocity(eqx.Module):
    """The score ``grad log p_t`` of an affine path, computed from a velocity field.

    Built by :func:`jfm.score_from_velocity`; call as ``score(t, x, args)``.
    """

    velocity: VectorField
    path: AffinePath

    def __call__(self, t: RealScalarLike, x: ArrayLike, args: Args = None) -> Array:
        x = check_array(x, "x")
        t = check_scalar_time(t).astype(x.dtype)
        u = _call_field(self.velocity, "velocity", t, x, args)
        return self.path.convert(t, x, u, src="velocity", dst="score")


def score_from_velocity(velocity: VectorField, path: AffinePath) -> ScoreFromVelocity:
    r"""The marginal score of an :class:`jfm.AffinePath` from its marginal velocity.

    For ``x_t = a x1 + s x0`` the marginal velocity and score are both linear in
    ``(E[x1 | x_t], E[x0 | x_t])``, so (``path.convert``, with ``a, s, a', s'`` at ``t``)

    .. math::
        \nabla \log p_t(x) = -\frac{E[x_0 | x]}{s}
        = \frac{a' x - a\, u_t(x)}{s\,(a s' - s a')} .

    One trained velocity model therefore gives both terms of :func:`jfm.sample_sde`'s
    drift; passed as ``sample_sde(v, score_from_velocity(v, path), ...)`` the drift costs
    ONE evaluation of ``v`` (sample_sde recognises the pair). Singular where ``s = 0``
    (``t = 1`` for CondOT and VP): end the solve at ``t1 < 1`` or let ``g(t) -> 0`` there.

    Args:
        velocity: per-example velocity field ``v(t, x, args)`` of ``path``.
        path: the :class:`jfm.AffinePath` the velocity belongs to.

    Returns:
        A per-example field ``score(t, x, args)`` (an :class:`equinox.Module`).

    Raises:
        TypeError: ``velocity`` not callable or ``path`` not an ``AffinePath``.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> path = jfm.AffinePath(jfm.CondOT())
        >>> gmm = jfm.GaussianMixture.isotropic(jnp.array([[-2.0, 0.0], [2.0, 0.0]]), 0.5)
        >>> s = jfm.score_from_velocity(gmm.velocity_field(path), path)
        >>> bool(jnp.allclose(s(0.5, jnp.ones(2)), gmm.score_field(path)(0.5, jnp.ones(2))))
        True
    """
    if not callable(velocity):
        raise TypeError(
            f"`velocity` must be callable as velocity(t, x, args); got {type(velocity)}."
        )
    if not isinstance(path, AffinePath):
        raise TypeError(f"`path` must be a jfm.AffinePath; got {type(path)}.")
    return ScoreFromVelocity(velocity, path)


def _call_field(field, name, t, x, args):
    out = jnp.asarray(field(t, x, args))
    if out.shape != x.shape:
        raise ValueError(
            f"`{name}` must return an array of the shape of `x` {x.shape} (one example); "
            f"got shape {out.shape}."
        )
    return out.astype(x.dtype)


class _Diffusion(eqx.Module):
    """``g(t)`` as a scalar of the state's dtype: a constant (traced leaf) or a function."""

    fn: Callable | None
    value: Float[Array, ""] | None

    def __call__(self, t):
        if self.fn is None:
            return self.value
        return jnp.asarray(self.fn(t))


def _check_diffusion(diffusion, t0, t1, dtype) -> _Diffusion:
    """Validate ``diffusion`` (a number >= 0 or ``g(t) -> scalar >= 0``)."""
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
            if not np.all(np.isfinite(gv)) or np.any(gv < 0):
                bad = float(gv[~(np.isfinite(gv) & (gv >= 0))][0])
                raise ValueError(
                    "`diffusion` must be finite and >= 0 on [t0, t1] (g is a standard "
                    f"deviation rate); got g={bad} on a grid of times."
                )
        return _Diffusion(diffusion, None)
    if isinstance(diffusion, bool) or not isinstance(
        diffusion, (numbers.Real, np.ndarray, np.generic, jax.Array)
    ):
        raise TypeError(
            f"`diffusion` must be a number >= 0 or a function g(t); got {type(diffusion)}."
        )
    value = jnp.asarray(diffusion)
    if value.shape != ():
        raise ValueError(f"`diffusion` must be a scalar; got shape {value.shape}.")
    if is_concrete(value) and not (np.isfinite(float(value)) and float(value) >= 0):
        raise ValueError(f"`diffusion` must be finite and >= 0; got diffusion={float(value)}.")
    return _Diffusion(None, value.astype(dtype))


class _MarginalDrift(eqx.Module):
    """``u(t, x) + g(t)^2 / 2 * s(t, x)`` for one example (one velocity call if shared)."""

    velocity: VectorField
    score: VectorField
    diffusion: _Diffusion
    shared: bool = eqx.field(static=True)

    def __call__(self, t, x, args):
        u = _call_field(self.velocity, "velocity", t, x, args)
        if self.shared:
            s = self.score.path.convert(t, x, u, src="velocity", dst="score")
        else:
            s = _call_field(self.score, "score", t, x, args)
        g = self.diffusion(t).astype(x.dtype)
        return u + (0.5 * g**2) * s


def _check_fields(velocity, score):
    for name, f in (("velocity", velocity), ("score", score)):
        if not callable(f):
            raise TypeError(f"`{name}` must be callable as {name}(t, x, args); got {type(f)}.")
    # Decided here, outside jit (inside, equinox rebuilds modules and identity is lost).
    return isinstance(score, ScoreFromVelocity) and score.velocity is velocity


def _check_x0(x0):
    x0 = check_array(x0, "x0")
    if x0.ndim < 1:
        raise ValueError(
            f"`x0` must have a batch axis: shape [B, *event]; got shape {x0.shape}. For a "
            "single example pass x0[None]."
        )
    return x0


def _check_interval(t0, t1, dtype):
    t0 = _check_time(t0, "t0", dtype)
    t1 = _check_time(t1, "t1", dtype)
    if is_concrete((t0, t1)) and not float(t0) < float(t1):
        raise ValueError(
            f"`t0` must be below `t1` (SDE sampling runs forward in jfm time, noise -> data); "
            f"got t0={float(t0)}, t1={float(t1)}."
        )
    return t0, t1


def _levy_area(solver):
    """The cheapest Lévy area the solver accepts (the tree's cost grows with it)."""
    need = getattr(solver, "minimal_levy_area", dfx.AbstractBrownianIncrement)
    for area in (dfx.BrownianIncrement, dfx.SpaceTimeLevyArea, dfx.SpaceTimeTimeLevyArea):
        if issubclass(area, need):
            return area
    raise ValueError(f"`solver`={type(solver).__name__}() needs an unsupported Levy area {need}.")


def _can_adapt(solver):
    if isinstance(solver, dfx.AbstractSRK):
        return solver.tableau.b_error is not None
    return isinstance(solver, dfx.AbstractAdaptiveSolver)


# -- sample_sde -----------------------------------------------------------------------------


def sample_sde(
    velocity: VectorField,
    score: VectorField,
    x0: Float[ArrayLike, "..."],
    *,
    diffusion: RealScalarLike | Callable,
    key: PRNGKeyArray,
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
    brownian_tol: RealScalarLike | None = None,
    max_steps: int = 4096,
    throw: bool = True,
    adjoint: dfx.AbstractAdjoint | None = None,
) -> ODEResult:
    r"""Sample by the SDE with the marginals of the ODE ``dx/dt = velocity``.

    .. math::
        dX = \Big[u_t(X) + \tfrac{g(t)^2}{2} s_t(X)\Big] dt + g(t)\, dW_t, \qquad
        X_{t_0} = x_0,

    with ``u = velocity``, ``s = score`` (the score of the same marginals ``p_t``) and
    ``g = diffusion``. For every ``g >= 0`` the marginals are those of the ODE (``g = 0``);
    larger ``g`` corrects errors of ``u`` and ``s`` more strongly (the noise contracts
    towards ``p_t``) at the price of a rougher path (more steps for the same accuracy).

    Checklist: strong order and adaptivity are the ``solver``'s (Euler-Maruyama
    :class:`diffrax.Euler`: strong order 1 for this additive noise; :class:`diffrax.SRA1`,
    :class:`diffrax.ShARK` (strong order 1.5, adaptive), :class:`diffrax.SEA` (fixed),
    :class:`diffrax.SPaRK`, :class:`diffrax.Heun`); stochastic (``key``); forward in
    time only (``t0 < t1``, noise to data).

    Noise: diagonal additive noise ``g(t) dW`` with ``W`` a
    :class:`diffrax.VirtualBrownianTree` on ``[t0, t1]`` with tolerance ``brownian_tol``
    (default: the step ``(t1 - t0) / steps`` for fixed steps, ``(t1 - t0) / 4096`` for
    adaptive ones; each query costs ``log2((t1 - t0) / tol)`` normal draws of the state's
    size) and the cheapest Lévy area the solver accepts (Euler: the increment only;
    SRA1/ShARK/SEA: space-time Lévy area). A tree returns the same value at its dyadic
    nodes ``t0 + k (t1 - t0) 2^-l`` whatever its tolerance (as long as ``2^-l (t1 - t0) >=
    tol``), so one key is one Brownian path for all dyadic step counts (``steps = 2^l``)
    and adaptive steps, for solvers using the same Lévy area: solutions at different step
    sizes are comparable path by path. Between nodes the tree interpolates by Brownian
    bridges. ``batch="joint"``: one tree of shape ``[B, *event]``; ``batch="vmap"``:
    ``jr.split(key, B)``, one tree per example (different noise than ``"joint"``).

    Step control, batching and ``nfe``: as :func:`jfm.sample_ode` (``steps=N`` fixed;
    ``rtol``/``atol`` a :class:`diffrax.PIDController`, which needs a solver with an error
    estimate: SRA1, ShARK, SPaRK, Heun, not Euler or SEA; with ``dt0=None`` the first step
    comes from the heuristic on the drift alone, 2 extra evaluations). ``nfe`` counts
    drift evaluations per example: one per stage (Euler and SEA 1, SRA1 and ShARK 2 per
    step). A drift evaluation is one call of ``velocity`` and one of ``score``; ONE
    ``velocity`` call when ``score`` is ``jfm.score_from_velocity(velocity, path)`` (the
    very same ``velocity`` object). ``g`` is evaluated too, but is not counted.

    Args:
        velocity: per-example marginal velocity ``u(t, x, args)``.
        score: per-example marginal score ``s(t, x, args)`` of the same path, e.g. exact
            (:meth:`jfm.GaussianMixture.score_field`), a score model, or
            :func:`jfm.score_from_velocity`.
        x0: ``[B, *event]`` samples of ``p_{t0}`` (the source, for ``t0 = 0``).
        diffusion: ``g``: a number ``>= 0`` (traced: new values do not recompile) or a
            function ``g(t) -> scalar >= 0``; checked on 33 times in ``[t0, t1]`` when it
            can be evaluated at trace time.
        key: PRNG key for the Brownian motion (keyword-only, required).
        solver: a diffrax solver instance, e.g. ``dfx.Euler()`` or ``dfx.ShARK()``.
        steps: number of fixed steps.
        rtol, atol: tolerances of the adaptive controller (both).
        t0, t1: start and end times, ``t0 < t1``.
        args: conditioning passed to both fields.
        save_at: ``[T]`` increasing times in ``[t0, t1]`` at which to also return the states.
        batch: ``"joint"`` or ``"vmap"`` (see :func:`jfm.sample_ode`).
        dt0: adaptive mode only: the first step (``None``: heuristic).
        brownian_tol: tolerance of the Brownian tree (positive; default: see "Noise").
        max_steps: upper bound on the steps attempted.
        throw: raise on failure (max_steps, solver failure, non-finite ``x1``) or return
            the status in ``success``/``result``.
        adjoint: diffrax adjoint (default ``dfx.RecursiveCheckpointAdjoint()``).

    Returns:
        An :class:`jfm.ODEResult` (the same record as :func:`jfm.sample_ode`): ``x1``
        ``[B, *event]``, ``nfe``, ``num_steps``, ``num_accepted_steps``,
        ``num_rejected_steps``, ``success``, ``result``, ``ts``, ``xs``.

    Raises:
        TypeError: ``key`` missing or not a key; ``velocity``/``score``/``diffusion`` of
            the wrong kind; ``solver`` not a diffrax solver.
        ValueError: ``diffusion`` negative or non-finite; a field returning another shape
            than ``x``; ``x0`` without batch axis; ``t0 >= t1``; bad step control
            (neither/both of ``steps`` and ``rtol``/``atol``, adaptive without an error
            estimate); bad ``save_at``, ``batch`` or ``brownian_tol``.

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
    if not isinstance(solver, dfx.AbstractSolver):
        raise TypeError(
            f"`solver` must be a diffrax solver instance, e.g. solver=dfx.Euler(); got "
            f"{solver!r} ({type(solver).__name__})."
        )
    shared = _check_fields(velocity, score)
    check_key(key)
    check_name(batch, "batch", _BATCH_MODES)
    x0 = _check_x0(x0)
    dtype = x0.dtype
    t0, t1 = _check_interval(t0, t1, dtype)
    g = _check_diffusion(diffusion, t0, t1, dtype)
    if not isinstance(throw, bool):
        raise TypeError(f"`throw` must be a bool; got {throw!r}.")
    max_steps = _check_int(max_steps, "max_steps", 1)
    if adjoint is None:
        adjoint = dfx.RecursiveCheckpointAdjoint()
    elif not isinstance(adjoint, dfx.AbstractAdjoint):
        raise TypeError(f"`adjoint` must be a diffrax adjoint or None; got {type(adjoint)}.")
    hint = (
        _can_adapt(solver),
        f"`solver`={type(solver).__name__}() has no error estimate for SDEs, so it cannot "
        "take adaptive steps (rtol/atol); pass steps=N, or an adaptive SDE solver such as "
        "dfx.ShARK(), dfx.SRA1(), dfx.SPaRK() or dfx.Heun().",
    )
    steps, rtol, atol, dt0, adaptive = _check_step_control(
        solver, steps, rtol, atol, dt0, max_steps, t0, t1, dtype, adaptive_hint=hint
    )
    tol = _brownian_tol(brownian_tol, steps, t0, t1, dtype)
    save_at = _check_save_at(save_at, t0, t1, dtype)
    messages = (
        f"jfm.sample_sde: max_steps={max_steps} reached before t1; raise max_steps or "
        "loosen rtol/atol (or pass throw=False to inspect the partial result).",
        "jfm.sample_sde: the diffrax solve failed (see ODEResult.result with throw=False).",
        "jfm.sample_sde: the solution has non-finite values (inf/NaN) at the end: a field "
        "blows up (e.g. a score from a velocity where sigma(t) = 0: end at t1 < 1 or let "
        "g(t) vanish there), or the step is too large; pass throw=False to inspect.",
    )
    drift = _MarginalDrift(velocity, score, g, shared)
    steps_arr = None if steps is None else jnp.asarray(steps, dtype)
    return _sample_sde(
        drift,
        g,
        x0,
        key,
        t0,
        t1,
        args,
        save_at,
        steps_arr,
        rtol,
        atol,
        dt0,
        tol,
        solver=solver,
        adaptive=adaptive,
        batch=batch,
        max_steps=max_steps,
        throw=throw,
        adjoint=adjoint,
        messages=messages,
    )


def _joint_drift_vf(t, y, field_args):
    """The batched drift on ``y [B, *event]``; ``field_args = (drift, g, args)``."""
    drift, _, args = field_args
    return jax.vmap(drift, in_axes=(None, 0, None))(t, y, args)


def _per_example_drift_vf(t, y, field_args):
    drift, _, args = field_args
    return drift(t, y, args)


def _diffusion_vf(t, y, field_args):
    # g(t) I: diagonal additive noise, independent of y (the SRK solvers check this). The
    # state keeps its shape (flattening it costs much more than it saves on CPU).
    g = field_args[1]
    return g(t).astype(y.dtype) * lx.IdentityLinearOperator(jax.ShapeDtypeStruct(y.shape, y.dtype))


def _sde_terms(vf, y0, key, t0, t1, tol, solver):
    bm = dfx.VirtualBrownianTree(
        t0,
        t1,
        tol=tol,
        shape=jax.ShapeDtypeStruct(y0.shape, y0.dtype),
        key=key,
        levy_area=_levy_area(solver),
    )
    return dfx.MultiTerm(dfx.ODETerm(vf), dfx.ControlTerm(_diffusion_vf, bm))


def _solve_sde_one(
    vf,
    y0,
    key,
    t0,
    t1,
    field_args,
    save_at,
    steps,
    rtol,
    atol,
    dt0,
    tol,
    *,
    solver,
    adaptive,
    max_steps,
    adjoint,
):
    """One diffeqsolve of the SDE from ``y0``; returns (y1, ys, stats, result)."""
    terms = _sde_terms(vf, y0, key, t0, t1, tol, solver)
    init_nfe = 0
    if adaptive:
        pid = dfx.PIDController(rtol=rtol, atol=atol)
        if dt0 is None:
            # The Hairer-Wanner heuristic on the drift alone, on a bare ODETerm (see
            # jfm.sample_ode: inside diffeqsolve diffrax 0.7.2 would skip it).
            fwd = dfx.ODETerm(vf)
            tnext, _ = pid.init(
                fwd, t0, t1, y0, None, field_args, solver.func, solver.error_order(terms)
            )
            dt0 = lax.stop_gradient(tnext - t0)
            init_nfe = _INITIAL_STEP_NFE
        controller = _FirstRejections(pid)
    else:
        controller = dfx.ConstantStepSize()
        dt0 = (t1 - t0) / steps
    subs = [dfx.SubSaveAt(t1=True)]
    if save_at is not None:
        subs.append(dfx.SubSaveAt(ts=save_at))
    sol = dfx.diffeqsolve(
        terms,
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
    early = sol.controller_state[2] if adaptive else jnp.zeros((), num_steps.dtype)
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
def _sample_sde(
    drift,
    g,
    x0,
    key,
    t0,
    t1,
    args,
    save_at,
    steps,
    rtol,
    atol,
    dt0,
    tol,
    *,
    solver,
    adaptive,
    batch,
    max_steps,
    throw,
    adjoint,
    messages,
):
    common = dict(solver=solver, adaptive=adaptive, max_steps=max_steps, adjoint=adjoint)
    rest = (save_at, steps, rtol, atol, dt0, tol)
    fa = (drift, g, args)
    if batch == "joint":
        x1, xs, stats, result = _solve_sde_one(
            _joint_drift_vf, x0, key, t0, t1, fa, *rest, **common
        )
        finite = jnp.all(jnp.isfinite(x1))
    else:
        keys = jr.split(key, x0.shape[0])
        x1, xs, stats, result = jax.vmap(
            lambda y0, k: _solve_sde_one(_per_example_drift_vf, y0, k, t0, t1, fa, *rest, **common)
        )(x0, keys)
        if xs is not None:
            xs = jnp.swapaxes(xs, 0, 1)  # [B, T, *event] -> [T, B, *event]
        finite = jnp.all(jnp.isfinite(x1), axis=tuple(range(1, x0.ndim)))
    x1, success = _check_result(x1, result, finite, throw, messages)
    return ODEResult(x1=x1, success=success, result=result, ts=save_at, xs=xs, **stats)


# -- Langevin dynamics and predictor-corrector ---------------------------------------------


def _batched(field, name, t, x, args):
    return jax.vmap(lambda xi: _call_field(field, name, t, xi, args))(x)


def _langevin_update(x, s, eps, z):
    """``x + eps s + sqrt(2 eps) z``; ``eps`` a scalar or one per example ``[B]``."""
    e = eps.reshape(eps.shape + (1,) * (x.ndim - eps.ndim))
    return x + e * s + jnp.sqrt(2 * e) * z


def _positive_scalar(v, name, dtype, allow_zero=False):
    if isinstance(v, bool) or not isinstance(v, (numbers.Real, np.ndarray, np.generic, jax.Array)):
        raise TypeError(f"`{name}` must be a real scalar; got {type(v)}.")
    v = jnp.asarray(v)
    if v.shape != ():
        raise ValueError(f"`{name}` must be a scalar; got shape {v.shape}.")
    if is_concrete(v):
        f = float(v)
        ok = np.isfinite(f) and (f >= 0 if allow_zero else f > 0)
        if not ok:
            raise ValueError(
                f"`{name}` must be finite and {'>= 0' if allow_zero else '> 0'}; got {name}={f}."
            )
    return v.astype(dtype)


def langevin(
    score: VectorField,
    x0: Float[ArrayLike, "..."],
    *,
    key: PRNGKeyArray,
    steps: int,
    step_size: RealScalarLike | None = None,
    diffusion: RealScalarLike | None = None,
    dt: RealScalarLike | None = None,
    t: RealScalarLike = 1.0,
    args: Args = None,
) -> Float[Array, "..."]:
    r"""Langevin dynamics for the static density ``p`` with score ``score(t, ., args)``.

    Euler-Maruyama on ``dX = g^2/2 grad log p(X) dt + g dW`` (stationary law ``p``), i.e.
    the unadjusted Langevin algorithm (ULA)

    .. math::
        x_{k+1} = x_k + \epsilon\, \nabla \log p(x_k) + \sqrt{2 \epsilon}\, z_k, \qquad
        z_k \sim N(0, I), \qquad \epsilon = g^2\, dt / 2 ,

    for ``k = 0, ..., steps - 1``. Give the step either as ``step_size=eps`` (ULA's
    convention, ``g = sqrt(2)``, ``dt = eps``) or as ``diffusion=g`` with the Langevin
    time step ``dt``. ULA's stationary law is ``p`` up to an ``O(eps)`` bias (no
    Metropolis correction); mixing takes a Langevin time ``steps * dt`` of order the
    density's relaxation time.

    Checklist: fixed step, order 1 (weak); stochastic (``key``); the score is evaluated at
    the fixed time ``t`` (``t = 1``: the data end of a path). The step is written here (a
    one-line update shared with the corrector of :func:`jfm.sample_pc`, whose step size
    changes per example and iteration); noise ``z_k`` from ``jr.split(key, steps)``.

    Args:
        score: per-example score field ``score(t, x, args)`` (e.g.
            ``gmm.score_field(path)`` at ``t = 1`` is the data score).
        x0: ``[B, *event]`` starting points.
        key: PRNG key (keyword-only, required).
        steps: number of Langevin steps (a Python int ``>= 1``).
        step_size: ``eps > 0`` (ULA convention); excludes ``diffusion``/``dt``.
        diffusion: ``g > 0``, with ``dt``; excludes ``step_size``.
        dt: Langevin time step ``> 0`` (only with ``diffusion``).
        t: the time at which ``score`` is evaluated (scalar in ``[0, 1]``).
        args: conditioning passed to ``score``.

    Returns:
        ``[B, *event]`` the chain after ``steps`` steps (dtype of ``x0``).

    Raises:
        TypeError: ``key`` missing; ``score`` not callable; non-integer ``steps``.
        ValueError: neither or both of ``step_size`` and ``diffusion``; ``dt`` missing
            (with ``diffusion``) or given (with ``step_size``); non-positive step, diffusion
            or ``dt``; ``steps < 1``; ``score`` returning another shape than ``x``.

    Examples:
        >>> import jax.numpy as jnp, jax.random as jr, jfm
        >>> score = lambda t, x, args: -x  # standard normal
        >>> x = jfm.langevin(score, jnp.zeros((4, 2)), key=jr.key(0), step_size=0.1, steps=10)
        >>> x.shape
        (4, 2)
    """
    if not callable(score):
        raise TypeError(f"`score` must be callable as score(t, x, args); got {type(score)}.")
    check_key(key)
    x0 = _check_x0(x0)
    dtype = x0.dtype
    steps = _check_int(steps, "steps", 1)
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
        eps = _positive_scalar(step_size, "step_size", dtype)
    else:
        if dt is None:
            raise ValueError(
                "`dt` is required with `diffusion`: the update is x + (g^2 dt / 2) score + "
                "g sqrt(dt) z; pass dt=..."
            )
        g = _positive_scalar(diffusion, "diffusion", dtype)
        eps = 0.5 * g**2 * _positive_scalar(dt, "dt", dtype)
    return _langevin(score, x0, key, t, eps, args, steps=steps)


@eqx.filter_jit
def _langevin(score, x0, key, t, eps, args, *, steps):
    def body(x, k):
        s = _batched(score, "score", t, x, args)
        z = sample_flat(jr.normal, k, x.shape, x.dtype)
        return _langevin_update(x, s, eps, z), None

    x, _ = lax.scan(body, x0, jr.split(key, steps))
    return x


def sample_pc(
    velocity: VectorField,
    score: VectorField,
    x0: Float[ArrayLike, "..."],
    *,
    diffusion: RealScalarLike | Callable,
    key: PRNGKeyArray,
    steps: int,
    corrector_steps: int = 1,
    snr: RealScalarLike = 0.16,
    t0: RealScalarLike = 0.0,
    t1: RealScalarLike = 1.0,
    args: Args = None,
    brownian_tol: RealScalarLike | None = None,
    throw: bool = True,
) -> ODEResult:
    r"""Predictor-corrector sampling: Euler-Maruyama predictor, Langevin corrector.

    On the grid ``t_k = t0 + k (t1 - t0) / steps``, each step first runs
    ``corrector_steps`` Langevin steps for ``p_{t_k}`` (score ``s = score(t_k, .)``) with
    the signal-to-noise step rule of Song et al. (``b`` runs over the batch),

    .. math::
        \epsilon = 2 \Big(r \frac{\mathrm{mean}_b \|z_b\|}{\mathrm{mean}_b \|s_b\|}\Big)^2,
        \qquad x_b \leftarrow x_b + \epsilon\, s_b + \sqrt{2 \epsilon}\, z_b ,

    (``r = snr``, ``z ~ N(0, I)``), then one Euler-Maruyama step of the SDE of
    :func:`jfm.sample_sde` (drift ``u + g^2/2 s``, diffusion ``g``) to ``t_{k+1}``. The
    predictor with ``diffusion=sde.diffusion`` and ``velocity=sde.probability_flow(score)``
    is the reverse-time diffusion SDE (score-SDE's PC sampler; ``diffusion=0`` an ODE
    predictor). As in Song et al. the step is shared by the batch (so an example's result
    depends on the batch it is in; per-example norms take huge steps wherever an
    example's score nearly vanishes, e.g. between modes); ``eps = 0`` if all ``s_b = 0``.

    Checklist: fixed step; stochastic; forward in time (``t0 < t1``). The predictor steps
    with :class:`diffrax.Euler` on the Brownian tree of ``key`` that
    ``sample_sde(..., solver=dfx.Euler(), steps=steps)`` uses (joint batch), so
    ``corrector_steps=0`` reproduces that solve; the corrector's noise comes from
    ``jr.fold_in(key, 1)``.

    Args:
        velocity, score, diffusion, x0, t0, t1, args, brownian_tol, throw: as in
            :func:`jfm.sample_sde`.
        key: PRNG key (keyword-only, required).
        steps: predictor steps ``N >= 1``.
        corrector_steps: Langevin steps per predictor step (``>= 0``; default 1).
        snr: the signal-to-noise ratio ``r > 0`` of the step rule (default 0.16, Song et
            al.'s choice for VE SDEs on CIFAR-10).

    Returns:
        An :class:`jfm.ODEResult` with ``nfe = steps * (1 + corrector_steps)`` (drift and
        score evaluations, per example), ``num_steps = num_accepted_steps = steps``.

    Raises:
        TypeError/ValueError: as :func:`jfm.sample_sde`; ``snr <= 0``;
            ``corrector_steps < 0``.

    References:
        Song et al., "Score-Based Generative Modeling through Stochastic Differential
        Equations", ICLR 2021, Algorithms 2-5.
    """
    shared = _check_fields(velocity, score)
    check_key(key)
    x0 = _check_x0(x0)
    dtype = x0.dtype
    t0, t1 = _check_interval(t0, t1, dtype)
    g = _check_diffusion(diffusion, t0, t1, dtype)
    steps = _check_int(steps, "steps", 1)
    corrector_steps = _check_int(corrector_steps, "corrector_steps", 0)
    snr = _positive_scalar(snr, "snr", dtype)
    if not isinstance(throw, bool):
        raise TypeError(f"`throw` must be a bool; got {throw!r}.")
    tol = _brownian_tol(brownian_tol, steps, t0, t1, dtype)
    messages = (
        "",
        "",
        "jfm.sample_pc: the samples have non-finite values (inf/NaN): a field blows up or "
        "the step (or snr) is too large; pass throw=False to inspect.",
    )
    drift = _MarginalDrift(velocity, score, g, shared)
    return _sample_pc(
        drift,
        score,
        g,
        x0,
        key,
        t0,
        t1,
        args,
        snr,
        tol,
        steps=steps,
        corrector_steps=corrector_steps,
        throw=throw,
        messages=messages,
    )


@eqx.filter_jit
def _sample_pc(
    drift, score, g, x0, key, t0, t1, args, snr, tol, *, steps, corrector_steps, throw, messages
):
    solver = dfx.Euler()
    fa = (drift, g, args)
    terms = _sde_terms(_joint_drift_vf, x0, key, t0, t1, tol, solver)
    key_c = jr.fold_in(key, 1)
    dt = (t1 - t0) / steps
    axes = tuple(range(1, x0.ndim))

    def correct(x, t, k):
        s = _batched(score, "score", t, x, args)
        z = sample_flat(jr.normal, k, x.shape, x.dtype)
        # Song et al.'s rule: norms averaged over the batch, one step for all examples
        # (per-example norms make huge steps where one example's score nearly vanishes).
        ns = jnp.mean(jnp.sqrt(jnp.sum(s**2, axis=axes)))
        nz = jnp.mean(jnp.sqrt(jnp.sum(z**2, axis=axes)))
        ok = ns > 0
        eps = jnp.where(ok, 2 * (snr * nz / jnp.where(ok, ns, 1)) ** 2, 0)
        return _langevin_update(x, s, eps, z)

    def body(carry, i):
        x, t = carry
        for j in range(corrector_steps):
            x = correct(x, t, jr.fold_in(jr.fold_in(key_c, i), j))
        # Times accumulate as in diffrax's ConstantStepSize (the last one is t1 exactly).
        t_next = jnp.where(i == steps - 1, t1, t + dt)
        x, _, _, _, _ = solver.step(terms, t, t_next, x, fa, None, False)
        return (x, t_next), None

    (x1, _), _ = lax.scan(body, (x0, t0), jnp.arange(steps))
    finite = jnp.all(jnp.isfinite(x1))
    result = dfx.RESULTS.successful
    x1, success = _check_result(x1, result, finite, throw, messages)
    n = jnp.asarray(steps, jnp.int32)
    return ODEResult(
        x1=x1,
        nfe=n * (1 + corrector_steps),
        num_steps=n,
        num_accepted_steps=n,
        num_rejected_steps=jnp.zeros((), jnp.int32),
        success=success,
        result=result,
    )


__all__ = ["ScoreFromVelocity", "langevin", "sample_pc", "sample_sde", "score_from_velocity"]
