"""Few-NFE solvers: exactness on a point mass, exact NFE, convergence order on the exact
Gaussian-mixture field, batching, stochastic churn and argument errors.

The comparisons with diffusers and k-diffusion are in ``test_solvers_reference.py``.
"""

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jfm

from .helpers import CallCounter, raises_arg

CONDOT = jfm.AffinePath(jfm.CondOT())
VP = jfm.AffinePath(jfm.VP())
COSINE = jfm.AffinePath(jfm.Cosine())


def solvers(path):
    return {
        "ddim": jfm.DPMSolverPP(path, 1),
        "dpmpp-2m": jfm.DPMSolverPP(path, 2),
        "dpmpp-3m": jfm.DPMSolverPP(path, 3),
        "dpmpp-2s": jfm.DPMSolverPP2S(path),
        "unipc-2": jfm.UniPC(path, 2),
        "unipc-2-bh1": jfm.UniPC(path, 2, variant="bh1"),
        "unip-2": jfm.UniPC(path, 2, corrector=False),
        "unipc-3": jfm.UniPC(path, 3),
        "deis-2": jfm.DEIS(path, 2),
        "deis-3": jfm.DEIS(path, 3),
        "edm": jfm.EDM(path),
    }


def point_mass_velocity(path, m):
    """The exact velocity of data at the single point ``m``: ``D = m`` everywhere."""
    sch = path.schedule

    def field(t, x, args):
        a, s = sch.alpha(t), sch.sigma(t)
        return sch.d_alpha(t) * m + sch.d_sigma(t) * (x - a * m) / s

    return field


FAST = ("dpmpp-3m", "unipc-2", "edm")
EXACT = [
    pytest.param(p, n, id=f"{pid}-{n}", marks=() if (p is VP and n in FAST) else pytest.mark.slow)
    for p, pid in ((VP, "vp"), (COSINE, "cosine"), (CONDOT, "condot"))
    for n in solvers(VP)
]


@pytest.mark.parametrize("path,name", EXACT)
def test_exact_on_a_point_mass(path, name):
    # With D constant the exponential integrators and EDM's Heun (in x / alpha against
    # rho) are exact on any grid; fixed-step solvers in t on the velocity are not (except
    # on CondOT, whose point-mass flow is a straight line): see test_euler_not_exact.
    m = jnp.array([1.5, -0.5])
    x0 = jr.normal(jr.key(0), (4, 2))
    ts = jfm.time_grid("uniform", 5, t0=0.0, t1=0.9)
    sol = jfm.sample_ode(point_mass_velocity(path, m), x0, solver=solvers(path)[name], ts=ts)
    np.testing.assert_allclose(sol.x1, _point_mass_exact(path, m, x0, 0.9), rtol=0, atol=1e-12)


def _point_mass_exact(path, m, x0, t):
    eps = (x0 - path.alpha(0.0) * m[None]) / path.sigma(0.0)
    return path.alpha(t) * m[None] + path.sigma(t) * eps


def test_euler_not_exact():
    m = jnp.array([1.5, -0.5])
    x0 = jr.normal(jr.key(0), (4, 2))
    ts = jfm.time_grid("uniform", 5, t0=0.0, t1=0.9)
    euler = jfm.sample_ode(point_mass_velocity(VP, m), x0, solver=dfx.Euler(), ts=ts).x1
    assert float(jnp.max(jnp.abs(euler - _point_mass_exact(VP, m, x0, 0.9)))) > 1e-2


def test_exact_nfe_at_the_ends():
    # CondOT from t = 0 (alpha = 0) to t = 1 (sigma = 0): the last step is the one-call
    # denoising step; EDM's first step (infinite rho) is an Euler step. Counted against a
    # host callback.
    m = jnp.array([0.5, 1.0])
    counter = CallCounter()
    field = counter.wrap(point_mass_velocity(CONDOT, m))
    x0 = jr.normal(jr.key(1), (3, 2))
    n = 6
    ts = jfm.time_grid("uniform", n)
    want = {"dpmpp-2s": 2 * n - 1, "edm": 2 * n - 2}
    for name in ("dpmpp-2s", "unipc-2", "edm"):
        solver = solvers(CONDOT)[name]
        sol, calls = counter.count(jfm.sample_ode, field, x0, solver=solver, ts=ts)
        assert int(sol.nfe) == calls == want.get(name, n), name
        # ... and the denoising step lands on the data point.
        np.testing.assert_allclose(sol.x1, jnp.broadcast_to(m, x0.shape), atol=1e-12)


