"""Tests for jfm.sample_ode: accuracy against Gaussian closed forms, convergence order,
exact function-evaluation counts, batching modes, failure handling and recompilation."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jfm

from .helpers import ADAPTIVE_ODE_SOLVERS, FIXED_ODE_SOLVERS, raises_arg, raises_exact, tol

D = 2
B = 16
CONDOT = jfm.AffinePath(jfm.CondOT())
COSINE = jfm.AffinePath(jfm.Cosine())


class GaussField(eqx.Module):
    """Exact marginal velocity of data N(m, diag(v)) under an affine path (elementwise):
    u(t, x) = a' m + (a a' v + s s') / (a^2 v + s^2) (x - a m)."""

    path: jfm.AffinePath
    m: jax.Array
    v: jax.Array

    def _coef(self, t):
        p = self.path
        return p.alpha(t), p.sigma(t), p.d_alpha(t), p.d_sigma(t)

    def __call__(self, t, x, args):
        a, s, da, ds = self._coef(t)
        a, s, da, ds = (c.astype(x.dtype) for c in (a, s, da, ds))
        return da * self.m + (a * da * self.v + s * ds) / (a**2 * self.v + s**2) * (x - a * self.m)

    def flow(self, t_from, t_to, x):
        """Exact flow map of a batch [B, *event]: x_t - a_t m = r_t z, r_t^2 = a_t^2 v + s_t^2."""
        a0, s0, _, _ = self._coef(jnp.asarray(t_from))
        a1, s1, _, _ = self._coef(jnp.asarray(t_to))
        r0 = jnp.sqrt(a0**2 * self.v + s0**2)
        r1 = jnp.sqrt(a1**2 * self.v + s1**2)
        one = lambda xi: a1 * self.m + (r1 / r0) * (xi - a0 * self.m)
        return jax.vmap(one)(x)


def gauss_field(path=CONDOT, dtype=jnp.float64, shape=(D,)):
    m = jnp.linspace(-1.0, 1.5, int(np.prod(shape)), dtype=dtype).reshape(shape)
    v = jnp.linspace(0.3, 2.0, int(np.prod(shape)), dtype=dtype).reshape(shape)
    return GaussField(path, m, v)


def noise(key, n=B, shape=(D,), dtype=jnp.float64):
    return jr.normal(key, (n, *shape), dtype)


def maxerr(a, b):
    return float(jnp.max(jnp.abs(a - b)))


# -- accuracy --------------------------------------------------------------------------


#: Save times used by every adaptive Tsit5 solve below: one compiled solve per batch mode
#: serves the closed-form, RK4, reverse, batching and saveat tests (t0, t1, tolerances
#: and saveat values are traced, so only shapes and static options trigger compilation).
TS = jnp.array([0.0, 0.25, 0.5, 0.9, 1.0])


def tsit5(field, x0, *, t0=0.0, t1=1.0, tol_=1e-10, batch="joint"):
    ts = TS if t1 > t0 else TS[::-1]
    return jfm.sample_ode(
        field, x0, solver=dfx.Tsit5(), rtol=tol_, atol=tol_, t0=t0, t1=t1, saveat=ts, batch=batch
    )


@pytest.mark.slow
def test_closed_form_gaussian(getkey):
    x0 = noise(getkey())
    field = gauss_field(CONDOT)
    sol = tsit5(field, x0)
    # global error ~ tolerance 1e-10 times a moderate growth factor
    assert maxerr(sol.x1, field.flow(0.0, 1.0, x0)) < 1e-8
    assert sol.x1.dtype == x0.dtype and bool(sol.success)
    field = gauss_field(COSINE)
    sol = jfm.sample_ode(field, x0, solver=dfx.Dopri5(), rtol=1e-10, atol=1e-10)
    assert maxerr(sol.x1, field.flow(0.0, 1.0, x0)) < 1e-8  # same reason


def rk4(field, x0, t0, t1, n):
    """Classical fixed-step RK4 by hand (lax.scan), independent of diffrax."""
    h = (t1 - t0) / n
    f = jax.vmap(field, in_axes=(None, 0, None))

    def step(x, i):
        t = t0 + i * h
        k1 = f(t, x, None)
        k2 = f(t + h / 2, x + h / 2 * k1, None)
        k3 = f(t + h / 2, x + h / 2 * k2, None)
        k4 = f(t + h, x + h * k3, None)
        return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), None

    return jax.lax.scan(step, x0, jnp.arange(n, dtype=x0.dtype))[0]


