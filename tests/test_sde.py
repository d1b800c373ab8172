"""sample_sde, sample_pc, langevin, score_from_velocity and DiffusionSDE (jfm/_sde.py,
jfm/_paths/diffusion.py), against the analytic Gaussian mixture."""

import functools

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jfm

from .helpers import CallCounter, raises_arg, tol

GMM = jfm.GaussianMixture.isotropic(jnp.array([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]]), 0.5)
CONDOT = jfm.AffinePath(jfm.CondOT())
VP = jfm.AffinePath(jfm.VP(0.1, 20.0))
N = 400  # samples per set: the energy-distance noise floor is ~1e-2 at this size


@functools.cache
def floor() -> float:
    """Mean energy distance between independent exact sample sets of size N over 8 pairs:
    the V-statistic's bias at this size (the 'noise floor', ~1e-2; one pair's value
    fluctuates by ~70% around it)."""
    keys = jr.split(jr.key(2024), 16)
    sets = [GMM.sample(N, key=k) for k in keys]
    return float(
        np.mean([jfm.metrics.energy_distance(a, b) for a, b in zip(sets[::2], sets[1::2])])
    )


def close_to_gmm(x, key):
    d = float(jfm.metrics.energy_distance(x, GMM.sample(N, key=key)))
    # 4x the floor: ~5 standard deviations of the statistic above its mean for exact samples
    return d, d < 4 * floor()


# -- DiffusionSDE ----------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", [jfm.VP(0.1, 20.0), jfm.VE(0.01, 50.0), jfm.Cosine()])
def test_probability_flow_is_marginal_velocity(schedule, getkey):
    # -f x + g^2/2 s with the exact score must equal the exact marginal velocity: checks
    # the closed-form f, g against the Fokker-Planck identity.
    path = jfm.AffinePath(schedule)
    sde = jfm.DiffusionSDE(path)
    pf = sde.probability_flow(GMM.score_field(path))
    u = GMM.velocity_field(path)
    x = 2 * jr.normal(getkey(), (16, 2))
    for t in (0.1, 0.5, 0.9):
        got = jax.vmap(pf, in_axes=(None, 0, None))(t, x, None)
        want = jax.vmap(u, in_axes=(None, 0, None))(t, x, None)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)  # float64 identity


@pytest.mark.parametrize("schedule", [jfm.VP(0.1, 20.0), jfm.VE(0.01, 50.0)])
def test_closed_form_coefficients_match_general_formula(schedule):
    sde = jfm.DiffusionSDE(jfm.AffinePath(schedule))
    generic = jfm.DiffusionSDE(jfm.AffinePath(jfm.CustomSchedule(schedule.alpha, schedule.sigma)))
    for t in (0.05, 0.5, 0.95):
        # the custom schedule differentiates by jax.jvp: same maths, no closed form
        np.testing.assert_allclose(sde.diffusion(t), generic.diffusion(t), rtol=1e-9)
        np.testing.assert_allclose(sde.drift_coeff(t), generic.drift_coeff(t), atol=1e-9)
    if isinstance(schedule, jfm.VP):
        np.testing.assert_allclose(sde.diffusion(0.3) ** 2, schedule.beta(0.3), rtol=1e-12)


def test_reverse_drift_is_sde_drift(getkey):
    # reverse-time SDE drift -f x + g^2 s = u + g^2/2 s (the sample_sde drift with g).
    sde = jfm.DiffusionSDE(VP)
    s = GMM.score_field(VP)
    x = jr.normal(getkey(), (2,))
    for t in (0.2, 0.7):
        want = GMM.velocity_field(VP)(t, x) + 0.5 * sde.diffusion(t) ** 2 * s(t, x)
        np.testing.assert_allclose(sde.reverse_drift(s)(t, x, None), want, rtol=1e-9)


# -- score_from_velocity -------------------------------------------------------------------