@pytest.fixture(scope="module")
def gmm():
    means = jnp.array([[1.0, 0.0], [-1.0, 0.5]])
    return jfm.GaussianMixture(means, jnp.stack([0.3 * jnp.eye(2)] * 2), jnp.array([0.5, 0.5]))


def _order(solver, field, x0, path, ta, tb, ns, start=None, ref=None):
    if ref is None:
        ref = jfm.sample_ode(
            field, x0, solver=dfx.Dopri8(), rtol=1e-13, atol=1e-13, t0=ta, t1=tb,
            max_steps=10_000,
        ).x1  # fmt: skip
    errs = []
    for n in ns:
        ts = jfm.time_grid("logsnr", n, path=path, t0=ta, t1=tb)
        if start is not None:  # refine the first step to h^start (h = the log-SNR step)
            lam = jfm.log_snr(path, ts)
            h = float(lam[1] - lam[0])
            t1 = jfm.time_at_log_snr(path, lam[0] + h**start)
            ts = jnp.concatenate([ts[:1], t1[None], ts[1:]])
        sol = jfm.sample_ode(field, x0, solver=solver, ts=ts)
        errs.append(float(jnp.sqrt(jnp.mean((sol.x1 - ref) ** 2))))
    return -np.polyfit(np.log(ns), np.log(errs), 1)[0]


ORDERS = {"dpmpp-2m": 2, "unipc-2": 3, "deis-2": 2, "edm": 2, "dpmpp-2s": 2}
# (solver, theoretical global order, grid sizes, first-step refinement, tolerance). Theory:
# DDIM 1; DPM-Solver++(2M), (2S), DEIS-2, EDM 2; UniPC-p p + 1 with its corrector, p
# without. Third-order methods started by DDIM (local error h^2) converge at order 2; with
# the first step refined to h^(3/2) they reach order 3 (UniPC-3 with its corrector: 4),
# measured further out (N = 64, 128), where the slope has settled.
SECOND = {"ddim": 1, "unip-2": 2, "unipc-2-bh1": 3, **ORDERS}
THIRD = {"dpmpp-3m": 3, "deis-3": 3, "unipc-3": 4}
ORDER_CASES = [(name, want, (16, 32), None, 0.2) for name, want in SECOND.items()] + [
    (name, want, (64, 128), 1.5, 0.3) for name, want in THIRD.items()
]


@pytest.fixture(scope="module")
def order_problems(gmm):
    # One Dopri8 reference (1e-13) per path, on an interior interval, shared by the cases.
    out = {}
    for path, (ta, tb) in ((VP, (0.3, 0.9)), (CONDOT, (0.2, 0.9))):
        field = gmm.velocity_field(path)
        x0 = jr.normal(jr.key(3), (8, 2))
        ref = jfm.sample_ode(
            field, x0, solver=dfx.Dopri8(), rtol=1e-13, atol=1e-13, t0=ta, t1=tb,
            max_steps=10_000,
        ).x1  # fmt: skip
        out[path] = (field, x0, ta, tb, ref)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("path", [VP, CONDOT], ids=["vp", "condot"])
@pytest.mark.parametrize("name,want,ns,start,tol", ORDER_CASES, ids=[c[0] for c in ORDER_CASES])
def test_convergence_order(order_problems, path, name, want, ns, start, tol):
    # Global order on an interior interval: the slope of log error against log N between
    # N and 2N log-SNR steps, against a Dopri8 reference at 1e-13.
    field, x0, ta, tb, ref = order_problems[path]
    slope = _order(solvers(path)[name], field, x0, path, ta, tb, list(ns), start=start, ref=ref)
    assert abs(slope - want) < tol, (name, slope)