def test_agrees_with_handwritten_rk4(getkey):
    field = gauss_field(CONDOT)
    x0 = noise(getkey())
    sol = tsit5(field, x0, tol_=1e-7)
    ref = eqx.filter_jit(rk4)(field, x0, 0.0, 1.0, 2000)
    # RK4 with h = 5e-4 is exact to ~1e-13; the adaptive solve at 1e-7 to ~1e-6
    assert maxerr(ref, field.flow(0.0, 1.0, x0)) < 1e-10
    assert maxerr(sol.x1, ref) < 1e-5


def test_reverse_and_round_trip(getkey):
    field = gauss_field(CONDOT)
    x0 = noise(getkey())
    back = tsit5(field, field.flow(0.0, 1.0, x0), t0=1.0, t1=0.0)
    # backward solve from the exact endpoint recovers the noise (tolerance-limited)
    assert maxerr(back.x1, x0) < 1e-8
    assert maxerr(back.xs, jax.vmap(lambda t: field.flow(0.0, t, x0))(TS[::-1])) < 1e-7
    again = tsit5(field, tsit5(field, x0).x1, t0=1.0, t1=0.0).x1
    assert maxerr(again, x0) < 1e-8  # round trip 0 -> 1 -> 0, tolerance-limited
    # fixed steps backwards (dt < 0); same compiled solve as the Tsit5 order test
    sol, _ = count_calls(
        field, field.flow(0.0, 1.0, x0), solver=dfx.Tsit5(), steps=64, t0=1.0, t1=0.0
    )
    assert int(sol.num_steps) == 64
    assert maxerr(sol.x1, x0) < 1e-10  # 64 Tsit5 steps: ~2e-12 forward, alike backward


@pytest.mark.parametrize("batch", ["joint", "vmap"])
def test_saveat(batch, getkey):
    field = gauss_field(CONDOT)
    x0 = noise(getkey())
    sol = tsit5(field, x0, batch=batch)
    assert sol.ts.shape == (5,) and sol.xs.shape == (5, B, D)
    exact = jax.vmap(lambda t: field.flow(0.0, t, x0))(TS)
    # Tsit5's dense output between steps is slightly less accurate than step endpoints
    assert maxerr(sol.xs, exact) < 1e-7
    assert maxerr(sol.xs[0], x0) == 0.0  # t = t0 is the initial state itself
    assert maxerr(sol.xs[-1], sol.x1) < 1e-12  # t = 1 saved twice, same state


def test_joint_and_vmap_agree(getkey):
    field = gauss_field(CONDOT)
    x0 = noise(getkey())
    joint = tsit5(field, x0)
    vmap = tsit5(field, x0, batch="vmap")
    assert maxerr(joint.x1, vmap.x1) < 1e-8  # both at tolerance 1e-10 of the same flow
    for name in ("nfe", "num_steps", "num_accepted_steps", "num_rejected_steps", "success"):
        assert getattr(joint, name).shape == ()
        assert getattr(vmap, name).shape == (B,)
    assert vmap.result._value.shape == (B,) and bool(jnp.all(vmap.success))
    # per-example step sizes: examples differ in cost
    assert int(jnp.min(vmap.num_steps)) < int(jnp.max(vmap.num_steps))
    assert bool(jnp.all(vmap.num_accepted_steps + vmap.num_rejected_steps == vmap.num_steps))


@pytest.mark.parametrize("batch", ["joint", "vmap"])
def test_image_event_float32(batch, getkey):
    shape = (4, 4, 1)
    field = gauss_field(CONDOT, jnp.float32, shape)
    x0 = noise(getkey(), 8, shape, jnp.float32)
    sol = jfm.sample_ode(field, x0, solver=dfx.Tsit5(), steps=10, batch=batch)
    assert sol.x1.shape == (8, *shape) and sol.x1.dtype == jnp.float32
    # float32 round-off over 10 steps plus Tsit5's O(h^5) error
    assert maxerr(sol.x1, field.flow(0.0, 1.0, x0)) < tol(jnp.float32, 0, 1e-4)