@pytest.mark.parametrize("path", [CONDOT, VP, jfm.AffinePath(jfm.Cosine())])
def test_score_from_velocity_is_exact_score(path, getkey):
    s = jfm.score_from_velocity(GMM.velocity_field(path), path)
    x = 2 * jr.normal(getkey(), (8, 2))
    for t in (0.1, 0.5, 0.9):
        got = jax.vmap(s, in_axes=(None, 0, None))(t, x, None)
        want = jax.vmap(GMM.score_field(path), in_axes=(None, 0, None))(t, x, None)
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-8)  # float64, one solve


# -- sample_sde reaches the mixture ---------------------------------------------------------

_CALLS = [0]


def _tick():
    _CALLS[0] += 1


class Counting(eqx.Module):
    inner: eqx.Module

    def __call__(self, t, x, args):
        jax.debug.callback(_tick)
        return self.inner(t, x, args)


@pytest.mark.slow
@pytest.mark.parametrize("path", [CONDOT, VP], ids=["condot", "vp"])
def test_sample_sde_reaches_gmm(path, getkey):
    u, s = GMM.velocity_field(path), GMM.score_field(path)
    x0 = jr.normal(getkey(), (N, 2))
    # several constant g: traced, one compilation
    for g in (0.0, 0.5, 1.5):
        sol = jfm.sample_sde(u, s, x0, diffusion=g, key=getkey(), solver=dfx.Euler(), steps=64)
        d, ok = close_to_gmm(sol.x1, getkey())
        assert ok, (g, d)
        assert int(sol.nfe) == 64 and int(sol.num_steps) == 64
    if path is VP:
        return
    # a time-dependent g, adaptive ShARK: NFE = 2 per step + 2 for the initial step,
    # checked against a counting callback (fires once per batched drift call).
    _CALLS[0] = 0
    sol = jfm.sample_sde(
        Counting(u), s, x0, diffusion=lambda t: 1.0 - t, key=getkey(), solver=dfx.ShARK(),
        rtol=1e-2, atol=1e-2,
    )  # fmt: skip
    jax.block_until_ready(sol.x1)
    jax.effects_barrier()
    assert _CALLS[0] == int(sol.nfe) == 2 * int(sol.num_steps) + 2
    d, ok = close_to_gmm(sol.x1, getkey())
    assert ok, d
    # the noise at x0 itself is far from the mixture: the check can fail
    assert not close_to_gmm(x0, getkey())[1]


COUNTER = CallCounter()


@pytest.mark.slow
def test_score_from_path_same_samples_half_the_calls(getkey):
    # score=path converts the score from the same velocity call: the same samples (to
    # round-off) as score_from_velocity(u, path), with one field call per drift
    # evaluation instead of two.
    u = COUNTER.wrap(GMM.velocity_field(CONDOT))
    s = jfm.score_from_velocity(u, CONDOT)
    x0 = jr.normal(getkey(), (32, 2))
    kw = dict(diffusion=0.3, key=getkey(), solver=dfx.Euler(), steps=8, t1=0.99)
    two, calls_two = COUNTER.count(jfm.sample_sde, u, s, x0, **kw)
    one, calls_one = COUNTER.count(jfm.sample_sde, u, CONDOT, x0, **kw)
    assert calls_one == 8 == int(one.nfe)  # one velocity call per drift evaluation
    assert calls_two == 2 * calls_one and int(two.nfe) == 8
    np.testing.assert_allclose(one.x1, two.x1, rtol=1e-12, atol=1e-12)  # float64 round-off
    # and the SDE NFE on a grid and with an adaptive SRK solver (ShARK: 2 drift
    # evaluations per step, + 2 for the initial-step heuristic), against counted calls
    grid = jnp.array([0.0, 0.1, 0.3, 0.6, 0.8, 0.99])
    sol, calls = COUNTER.count(jfm.sample_sde, u, CONDOT, x0, diffusion=0.3, key=getkey(),
                               solver=dfx.Euler(), ts=grid)  # fmt: skip
    assert calls == int(sol.nfe) == 5 and int(sol.num_steps) == 5
    sol, calls = COUNTER.count(jfm.sample_sde, u, CONDOT, x0[:8], diffusion=lambda t: 1.0 - t,
                               key=getkey(), solver=dfx.ShARK(), rtol=1e-2, atol=1e-2,
                               t1=0.99)  # fmt: skip
    assert calls == int(sol.nfe) == 2 * int(sol.num_steps) + 2
    sol, calls = COUNTER.count(jfm.sample_sde, u, CONDOT, x0[:8], diffusion=0.3, key=getkey(),
                               solver=dfx.SRA1(), steps=4, t1=0.99)  # fmt: skip
    assert calls == int(sol.nfe) == 2 * 4  # SRA1: 2 drift stages per step


