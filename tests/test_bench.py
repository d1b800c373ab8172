"""Tests of the solver-accuracy harness ``jfm.bench`` (float64, small problems)."""

import math

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jfm

from .helpers import raises_arg

# Cosine: on CondOT the Gaussian flow has a vanishing leading error term for the
# midpoint rule (it shows order 3 there), which would muddle the order test.
PATH = jfm.AffinePath(jfm.Cosine())
MEAN = jnp.array([1.0, -0.5])
COV = jnp.array([[0.3, 0.1], [0.1, 0.2]])


@pytest.fixture(scope="module")
def gaussian():
    """A Gaussian-to-Gaussian problem with closed-form reference and likelihood check."""
    x0 = jr.normal(jr.key(0), (16, 2), jnp.float64)
    g = jfm.GaussianMixture(MEAN[None], COV[None], jnp.ones((1,)))
    pts = jax.jit(lambda key: g.sample(4, key=key))(jr.key(1))  # one compile, not per op
    return jfm.bench.gaussian_problem(MEAN, COV, PATH, x0, logp_points=pts)


@pytest.fixture(scope="module")
def order_records(gaussian):
    solvers = {
        "Euler": dfx.Euler(),
        "Heun": dfx.Heun(),
        "Midpoint": dfx.Midpoint(),
        "RK4": jfm.bench.RK4(),
    }
    return jfm.bench.solver_sweep(
        gaussian, solvers, steps=[16, 32, 64, 128], repeat=1, log_likelihood=False
    )


def test_gaussian_flow_solves_the_ode():
    # The closed form must satisfy dx/dt = u(t, x) of the one-component mixture, and
    # run back to its start.
    u = jfm.GaussianMixture(MEAN[None], COV[None], jnp.ones((1,))).velocity_field(PATH)
    x0 = jnp.array([0.3, -1.2])

    @jax.jit
    def residual(t):
        flow = lambda s: jfm.bench.gaussian_flow(MEAN, COV, PATH, x0, 0.0, s)
        xt, dxdt = jax.jvp(flow, (t,), (jnp.ones_like(t),))
        return dxdt - u(t, xt, None)

    # float64 closed form vs the field: only round-off separates them.
    res = jax.vmap(residual)(jnp.array([0.1, 0.5, 0.9]))
    np.testing.assert_allclose(res, 0.0, atol=1e-12)
    x1 = jfm.bench.gaussian_flow(MEAN, COV, PATH, x0, 0.0, 1.0)
    back = jfm.bench.gaussian_flow(MEAN, COV, PATH, x1, 1.0, 0.0)
    np.testing.assert_allclose(back, x0, rtol=0, atol=1e-14)  # round-off of a 2x2 eigh


@pytest.mark.slow
def test_known_orders(order_records, gaussian):
    # The harness's own fit recovers the classical orders on a smooth closed-form flow.
    orders = {s: p for _, _, s, p, _ in jfm.bench.convergence_orders(order_records)}
    # +-0.15 (+-0.3 for RK4): N = 16..128 is close to, not deep in, the asymptotic regime.
    assert abs(orders["Euler"] - 1) < 0.15, orders
    assert abs(orders["Heun"] - 2) < 0.15, orders
    assert abs(orders["Midpoint"] - 2) < 0.15, orders
    assert abs(orders["RK4"] - 4) < 0.3, orders
    fixed = [r for r in order_records if r.mode == "fixed"]
    for r in fixed:  # NFE from Solution: stages x steps for these non-FSAL tableaus
        stages = {"Euler": 1, "Heun": 2, "Midpoint": 2, "RK4": 4}[r.solver]
        assert r.nfe == stages * r.steps
        assert r.err_rms <= r.err_max
        assert r.time_s > 0 and r.compile_s >= r.time_s
    assert all(math.isnan(r.logp_err_max) for r in order_records)  # log_likelihood=False