def test_jit_and_grad(getkey):
    field = gauss_field(CONDOT)
    x0 = noise(getkey())

    def loss(m):
        f = eqx.tree_at(lambda g: g.m, field, m)
        return jnp.sum(jfm.sample_ode(f, x0, solver=dfx.Heun(), steps=4).x1)

    # Under CondOT x_t = t m + r_t z, so J = dx_t/dm solves J' = 1 + c(t) (J - t) with
    # J = t; any consistent Runge-Kutta step maps J_n = t_n to J_{n+1} = t_{n+1} exactly.
    # Hence d sum(x1) / dm = B per coordinate, up to round-off, even with 4 steps.
    g = jax.jit(jax.grad(loss))(field.m)
    np.testing.assert_allclose(g, np.full(D, B), rtol=1e-12)


# -- function evaluations ---------------------------------------------------------------

_CALLS = [0]


def _tick():
    _CALLS[0] += 1


class Counting(eqx.Module):
    """Wraps a field with a host callback that counts its (batched) evaluations."""

    inner: eqx.Module

    def __call__(self, t, x, args):
        jax.debug.callback(_tick)
        return self.inner(t, x, args)


def count_calls(field, x0, **kw):
    _CALLS[0] = 0
    sol = jfm.sample_ode(Counting(field), x0, **kw)
    jax.block_until_ready(sol.x1)
    jax.effects_barrier()
    return sol, _CALLS[0]


def _stages(solver):
    return (
        (1, False)
        if isinstance(solver, dfx.Euler)
        else (solver.tableau.num_stages, solver.tableau.fsal)
    )


@pytest.mark.slow
@pytest.mark.parametrize("solver,order", FIXED_ODE_SOLVERS, ids=lambda s: type(s).__name__)
def test_convergence_order_and_nfe(solver, order, getkey):
    # The Cosine flow is analytic on [0, 1] with O(1) time derivatives: from 8 steps on
    # the error of the low-order solvers is in the asymptotic regime. (On CondOT the
    # leading error term of Midpoint cancels for this field: it converges at order 3.)
    # Tsit5's principal error coefficients are tuned to be tiny, so on Cosine the 6th-order
    # terms dominate almost down to round-off (fitted slope ~5.7); on CondOT its
    # asymptotic regime starts by 16 steps while the error stays above 1e-12.
    if isinstance(solver, dfx.Tsit5):
        path, ns = CONDOT, np.array([16, 32, 64])
    else:
        path, ns = COSINE, np.array([8, 16, 32, 64])
    field = gauss_field(path)
    x0 = noise(getkey())
    exact = field.flow(0.0, 1.0, x0)
    stages, fsal = _stages(solver)
    errs = []
    for n in ns:
        sol, calls = count_calls(field, x0, solver=solver, steps=int(n))
        errs.append(maxerr(sol.x1, exact))
        # exactly n steps; joint solve: the callback (no batched operand) fires once per
        # batched field call, so the count is the per-example nfe
        assert int(sol.num_steps) == n and calls == int(sol.nfe)
        assert int(sol.nfe) == (stages * n - (n - 1) if fsal else stages * n)
    slope = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
    # log-log fit of the global error: slope = classical order up to pre-asymptotic terms
    assert abs(slope - order) < 0.3, (errs, slope)