def test_sde_no_recompile(getkey):
    traces = [0]
    base = GMM.velocity_field(CONDOT)

    def u(t, x, args):
        traces[0] += 1  # Python side effect: runs only while tracing
        return base(t, x, args)

    x0 = jr.normal(getkey(), (8, 2))
    kw = dict(solver=dfx.Euler(), steps=4, t1=0.99)
    a = jfm.sample_sde(u, CONDOT, x0, diffusion=0.3, key=getkey(), **kw)
    first = traces[0]
    b = jfm.sample_sde(u, CONDOT, x0 + 1.0, diffusion=0.5, key=getkey(), **kw)
    assert traces[0] == first and float(jnp.max(jnp.abs(a.x1 - b.x1))) > 0


def test_same_key_same_path_and_dyadic_consistency(getkey):
    # Same key -> same samples; the Brownian tree's dyadic nodes do not depend on the
    # tolerance, so a fine tree and the default (tol = dt) give the same EM solution.
    u, s = GMM.velocity_field(CONDOT), GMM.score_field(CONDOT)
    x0 = jr.normal(getkey(), (16, 2))
    key = getkey()
    kw = dict(diffusion=0.7, key=key, solver=dfx.Euler(), steps=8)
    a = jfm.sample_sde(u, s, x0, **kw).x1
    b = jfm.sample_sde(u, s, x0, **kw).x1
    c = jfm.sample_sde(u, s, x0, brownian_tol=2.0**-8, **kw).x1
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12)  # float64, same increments
    d = jfm.sample_sde(u, s, x0, **{**kw, "key": getkey()}).x1
    assert float(jnp.max(jnp.abs(a - d))) > 1e-2  # another key, another path


def test_em_strong_order_one(getkey):
    # Additive noise: Euler-Maruyama has strong order 1. Error at t = 1 against a
    # fine-step solution on the same Brownian path (one tree, tol = 2^-10).
    vel = lambda t, x, args: jnp.sin(2 * x) - x
    score = lambda t, x, args: -x
    x0 = jr.normal(getkey(), (64, 2))
    key = getkey()
    kw = dict(diffusion=lambda t: 1.0 + t, key=key, solver=dfx.Euler(),
              brownian_tol=2.0**-10, max_steps=1024)  # fmt: skip
    ref = jfm.sample_sde(vel, score, x0, steps=1024, **kw).x1
    ns = np.array([8, 16, 32, 64, 128])
    errs = [float(jnp.mean(jnp.abs(jfm.sample_sde(vel, score, x0, steps=int(n), **kw).x1 - ref)))
            for n in ns]  # fmt: skip
    slope = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
    # log-log fit of the mean strong error over 64 paths; order 1 up to sampling noise
    assert 0.8 < slope < 1.25, (errs, slope)


@pytest.mark.slow
def test_vmap_batch_and_float32(getkey):
    u, s = GMM.velocity_field(CONDOT), GMM.score_field(CONDOT)
    x0 = jr.normal(getkey(), (4, 2), jnp.float32)
    # per-example solves = joint solves of a batch of one with the example's key
    keys = jr.split(jr.key(7), 4)
    sol = jfm.sample_sde(u, s, x0, diffusion=0.5, key=jr.key(7), solver=dfx.Euler(),
                         steps=6, batch="vmap")  # fmt: skip
    assert sol.x1.dtype == jnp.float32 and sol.nfe.shape == (4,)
    assert bool(jnp.all(sol.nfe == 6)) and bool(jnp.all(sol.success))
    one = jfm.sample_sde(u, s, x0[1:2], diffusion=0.5, key=keys[1], solver=dfx.Euler(),
                         steps=6)  # fmt: skip
    np.testing.assert_allclose(sol.x1[1], one.x1[0], rtol=tol(jnp.float32, 0, 1e-5))