@pytest.mark.slow
def test_vmap_batch_equals_joint(gmm):
    # Fixed grids: one solve per example gives the joint solve's numbers.
    field = gmm.velocity_field(CONDOT)
    x0 = jr.normal(jr.key(4), (5, 2))
    ts = jfm.time_grid("logsnr", 6, path=CONDOT)
    solver = jfm.UniPC(CONDOT, 2)
    joint = jfm.sample_ode(field, x0, solver=solver, ts=ts)
    each = jfm.sample_ode(field, x0, solver=solver, ts=ts, batch="vmap")
    np.testing.assert_allclose(each.x1, joint.x1, rtol=1e-13, atol=1e-13)
    assert each.nfe.shape == (5,) and bool(jnp.all(each.nfe == joint.nfe))
    # jit of the whole call, and another parametrization of the same field.
    x1_field = gmm.field(CONDOT, "x1")
    f = jax.jit(
        lambda x: jfm.sample_ode(x1_field, x, solver=jfm.UniPC(CONDOT, 2, pred="x1"), ts=ts)
    )
    np.testing.assert_allclose(f(x0).x1, joint.x1, rtol=1e-10, atol=1e-10)


@pytest.mark.slow
def test_edm_churn(gmm):
    field = gmm.velocity_field(VP)
    x0 = jr.normal(jr.key(5), (6, 2))
    ts = jfm.time_grid("edm", 5, path=VP)
    solver = jfm.EDM(VP, gamma=0.3, s_tmin=0.05, s_tmax=50.0)
    a = jfm.sample_ode(field, x0, solver=solver, ts=ts, key=jr.key(0))
    b = jfm.sample_ode(field, x0, solver=solver, ts=ts, key=jr.key(0))
    c = jfm.sample_ode(field, x0, solver=solver, ts=ts, key=jr.key(1))
    np.testing.assert_array_equal(a.x1, b.x1)
    assert float(jnp.max(jnp.abs(a.x1 - c.x1))) > 1e-3
    assert int(a.nfe) == 2 * 5 - 1 and bool(a.success)


def test_solver_errors():
    x0 = jnp.zeros((2, 2))
    field = point_mass_velocity(VP, jnp.zeros(2))
    with raises_arg(TypeError, "path"):
        jfm.DPMSolverPP(jfm.PoissonPath(r_max=10.0, aug_dim=1), 2)
    with raises_arg(ValueError, "order"):
        jfm.DPMSolverPP(VP, 4)
    with raises_arg(ValueError, "order"):
        jfm.DEIS(VP, 0)
    with raises_arg(ValueError, "variant"):
        jfm.UniPC(VP, 2, variant="bh3")
    with raises_arg(ValueError, "pred"):
        jfm.UniPC(VP, 2, pred="noise")
    with raises_arg(ValueError, "gamma"):
        jfm.EDM(VP, gamma=-0.1)
    with raises_arg(ValueError, "solver"):  # no error estimate: no adaptive steps
        jfm.sample_ode(field, x0, solver=jfm.DPMSolverPP(VP, 2), rtol=1e-3, atol=1e-3)
    with raises_arg(TypeError, "key"):
        jfm.sample_ode(field, x0, solver=jfm.EDM(VP, gamma=0.2), steps=3)
    with raises_arg(ValueError, "key"):
        jfm.sample_ode(field, x0, solver=jfm.EDM(VP), steps=3, key=jr.key(0))


def test_float32_samples_stay_float32():
    # With x64 on, the path's coefficients are float64; the solver state keeps y's dtype
    # (under JAX's standard promotion, which users have; the suite's strict mode refuses
    # the float32/float64 mix inside UniPC's small solves).
    m = jnp.array([0.5, 1.0], jnp.float32)
    x0 = jr.normal(jr.key(7), (3, 2), jnp.float32)
    ts = jfm.time_grid("edm", 4, path=VP, dtype=jnp.float32)
    with jax.numpy_dtype_promotion("standard"):
        for solver in (jfm.UniPC(VP, 2), jfm.DPMSolverPP(VP, 2)):
            sol = jfm.sample_ode(point_mass_velocity(VP, m), x0, solver=solver, ts=ts)
            assert sol.x1.dtype == jnp.float32
            np.testing.assert_allclose(sol.x1, jnp.broadcast_to(m, x0.shape), atol=1e-5)