@pytest.mark.parametrize(
    "solver,kw",
    [(s, dict(steps=7)) for s, _ in FIXED_ODE_SOLVERS]
    + [(s, dict(rtol=1e-6, atol=1e-6)) for s in ADAPTIVE_ODE_SOLVERS],
    ids=lambda v: type(v).__name__ if isinstance(v, dfx.AbstractSolver) else list(v)[0],
)
@pytest.mark.slow
def test_nfe_matches_counted_evaluations(solver, kw, getkey):
    # (fixed steps in joint mode: see test_convergence_order_and_nfe)
    field = gauss_field(COSINE)
    # examples at very different scales: the per-example error control differs
    x0 = noise(getkey(), 4) * jnp.array([0.01, 0.3, 3.0, 30.0]).reshape(4, 1)
    stages, fsal = _stages(solver)
    if "rtol" in kw:
        # joint: one diffeqsolve; the callback (no batched operand) fires once per batched
        # field call, so the count is the nfe. dt0 = 0.5 is far too large for rtol 1e-6:
        # the first attempts are rejected, which for FSAL solvers re-evaluate stage 1.
        sol, calls = count_calls(field, x0, solver=solver, dt0=0.5, **kw)
        assert calls == int(sol.nfe) and int(sol.num_rejected_steps) > 0
        if fsal:  # more than (s - 1) n + 1: the early rejections were counted
            assert int(sol.nfe) > (stages - 1) * int(sol.num_steps) + 1

    # vmap (dt0=None when adaptive: 2 evaluations for the initial step), identical
    # examples: every per-example solve is the same, so the batched while_loop makes
    # exactly the calls of one example.
    same = jnp.broadcast_to(x0[:1], x0.shape)
    sol, calls = count_calls(field, same, solver=solver, batch="vmap", **kw)
    assert bool(jnp.all(sol.nfe == sol.nfe[0])) and calls == int(sol.nfe[0])
    if "steps" in kw:
        assert int(sol.nfe[0]) == (stages * 7 - 6 if fsal else stages * 7)

    # vmap, distinct examples: the batched loop runs until the slowest example is done
    # and evaluates all examples at every iteration (finished ones masked): non-FSAL
    # exactly max(nfe); FSAL re-evaluates the first stage of everyone while any example
    # has not yet accepted a step, so at most max(nfe) + max(rejected).
    sol, calls = count_calls(field, x0, solver=solver, batch="vmap", **kw)
    if "rtol" in kw:
        assert int(jnp.min(sol.nfe)) < int(jnp.max(sol.nfe))  # really per-example counts
    if fsal:
        lo = int(jnp.max(sol.nfe))
        assert lo <= calls <= lo + int(jnp.max(sol.num_rejected_steps))
    else:
        assert calls == int(jnp.max(sol.nfe))


def test_nfe_unknown_solver_is_minus_one(getkey):
    sol = jfm.sample_ode(gauss_field(), noise(getkey(), 4), solver=dfx.ReversibleHeun(), steps=4)
    assert int(sol.nfe) == -1 and int(sol.num_steps) == 4


# -- failures ---------------------------------------------------------------------------


def test_max_steps_reached(getkey):
    field = gauss_field(CONDOT)
    x0 = noise(getkey(), 4)
    kw = dict(solver=dfx.Heun(), rtol=1e-8, atol=1e-8, max_steps=3)
    with pytest.raises(Exception, match=r"max_steps=3 reached before t1; raise max_steps"):
        jax.block_until_ready(jfm.sample_ode(field, x0, **kw).x1)
    sol = jfm.sample_ode(field, x0, throw=False, batch="vmap", **kw)
    assert sol.success.shape == (4,) and not bool(jnp.any(sol.success))
    assert bool(jnp.all(sol.result == dfx.RESULTS.max_steps_reached))
    assert bool(jnp.all(sol.num_steps == 3)) and bool(jnp.all(jnp.isfinite(sol.x1)))


def _blow_up(t, x, args):
    return x / (0.5 - t)  # infinite at t = 0.5, a grid point of 4 fixed steps


def test_non_finite_detected(getkey):
    x0 = noise(getkey(), 4)
    with pytest.raises(Exception, match="non-finite"):
        jax.block_until_ready(jfm.sample_ode(_blow_up, x0, solver=dfx.Euler(), steps=4).x1)
    sol = jfm.sample_ode(_blow_up, x0, solver=dfx.Euler(), steps=4, throw=False)
    # diffrax's fixed-step result stays "successful"; jfm's success flag catches it
    assert sol.result == dfx.RESULTS.successful and not bool(sol.success)
    assert not bool(jnp.all(jnp.isfinite(sol.x1)))


# -- compilation ------------------------------------------------------------------------


class TracedGauss(GaussField):
    def __call__(self, t, x, args):
        _TRACES[0] += 1  # Python side effect: runs only while tracing
        return super().__call__(t, x, args)


_TRACES = [0]


def test_no_recompilation(getkey):
    f = gauss_field(CONDOT)
    field = TracedGauss(f.path, f.m, f.v)
    kw = dict(solver=dfx.Heun(), rtol=1e-6, atol=1e-6)
    _TRACES[0] = 0
    jfm.sample_ode(field, noise(getkey(), 4), **kw)
    traced = _TRACES[0]
    assert traced > 0
    field2 = TracedGauss(f.path, f.m + 1.0, f.v * 2.0)  # new parameter values
    x0 = noise(getkey(), 4)
    sol = jfm.sample_ode(field2, x0, **kw)
    assert _TRACES[0] == traced  # no retrace: arrays inside the Module are dynamic
    assert maxerr(sol.x1, field2.flow(0.0, 1.0, x0)) < 1e-4  # and the new values are used
    sol = jfm.sample_ode(field2, x0, t0=0.2, t1=0.9, **{**kw, "rtol": 1e-5, "atol": 1e-5})
    assert _TRACES[0] == traced  # times and tolerances are traced too
    assert maxerr(sol.x1, field2.flow(0.2, 0.9, x0)) < 1e-3  # tolerance 1e-5 (Heun)