# -- reverse VP SDE, predictor-corrector, Langevin ------------------------------------------


@pytest.mark.slow
def test_reverse_vp_sde_and_pc_reach_data(getkey):
    sde = jfm.DiffusionSDE(VP)
    s = GMM.score_field(VP)
    pf = sde.probability_flow(s)
    x0 = jr.normal(getkey(), (N, 2))
    key = getkey()
    em = jfm.sample_sde(pf, s, x0, diffusion=sde.diffusion, key=key, solver=dfx.Euler(),
                        steps=64)  # fmt: skip
    d, ok = close_to_gmm(em.x1, getkey())
    assert ok, d
    # PC with no corrector steps is exactly the EM solve (same tree, same steps)
    pc0 = jfm.sample_pc(pf, s, x0, diffusion=sde.diffusion, key=key, steps=64,
                        corrector_steps=0)  # fmt: skip
    np.testing.assert_allclose(pc0.x1, em.x1, rtol=1e-9, atol=1e-9)  # float64, same ops
    pc = jfm.sample_pc(pf, s, x0, diffusion=sde.diffusion, key=key, steps=64,
                       corrector_steps=1, snr=0.1)  # fmt: skip
    assert int(pc.nfe) == 128
    d, ok = close_to_gmm(pc.x1, getkey())
    assert ok, d


@pytest.mark.slow
def test_langevin_stationary_is_gmm(getkey):
    # Started at the mixture, the chain stays at the mixture (stationarity) although every
    # point moves: T = 12 Langevin time units, ~50 relaxation times within a mode (var
    # 0.25). (Mixing between modes 4 apart takes far longer: not tested.)
    score = GMM.score_field(CONDOT)  # at t = 1: the data score
    start = GMM.sample(N, key=getkey())
    x = jfm.langevin(score, start, key=getkey(), step_size=0.02, steps=600).x1
    d, ok = close_to_gmm(x, getkey())
    assert ok, d
    assert float(jnp.mean(jnp.linalg.norm(x - start, axis=-1))) > 0.5  # it moved
    # the score of the mixture shifted by (1, 0) drifts away: the check can fail
    shifted = jfm.langevin(lambda t, y, a: score(t, y - jnp.array([1.0, 0.0]), a), start,
                           key=getkey(), step_size=0.02, steps=600).x1  # fmt: skip
    assert not close_to_gmm(shifted, getkey())[1]
    # (diffusion=g with dt as the same chain: test_langevin_one_step_update_exact checks
    # both parametrizations' exact update given the Brownian increment)


def test_langevin_gaussian_one_step_moments():
    # One ULA step from x for N(0, 1): x' ~ N((1 - eps) x, 2 eps) exactly.
    score = lambda t, x, args: -x
    x = jnp.full((20000, 1), 2.0)
    y = jfm.langevin(score, x, key=jr.key(0), step_size=0.1, steps=1).x1
    se = np.sqrt(0.2 / 20000)
    assert abs(float(jnp.mean(y)) - 1.8) < 4 * se  # 4 standard errors
    assert abs(float(jnp.var(y)) - 0.2) < 4 * 0.2 * np.sqrt(2 / 20000)