def test_rk4_dense_output():
    # Dense output (SaveAt(ts)) of the RK4 between the steps, against the closed-form
    # flow: cubic Hermite through the step ends and the first/last stage keeps order 4.
    u = jfm.GaussianMixture(MEAN[None], COV[None], jnp.ones((1,))).velocity_field(PATH)
    x0 = jnp.array([0.3, -1.2])

    @jax.jit
    def dense(dt0, ts):  # one compilation for every N (dt0 and ts are traced)
        term = dfx.ODETerm(u)
        sol = dfx.diffeqsolve(
            term, jfm.bench.RK4(), 0.0, 1.0, dt0, x0, saveat=dfx.SaveAt(ts=ts), max_steps=64
        )
        exact = jax.vmap(lambda t: jfm.bench.gaussian_flow(MEAN, COV, PATH, x0, 0.0, t))(ts)
        return jnp.max(jnp.linalg.norm(sol.ys - exact, axis=1))

    ns = [8, 16, 32, 64]
    # 8 mid-step times per N: the same place within a step at every N.
    errs = [float(dense(1.0 / n, jnp.asarray((np.arange(0, n, n // 8) + 0.5) / n))) for n in ns]
    p, used = jfm.bench.fit_order(ns, errs)
    assert used == 4 and abs(p - 4) < 0.3, (p, errs)  # seen: 4.09 (pre-asymptotic at N=8)
    assert errs[-1] < 1e-7  # h = 1/64 on an O(1) smooth flow (seen: 2.1e-8)


@pytest.mark.slow
def test_log_likelihood_error(gaussian):
    # The likelihood check (exact divergence, exact source density) shrinks with N at the
    # solver's order: RK4 N=32 -> 64 divides the error by about 2^4.
    recs = jfm.bench.solver_sweep(
        gaussian, [jfm.bench.RK4()], steps=[32, 64], tolerances=[1e-6], repeat=1
    )
    rk4 = {r.steps: r for r in recs if r.solver == "RK4" and r.mode == "fixed"}
    assert rk4[64].logp_err_max < 1e-7  # 4th order at h = 1/64 on an O(1) integrand
    ratio = rk4[32].logp_err_rms / rk4[64].logp_err_rms
    assert 8 < ratio < 32, ratio  # 2^4 = 16 up to pre-asymptotic slack
    assert rk4[64].logp_nfe == 4 * 64
    adaptive = [r for r in recs if r.mode == "adaptive"]
    assert len(adaptive) == 1 and adaptive[0].logp_err_max < 1e-4  # tol 1e-6, O(1) logp


@pytest.mark.slow
def test_reference_error_below_measured_errors(gaussian):
    # A solver reference (Dopri8 at 1e-12, as for fields without closed form): its own
    # error estimate is honest (checked against the closed form) and below every error
    # the sweep measures when the reference is used as a user's Problem would use it.
    x0 = gaussian.x0
    ref = jfm.bench.reference_solution(gaussian.field, x0, rtol=1e-12, atol=1e-12)
    true_err = np.asarray(jnp.linalg.norm(ref.x1 - gaussian.reference.x1, axis=1))
    assert np.max(true_err) < 1e-10  # 1e-12 tolerance, integrated over [0, 1]
    # Same order of magnitude as the truth (the check solve runs 100x tighter).
    assert np.max(true_err) <= 10 * np.max(np.asarray(ref.error)) + 1e-14, (true_err, ref.error)
    prob = jfm.bench.Problem("solver reference", gaussian.field, x0, ref)
    recs = jfm.bench.solver_sweep(
        prob, [jfm.bench.RK4()], steps=[16, 64], tolerances=[1e-4, 1e-8], repeat=1
    )
    smallest = min(r.err_max for r in recs)
    assert prob.error_floor < smallest / 10, (prob.error_floor, smallest)
    assert prob.error_floor < 1e-10  # a reference at 1e-12 is far below solver errors


def test_fit_order():
    n = np.array([4, 8, 16, 32, 64])
    e = 3.0 * n**-2.5
    p, used = jfm.bench.fit_order(n, e)
    assert used == 5 and abs(p - 2.5) < 1e-12  # exact power law: exact slope
    # Errors at the floor are dropped; max_points keeps the finest ones.
    e_floor = np.where(n >= 32, 1e-12, e)
    p, used = jfm.bench.fit_order(n, e_floor, floor=1e-12)
    assert used == 3 and abs(p - 2.5) < 1e-12
    p, used = jfm.bench.fit_order(n, e, max_points=2)
    assert used == 2 and abs(p - 2.5) < 1e-12
    p, used = jfm.bench.fit_order([4], [1e-3])
    assert used == 1 and math.isnan(p)


def test_outputs(order_records, gaussian, tmp_path):
    # Euler has no error estimate: its tolerance settings are skipped.
    recs = jfm.bench.solver_sweep(
        gaussian, [dfx.Euler()], steps=[16], tolerances=[1e-3], repeat=1, log_likelihood=False
    )
    assert [(r.solver, r.mode, r.steps) for r in recs] == [("Euler", "fixed", 16)]
    md = jfm.bench.records_to_markdown(order_records)
    assert md.count("\n") == len(order_records) + 1
    path = tmp_path / "r.csv"
    jfm.bench.write_csv(order_records, str(path))
    rows = path.read_text().strip().splitlines()
    assert len(rows) == len(order_records) + 1 and rows[0].startswith("problem,library")
    ax = jfm.bench.plot_work_precision(order_records, x="time_s")
    assert len(ax.get_lines()) == 5  # 4 fixed sweeps + the floor line
    e_max, e_rms = jfm.bench.endpoint_errors(jnp.array([[3.0, 4.0], [0.0, 0.0]]), jnp.zeros((2, 2)))
    assert e_max == 5.0 and abs(e_rms - 5 / math.sqrt(2)) < 1e-15


def test_bad_input(gaussian, order_records):
    recs = order_records[:1]
    x32 = jnp.zeros((2, 2), jnp.float32)
    with raises_arg(ValueError, "x0", "float64"):
        jfm.bench.reference_solution(lambda t, x, a: -x, x32, rtol=1e-12, atol=1e-12)
    with raises_arg(ValueError, "check_factor"):
        jfm.bench.reference_solution(
            lambda t, x, a: -x, x32.astype(jnp.float64), rtol=1e-9, atol=1e-9, check_factor=2.0
        )
    with pytest.raises(ValueError, match="Nothing to sweep"):
        jfm.bench.solver_sweep(gaussian, [dfx.Euler()])
    with raises_arg(TypeError, "solvers"):
        jfm.bench.solver_sweep(gaussian, "Euler", steps=[4])
    with raises_arg(ValueError, "steps"):
        jfm.bench.solver_sweep(gaussian, [dfx.Euler()], steps=[0])
    with raises_arg(ValueError, "tolerances"):
        jfm.bench.solver_sweep(gaussian, [dfx.Heun()], tolerances=[-1e-3])
    with raises_arg(ValueError, "batch"):
        jfm.bench.solver_sweep(gaussian, [dfx.Euler()], steps=[4], batch="all")
    with raises_arg(TypeError, "problem"):
        jfm.bench.solver_sweep("p", [dfx.Euler()], steps=[4])
    with raises_arg(ValueError, "t0"):
        jfm.bench.gaussian_problem(MEAN, COV, PATH, jnp.zeros((2, 2)), t0=1.0, t1=0.5)
    with raises_arg(ValueError, "x0"):
        jfm.bench.gaussian_problem(MEAN, COV, PATH, jnp.zeros((2, 3)))
    with raises_arg(ValueError, "logp_points"):
        jfm.bench.gaussian_problem(MEAN, COV, PATH, gaussian.x0, logp_points=jnp.zeros((2, 3)))
    with raises_arg(TypeError, "steps"):
        jfm.bench.solver_sweep(gaussian, [dfx.Euler()], steps=[4.0])
    g = jfm.GaussianMixture(MEAN[None], COV[None], jnp.ones((1,)))
    with raises_arg(ValueError, "x0"):  # checked before the reference solve
        jfm.bench.mixture_problem(g, PATH, jnp.zeros((2, 3)), ref_rtol=1e-12, ref_atol=1e-12)
    with raises_arg(TypeError, "gmm"):
        jfm.bench.mixture_problem(None, PATH, gaussian.x0, ref_rtol=1e-12, ref_atol=1e-12)
    with raises_arg(ValueError, "reference.x1"):
        jfm.bench.Problem("p", gaussian.field, jnp.zeros((3, 2)), gaussian.reference)
    with raises_arg(ValueError, "logp_points"):
        jfm.bench.Problem(
            "p", gaussian.field, gaussian.x0, gaussian.reference, logp_points=gaussian.x0
        )
    with raises_arg(ValueError, "steps"):
        jfm.bench.fit_order([1, 2], [1.0])
    other = jfm.bench.SweepRecord(
        "other", "jfm", "Euler", "fixed", 4, None, 4.0, 1.0, 1.0, 1.0, 1.0
    )
    with raises_arg(ValueError, "records", "ONE problem"):
        jfm.bench.plot_work_precision([other, *recs])