# -- bad input --------------------------------------------------------------------------


def test_bad_input():
    field = gauss_field()
    x0 = jnp.zeros((4, D))
    ok = dict(solver=dfx.Tsit5(), steps=4)
    one = "pass exactly one of `steps`=N"
    with raises_exact(ValueError, "Step controls exclude each other: " + one):
        jfm.sample_ode(field, x0, solver=dfx.Tsit5(), steps=4, rtol=1e-3, atol=1e-3)
    with raises_exact(ValueError, "No step control chosen: " + one):
        jfm.sample_ode(field, x0, solver=dfx.Tsit5())
    with raises_exact(ValueError, "exclude each other.*got ts, stepsize_controller"):
        jfm.sample_ode(field, x0, solver=dfx.Tsit5(), ts=jnp.linspace(0, 1, 3),
                       stepsize_controller=dfx.PIDController(rtol=1e-3, atol=1e-3))  # fmt: skip
    with raises_arg(ValueError, "rtol", "`atol`"):
        jfm.sample_ode(field, x0, solver=dfx.Tsit5(), rtol=1e-3)
    with raises_arg(ValueError, "steps", ">= 1"):
        jfm.sample_ode(field, x0, solver=dfx.Tsit5(), steps=0)
    with raises_arg(ValueError, "steps", "exceeds `max_steps`"):
        jfm.sample_ode(field, x0, solver=dfx.Tsit5(), steps=10, max_steps=5)
    with raises_arg(TypeError, "steps"):
        jfm.sample_ode(field, x0, solver=dfx.Tsit5(), steps=4.0)
    with raises_arg(TypeError, "solver"):
        jfm.sample_ode(field, x0, solver="dopri5", steps=4)
    with raises_arg(ValueError, "solver", "error estimate"):
        jfm.sample_ode(field, x0, solver=dfx.Euler(), rtol=1e-3, atol=1e-3)
    with raises_arg(ValueError, "solver", "error estimate"):  # also via a controller
        jfm.sample_ode(field, x0, solver=dfx.Euler(),
                       stepsize_controller=dfx.PIDController(rtol=1e-3, atol=1e-3))  # fmt: skip
    with raises_arg(ValueError, "rtol"):
        jfm.sample_ode(field, x0, solver=dfx.Tsit5(), rtol=-1e-3, atol=1e-3)
    with raises_arg(ValueError, "batch"):
        jfm.sample_ode(field, x0, batch="serial", **ok)
    with raises_arg(ValueError, "x0", "batch axis"):
        jfm.sample_ode(field, jnp.zeros(()), **ok)
    with raises_arg(ValueError, "saveat"):
        jfm.sample_ode(field, x0, saveat=jnp.zeros((2, 2)), **ok)
    with raises_arg(TypeError, "x0"):
        jfm.sample_ode(field, jnp.zeros((4, D), jnp.int32), **ok)
    with raises_arg(ValueError, "saveat", "increasing"):
        jfm.sample_ode(field, x0, saveat=jnp.array([0.5, 0.2]), **ok)
    with raises_arg(ValueError, "saveat", "within"):
        jfm.sample_ode(field, x0, saveat=jnp.array([0.5, 1.2]), **ok)
    with raises_arg(ValueError, "saveat", "decreasing"):  # backwards solve: must decrease
        jfm.sample_ode(field, x0, t0=1.0, t1=0.0, saveat=jnp.array([0.2, 0.5]), **ok)
    with raises_arg(ValueError, "saveat", "at least one"):
        jfm.sample_ode(field, x0, saveat=jnp.zeros((0,)), **ok)
    with raises_arg(ValueError, "saveat", "dense"):
        jfm.sample_ode(field, x0, saveat=dfx.SaveAt(dense=True), **ok)
    with raises_arg(ValueError, "t0"):
        jfm.sample_ode(field, x0, t0=0.5, t1=0.5, **ok)
    with raises_arg(ValueError, "dt0", "adaptive stepping only"):
        jfm.sample_ode(field, x0, dt0=0.1, **ok)
    with raises_arg(ValueError, "dt0", "adaptive stepping only"):
        jfm.sample_ode(field, x0, solver=dfx.Tsit5(), ts=jnp.linspace(0, 1, 3), dt0=0.1)
    with raises_arg(ValueError, "dt0", "sign"):
        jfm.sample_ode(field, x0, solver=dfx.Tsit5(), rtol=1e-3, atol=1e-3, dt0=-0.1)
    with raises_arg(ValueError, "dt0", "required"):
        jfm.sample_ode(field, x0, solver=dfx.Tsit5(), stepsize_controller=dfx.ConstantStepSize())
    with raises_arg(TypeError, "stepsize_controller", "diffrax step-size controller"):
        jfm.sample_ode(field, x0, solver=dfx.Tsit5(), stepsize_controller="pid")
    with raises_arg(TypeError, "field"):
        jfm.sample_ode(None, x0, **ok)
    # the grid ts=
    with raises_arg(ValueError, "ts", "strictly monotone"):
        jfm.sample_ode(field, x0, solver=dfx.Heun(), ts=jnp.array([0.0, 0.6, 0.4, 1.0]))
    with raises_arg(ValueError, "ts", "strictly monotone"):  # a repeated time
        jfm.sample_ode(field, x0, solver=dfx.Heun(), ts=jnp.array([0.0, 0.5, 0.5, 1.0]))
    with raises_arg(ValueError, "ts", "finite"):
        jfm.sample_ode(field, x0, solver=dfx.Heun(), ts=jnp.array([0.0, jnp.nan, 1.0]))
    with raises_arg(ValueError, "ts", "at least 2 times"):
        jfm.sample_ode(field, x0, solver=dfx.Heun(), ts=jnp.array([0.0]))
    with raises_arg(ValueError, "ts", "dimensions"):
        jfm.sample_ode(field, x0, solver=dfx.Heun(), ts=jnp.zeros((2, 2)))
    with raises_arg(ValueError, "t0", "disagrees with the grid `ts`"):
        jfm.sample_ode(field, x0, solver=dfx.Heun(), ts=jnp.linspace(0, 1, 5), t0=0.1)
    with raises_arg(ValueError, "t1", "disagrees with the grid `ts`"):
        jfm.sample_ode(field, x0, solver=dfx.Heun(), ts=jnp.linspace(0, 1, 5), t1=0.9)
    with raises_arg(ValueError, "ts", "more than `max_steps`"):
        jfm.sample_ode(field, x0, solver=dfx.Heun(), ts=jnp.linspace(0, 1, 12), max_steps=10)