@pytest.mark.slow
def test_langevin_one_step_update_exact(getkey):
    # The noise is a dfx.UnsafeBrownianPath (one draw per step): given its increment dW
    # over [0, dt], one step is x + (g^2 dt / 2) s(x) + g dW exactly, in both
    # parametrizations (step_size=eps: g = sqrt 2, dt = eps).
    score = GMM.score_field(CONDOT)
    x = GMM.sample(8, key=getkey())
    key = getkey()
    s = jax.vmap(score, in_axes=(None, 0, None))(1.0, x, None)
    bm = dfx.UnsafeBrownianPath(shape=jax.ShapeDtypeStruct(x.shape, x.dtype), key=key)
    sol, calls = COUNTER.count(jfm.langevin, COUNTER.wrap(score), x, key=key, step_size=0.02,
                               steps=1)  # fmt: skip
    want = x + 0.02 * s + jnp.sqrt(2.0) * bm.evaluate(0.0, 0.02)
    np.testing.assert_allclose(sol.x1, want, rtol=1e-12, atol=1e-12)  # float64 round-off
    assert calls == int(sol.nfe) == 1 and int(sol.num_steps) == 1 and bool(sol.success)
    b = jfm.langevin(score, x, key=key, diffusion=2.0, dt=0.01, steps=1).x1
    want = x + (0.5 * 2.0**2 * 0.01) * s + 2.0 * bm.evaluate(0.0, 0.01)
    np.testing.assert_allclose(b, want, rtol=1e-12, atol=1e-12)  # float64 round-off
    # NFE over several steps, against counted calls
    sol, calls = COUNTER.count(jfm.langevin, COUNTER.wrap(score), x, key=key, step_size=0.02,
                               steps=7)  # fmt: skip
    assert calls == int(sol.nfe) == 7 and int(sol.num_steps) == 7
    assert isinstance(sol, jfm.Solution) and sol.xs is None


def test_langevin_gaussian_stationary_moments_and_no_recompile():
    # For N(mu, v) the ULA chain is Gaussian with stationary mean mu and variance
    # v / (1 - eps / (2 v)) (the O(eps) bias of the unadjusted scheme, exact for this
    # linear chain). Started at the stationary law it stays there: after 40 steps the
    # sample mean and variance of 20000 chains agree within 4 standard errors.
    mu, v, eps, n = 1.5, 0.5, 0.05, 20000
    traces = [0]

    def score(t, x, args):
        traces[0] += 1  # Python side effect: runs only while tracing
        return -(x - mu) / v

    v_inf = v / (1 - eps / (2 * v))
    x0 = mu + np.sqrt(v_inf) * jr.normal(jr.key(3), (n, 1))
    y = jfm.langevin(score, x0, key=jr.key(4), step_size=eps, steps=40).x1
    first = traces[0]
    assert abs(float(jnp.mean(y)) - mu) < 4 * np.sqrt(v_inf / n)  # 4 standard errors
    assert abs(float(jnp.var(y)) - v_inf) < 4 * v_inf * np.sqrt(2 / n)  # 4 SE of a variance
    # a second call (new start, key and step size) does not retrace
    jfm.langevin(score, x0 + 0.1, key=jr.key(5), step_size=eps / 2, steps=40)
    assert traces[0] == first


@pytest.mark.slow
def test_pc_zero_correctors_is_euler_sde_bit_for_bit(getkey):
    # sample_pc is a diffrax solve with jfm.PredictorCorrector; with corrector_steps=0 it
    # is sample_sde's Euler-Maruyama solve (same tree, same steps) bit for bit.
    sde = jfm.DiffusionSDE(VP)
    s = GMM.score_field(VP)
    pf = sde.probability_flow(s)
    x0 = jr.normal(getkey(), (16, 2))
    key = getkey()
    kw = dict(diffusion=sde.diffusion, key=key, steps=8, t1=0.99)
    em = jfm.sample_sde(pf, s, x0, solver=dfx.Euler(), **kw)
    pc0 = jfm.sample_pc(pf, s, x0, corrector_steps=0, **kw)
    np.testing.assert_array_equal(pc0.x1, em.x1)
    assert int(pc0.nfe) == 8 and isinstance(pc0, jfm.Solution)
    # NFE with correctors, against counted calls of the score (the corrector's calls and
    # the drift's): (1 + corrector_steps) per step for the score
    sc = COUNTER.wrap(s)
    pc, calls = COUNTER.count(jfm.sample_pc, pf, sc, x0, corrector_steps=2, snr=0.1, **kw)
    assert int(pc.nfe) == 8 * 3 and calls == 8 * 2 + 8  # corrector 2/step + drift 1/step
    assert bool(pc.success)
    # no retrace on a second call with new values (snr, start, key are traced)
    traces = [0]

    def s_traced(t, x, args):
        traces[0] += 1
        return s(t, x, args)

    jfm.sample_pc(pf, s_traced, x0, corrector_steps=1, snr=0.1, **kw)
    first = traces[0]
    jfm.sample_pc(pf, s_traced, x0 + 1.0, corrector_steps=1, snr=0.2,
                  **{**kw, "key": getkey()})  # fmt: skip
    assert traces[0] == first