# -- step control: time grids and diffrax controllers -----------------------------------

#: A non-uniform grid on [0, 1] (8 steps of very different sizes).
GRID = jnp.array([0.0, 0.05, 0.15, 0.3, 0.5, 0.62, 0.8, 0.93, 1.0])


def heun_by_hand(field, x0, grid):
    """Heun's method on a given grid, by hand (no diffrax)."""
    f = jax.vmap(field, in_axes=(None, 0, None))
    x = x0
    for a, b in zip(grid[:-1], grid[1:]):
        h = b - a
        k1 = f(a, x, None)
        k2 = f(b, x + h * k1, None)
        x = x + h / 2 * (k1 + k2)
    return x


@pytest.mark.slow
def test_ts_grid_is_heun_on_that_grid(getkey):
    field = gauss_field(COSINE)
    x0 = noise(getkey())
    sol, calls = count_calls(field, x0, solver=dfx.Heun(), ts=GRID, saveat=GRID)
    # the same arithmetic as the hand loop up to the order of the sums: float64 round-off
    assert maxerr(sol.x1, heun_by_hand(field, x0, GRID)) < 1e-12
    # 8 steps of 2 stages; the callback fires once per batched call: exactly the nfe
    assert int(sol.num_steps) == 8 and calls == int(sol.nfe) == 16
    # saving on the grid itself: the states after each hand step
    for i in (2, 5):
        assert maxerr(sol.xs[i], heun_by_hand(field, x0, GRID[: i + 1])) < 1e-12
    # t0/t1 equal to the grid's ends are accepted (and change nothing)
    same = jfm.sample_ode(field, x0, solver=dfx.Heun(), ts=GRID, t0=0.0, t1=1.0)
    np.testing.assert_array_equal(same.x1, sol.x1)
    # a decreasing grid integrates backwards
    back = jfm.sample_ode(field, sol.x1, solver=dfx.Heun(), ts=GRID[::-1])
    assert maxerr(back.x1, heun_by_hand(field, sol.x1, GRID[::-1])) < 1e-12  # round-off
    # per-example solves on the grid: the same steps for everyone
    vm = jfm.sample_ode(field, x0, solver=dfx.Heun(), ts=GRID, batch="vmap")
    assert bool(jnp.all(vm.nfe == 16)) and bool(jnp.all(vm.num_steps == 8))
    assert maxerr(vm.x1, sol.x1) < 1e-12  # same arithmetic per example