# -- errors ----------------------------------------------------------------------------------


def test_bad_input_names_the_argument():
    u, s = GMM.velocity_field(CONDOT), GMM.score_field(CONDOT)
    x0 = jnp.zeros((4, 2))
    kw = dict(key=jr.key(0), solver=dfx.Euler(), steps=4)
    with raises_arg(ValueError, "diffusion", ">= 0"):
        jfm.sample_sde(u, s, x0, diffusion=-0.1, **kw)
    with raises_arg(ValueError, "diffusion", ">= 0"):
        jfm.sample_sde(u, s, x0, diffusion=lambda t: 0.5 - t, **kw)
    with raises_arg(TypeError, "diffusion"):
        jfm.sample_sde(u, s, x0, diffusion=None, **kw)
    with raises_arg(TypeError, "key"):
        jfm.sample_sde(u, s, x0, diffusion=0.5, **{**kw, "key": None})
    with raises_arg(TypeError, "key"):
        jfm.sample_sde(u, s, x0, diffusion=0.5, **{**kw, "key": 3})
    with raises_arg(ValueError, "velocity", "shape"):
        jfm.sample_sde(lambda t, x, a: x[:1], s, x0, diffusion=0.5, **kw)
    with raises_arg(ValueError, "score", "shape"):
        jfm.sample_sde(u, lambda t, x, a: jnp.zeros(3), x0, diffusion=0.5, **kw)
    with raises_arg(ValueError, "x0", "batch axis"):
        jfm.sample_sde(u, s, jnp.zeros(()), diffusion=0.5, **kw)
    with raises_arg(ValueError, "solver", "error estimate"):
        jfm.sample_sde(u, s, x0, diffusion=0.5, key=jr.key(0), solver=dfx.Euler(),
                       rtol=1e-3, atol=1e-3)  # fmt: skip
    with raises_arg(ValueError, "t0", "below `t1`"):
        jfm.sample_sde(u, s, x0, diffusion=0.5, t0=1.0, t1=0.0, **kw)
    with raises_arg(ValueError, "steps", "exceeds `max_steps`"):
        jfm.sample_sde(u, s, x0, diffusion=0.5, **{**kw, "steps": 9}, max_steps=8)
    with raises_arg(ValueError, "ts", "strictly monotone"):
        jfm.sample_sde(u, s, x0, diffusion=0.5, key=jr.key(0), solver=dfx.Euler(),
                       ts=jnp.array([0.0, 0.5, 0.4, 1.0]))  # fmt: skip
    with raises_arg(ValueError, "dt0", "adaptive stepping only"):
        jfm.sample_sde(u, s, x0, diffusion=0.5, dt0=0.1, **kw)
    with raises_arg(ValueError, "saveat", "increasing"):
        jfm.sample_sde(u, s, x0, diffusion=0.5, saveat=jnp.array([0.5, 0.2]), **kw)
    with raises_arg(TypeError, "key"):
        jfm.langevin(s, x0, key=None, step_size=0.1, steps=3)
    with raises_arg(ValueError, "step_size"):
        jfm.langevin(s, x0, key=jr.key(0), step_size=-0.1, steps=3)
    with pytest.raises(ValueError, match="exactly one of `step_size`"):
        jfm.langevin(s, x0, key=jr.key(0), step_size=0.1, diffusion=1.0, dt=0.1, steps=3)
    with raises_arg(ValueError, "dt"):
        jfm.langevin(s, x0, key=jr.key(0), diffusion=1.0, steps=3)
    with raises_arg(ValueError, "snr"):
        jfm.sample_pc(u, s, x0, diffusion=0.5, key=jr.key(0), steps=3, snr=0.0)
    with raises_arg(ValueError, "diffusion"):
        jfm.sample_pc(u, s, x0, diffusion=-1.0, key=jr.key(0), steps=3)
    with raises_arg(TypeError, "path"):
        jfm.DiffusionSDE(jfm.CondOT())