def test_ts_grid_traced_no_recompile(getkey):
    # The grid is traced: a new grid of the same length (also under jax.jit) reuses the
    # compiled solve.
    f = gauss_field(COSINE)
    field = TracedGauss(f.path, f.m, f.v)
    x0 = noise(getkey(), 4)
    _TRACES[0] = 0
    a = jfm.sample_ode(field, x0, solver=dfx.Heun(), ts=GRID)
    traced = _TRACES[0]
    other = GRID.at[3].set(0.35)
    b = jfm.sample_ode(field, x0, solver=dfx.Heun(), ts=other)
    assert _TRACES[0] == traced
    assert maxerr(b.x1, heun_by_hand(f, x0, other)) < 1e-12  # the new grid is used
    assert maxerr(a.x1, b.x1) > 0
    jitted = jax.jit(lambda g: jfm.sample_ode(f, x0, solver=dfx.Heun(), ts=g).x1)(other)
    assert maxerr(jitted, b.x1) < 1e-12  # same solve under an outer jit


@pytest.mark.slow
def test_ts_grid_order_two(getkey):
    # Heun on refinements of a smooth non-uniform grid t(s) = s + 0.15 sin(2 pi s)
    # (t' = 1 + 0.3 pi cos(2 pi s) > 0): global error O(h^2) against the closed form.
    field = gauss_field(COSINE)
    x0 = noise(getkey(), 4)
    exact = field.flow(0.0, 1.0, x0)
    ns = np.array([8, 16, 32, 64])
    errs = []
    for n in ns:
        s = jnp.linspace(0.0, 1.0, int(n) + 1)
        grid = s + 0.15 * jnp.sin(2 * jnp.pi * s)
        sol = jfm.sample_ode(field, x0, solver=dfx.Heun(), ts=grid)
        errs.append(maxerr(sol.x1, exact))
    slope = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
    # log-log fit of the global error: Heun's order 2 up to pre-asymptotic terms
    assert abs(slope - 2) < 0.3, (errs, slope)


def test_initial_step_heuristic_is_run_and_counted(getkey):
    # diffrax 0.7.2 runs its initial-step heuristic only for a bare ODETerm; the core runs
    # it itself. The solve from dt0=None must equal the solve from the heuristic's dt0
    # (computed here on a bare ODETerm) and cost exactly 2 more evaluations.
    field = gauss_field(COSINE)
    x0 = noise(getkey(), 4)
    solver = dfx.Heun()  # non-FSAL: nfe = 2 n (+ 2)
    auto, calls = count_calls(field, x0, solver=solver, rtol=1e-6, atol=1e-6)
    assert calls == int(auto.nfe) == 2 * int(auto.num_steps) + 2
    term = dfx.ODETerm(lambda t, y, a: jax.vmap(field, in_axes=(None, 0, None))(t, y, a))
    pid = dfx.PIDController(rtol=1e-6, atol=1e-6)
    h0, _ = pid.init(term, 0.0, 1.0, x0, None, None, solver.func, solver.error_order(term))
    assert 0 < float(h0) != 0.01  # not diffrax's silent fallback
    given, calls = count_calls(field, x0, solver=solver, rtol=1e-6, atol=1e-6, dt0=float(h0))
    assert calls == int(given.nfe) == int(auto.nfe) - 2
    assert int(given.num_steps) == int(auto.num_steps)
    assert maxerr(given.x1, auto.x1) < 1e-14  # the same steps


@pytest.mark.slow
@pytest.mark.parametrize("solver", [dfx.Heun(), dfx.Dopri5()], ids=lambda s: type(s).__name__)
def test_user_stepsize_controller(solver, getkey):
    # Heun: no FSAL; Dopri5: FSAL (Tsit5's FSAL counting is covered above). Controller
    # coefficients are arrays (traced) where that lets solves share a compilation.
    field = gauss_field(COSINE)
    x0 = noise(getkey(), 4) * jnp.array([0.01, 0.3, 3.0, 30.0]).reshape(4, 1)
    tol_ = jnp.asarray(1e-6)
    # a plain PIDController is the rtol/atol shortcut
    pid = dfx.PIDController(rtol=tol_, atol=tol_)
    a, calls = count_calls(field, x0, solver=solver, stepsize_controller=pid)
    b = jfm.sample_ode(Counting(field), x0, solver=solver, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(a.x1, b.x1)
    assert int(a.nfe) == int(b.nfe) == calls and int(a.num_steps) == int(b.num_steps)
    # a PI controller of the user's, with the heuristic (dt0=None) and from a far too
    # large dt0 (rejections before the first accepted step re-evaluate an FSAL stage 1)
    pi = dfx.PIDController(rtol=tol_, atol=tol_, pcoeff=jnp.asarray(0.3), icoeff=jnp.asarray(0.4))
    sol, calls = count_calls(field, x0, solver=solver, stepsize_controller=pi)
    assert calls == int(sol.nfe) and bool(sol.success)
    assert int(sol.num_steps) != int(a.num_steps)  # really another controller
    sol, calls = count_calls(field, x0, solver=solver, stepsize_controller=pi, dt0=0.5)
    assert calls == int(sol.nfe) and int(sol.num_rejected_steps) > 0
    # vmap: identical examples make exactly the calls of one
    same = jnp.broadcast_to(x0[:1], x0.shape)
    sol, calls = count_calls(field, same, solver=solver, stepsize_controller=pi, batch="vmap")
    assert bool(jnp.all(sol.nfe == sol.nfe[0])) and calls == int(sol.nfe[0])
    # a constant step through the controller is steps=N (one compilation for both)
    c, calls = count_calls(field, x0, solver=solver, stepsize_controller=dfx.ConstantStepSize(),
                           dt0=0.125)  # fmt: skip
    d = jfm.sample_ode(Counting(field), x0, solver=solver, steps=8)
    assert maxerr(c.x1, d.x1) < 1e-12 and int(c.nfe) == int(d.nfe) == calls


def test_saveat_as_diffrax_saveat(getkey):
    field = gauss_field(CONDOT)
    x0 = noise(getkey(), 4)
    ts = jnp.array([0.25, 0.5, 1.0])
    a = jfm.sample_ode(field, x0, solver=dfx.Heun(), steps=8, saveat=ts)
    b = jfm.sample_ode(field, x0, solver=dfx.Heun(), steps=8, saveat=dfx.SaveAt(ts=ts))
    assert b.xs.shape == (3, 4, D)
    np.testing.assert_array_equal(a.xs, b.xs)
    assert maxerr(b.xs[-1], b.x1) < 1e-14  # t1 saved twice (interpolated): round-off


# -- the Gaussian-mixture reach test (last: uses jfm.GaussianMixture) -------------------


def _energy_distance(x, y):
    def mean_dist(a, b):
        return jnp.mean(jnp.sqrt(jnp.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)))

    return 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)


@pytest.mark.slow
def test_gmm_reach(getkey):
    means = jnp.array([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]])
    covs = jnp.stack([0.3 * jnp.eye(2), jnp.array([[0.5, 0.2], [0.2, 0.3]]), 0.2 * jnp.eye(2)])
    gmm = jfm.GaussianMixture(means, covs, jnp.array([0.3, 0.5, 0.2]))
    n = 2000
    x0 = jr.normal(getkey(), (n, 2))
    sol = jfm.sample_ode(gmm.velocity_field(CONDOT), x0, solver=dfx.Tsit5(), rtol=1e-6, atol=1e-6)
    ed = jax.jit(_energy_distance)
    flowed = float(ed(sol.x1, gmm.sample(n, key=getkey())))
    # noise floor: energy distance between two independent GMM sample sets of size n
    floor = np.array(
        [float(ed(gmm.sample(n, key=getkey()), gmm.sample(n, key=getkey()))) for _ in range(8)]
    )
    assert flowed < floor.mean() + 3 * floor.std(), (flowed, floor)
    # sanity: the check can fail: the untransported noise is far from the mixture
    assert float(ed(x0, gmm.sample(n, key=getkey()))) > floor.mean() + 10 * floor.std()
