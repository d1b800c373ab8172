"""dsm_loss, eps_loss, x1_loss (jfm/_losses/score.py) and training with them."""

import functools

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from flax import nnx

import jfm

from .helpers import raises_arg

GMM = jfm.GaussianMixture.isotropic(jnp.array([[-2.0, 0.0], [2.0, 1.0]]), 0.5)
PATHS = [jfm.AffinePath(jfm.VP(0.1, 20.0)), jfm.AffinePath(jfm.CondOT())]


def exact_apply(path, kind, scale=1.0):
    """Batch-first apply of the exact marginal field of parametrization ``kind``."""
    f = GMM.field(path, kind)
    return lambda p, t, x, args: scale * jax.vmap(f, in_axes=(0, 0, None))(t, x, None)


@pytest.mark.parametrize("path", PATHS, ids=["vp", "condot"])
def test_losses_agree_under_likelihood_weighting(path, getkey):
    # The three losses with "likelihood" weighting are the same number for models that
    # are conversions of each other (here: the exact fields), example by example.
    x1 = GMM.sample(64, key=getkey())
    key = getkey()
    kw = dict(path=path, key=key, weighting="likelihood", t_max=0.95)
    a = jfm.dsm_loss(exact_apply(path, "score"), None, x1, **kw)
    b = jfm.eps_loss(exact_apply(path, "x0"), None, x1, **kw)
    c = jfm.x1_loss(exact_apply(path, "x1"), None, x1, **kw)
    d = jfm.dsm_loss(exact_apply(path, "x0"), None, x1, kind="x0", **kw)
    for other in (b, c, d):
        np.testing.assert_allclose(a, other, rtol=1e-8)  # float64, exact identities
    # sigma2-weighted DSM == unit-weighted eps loss (DDPM's simple loss)
    e = jfm.dsm_loss(exact_apply(path, "score"), None, x1, path=path, key=key, t_max=0.95)
    f = jfm.eps_loss(exact_apply(path, "x0"), None, x1, path=path, key=key, t_max=0.95)
    np.testing.assert_allclose(e, f, rtol=1e-8)


def test_losses_are_one_weighted_core(getkey):
    # eps_loss / x1_loss with unit weight are cfm_loss with kind "x0" / "x1", bit for bit
    # (one core, the same key splits); dsm_loss's weight multiplies the same regression.
    path = PATHS[0]
    x1 = GMM.sample(16, key=getkey())
    key = getkey()
    apply = lambda p, t, x, args: p * x  # noqa: E731
    for name, loss in (("x0", jfm.eps_loss), ("x1", jfm.x1_loss)):
        np.testing.assert_array_equal(
            loss(apply, 0.5, x1, path=path, key=key),
            jfm.cfm_loss(apply, 0.5, x1, path=path, key=key, kind=name),
        )
    t = jr.uniform(getkey(), (16,), minval=0.05, maxval=0.95)
    score = jfm.cfm_loss(apply, 0.5, x1, path=path, key=key, kind="score", t=t)
    weighted = jfm.dsm_loss(apply, 0.5, x1, path=path, key=key, t=t, weighting=lambda s: s**3)
    np.testing.assert_allclose(weighted, t**3 * score, rtol=1e-14)  # one multiplication
    # "likelihood" weighting on the score error is the schedule's g^2 = diffusion_sq.
    lik = jfm.dsm_loss(apply, 0.5, x1, path=path, key=key, t=t, weighting="likelihood")
    g2 = jax.vmap(jfm.DiffusionSDE(path).diffusion)(t) ** 2
    np.testing.assert_allclose(lik, g2 * score, rtol=1e-12)  # sqrt then square: round-off


def test_exact_score_minimises_dsm(getkey):
    # d/dc E[loss(s* + c s*)] at c = 0 vanishes (the marginal score is the minimiser);
    # for a wrong model (0.7 s*) it does not. Per-example derivatives, mean within 4 SE.
    path = PATHS[0]
    x1 = GMM.sample(4000, key=getkey())
    key = getkey()

    def deriv(scale):
        loss = lambda c: jfm.dsm_loss(
            exact_apply(path, "score", scale * (1 + c)), None, x1, path=path, key=key
        )
        return jax.jvp(loss, (0.0,), (1.0,))[1]

    g = deriv(1.0)
    se = float(jnp.std(g)) / np.sqrt(g.shape[0])
    assert abs(float(jnp.mean(g))) < 4 * se, (float(jnp.mean(g)), se)
    g_wrong = deriv(0.7)
    assert float(jnp.mean(g_wrong)) < -4 * float(jnp.std(g_wrong)) / np.sqrt(g.shape[0])


def test_loss_errors():
    apply = lambda p, t, x, args: x
    x1 = jnp.ones((4, 2))
    path = PATHS[0]
    with raises_arg(TypeError, "key"):
        jfm.dsm_loss(apply, None, x1, path=path, key=None)
    with raises_arg(ValueError, "weighting"):
        jfm.dsm_loss(apply, None, x1, path=path, key=jr.key(0), weighting="elbo")
    with raises_arg(ValueError, "t_max"):
        jfm.eps_loss(apply, None, x1, path=path, key=jr.key(0), t_max=1.5)
    with raises_arg(ValueError, "apply", "shape"):
        jfm.dsm_loss(lambda p, t, x, a: x[:, :1], None, x1, path=path, key=jr.key(0), kind="x0")
    with raises_arg(TypeError, "path"):
        jfm.x1_loss(apply, None, x1, path=jfm.VP(), key=jr.key(0))


@pytest.mark.slow
def test_dsm_and_cfm_models_reach_moons():
    # A small MLP trained with DSM (noise parametrization, VP) and one with CFM (CondOT),
    # each sampled by ODE (Heun) and by SDE (Euler-Maruyama, score from the model).
    steps = 800
    floor = float(jfm.metrics.energy_distance(jfm.data.moons(500, key=jr.key(3)),
                                      jfm.data.moons(500, key=jr.key(4))))  # fmt: skip
    ref = jfm.data.moons(500, key=jr.key(3))
    x0 = jr.normal(jr.key(2), (500, 2))
    noise = float(jfm.metrics.energy_distance(x0, ref))
    vp, ot = PATHS
    cases = [
        (vp, functools.partial(jfm.dsm_loss, path=vp, kind="x0", t_max=0.999), "x0",
         jfm.DiffusionSDE(vp).diffusion),
        (ot, functools.partial(jfm.cfm_loss, path=ot), "velocity", lambda t: 1.0 - t),
    ]  # fmt: skip
    for path, loss, kind, g in cases:
        net = jfm.models.MLP(2, hidden_features=64, depth=2, rngs=nnx.Rngs(0))
        apply, params = jfm.split_model(net)
        opt = optax.adam(optax.cosine_decay_schedule(3e-3, steps))
        step = jfm.make_train_step(apply, opt, loss)  # unchanged train step
        state, _ = jfm.fit(step, jfm.init_train_state(params, opt),
                           lambda k: jfm.data.moons(256, key=k), steps=steps, key=jr.key(1),
                           progress=False)  # fmt: skip
        v = jfm.field_from_model(apply, state.params, path=path, kind=kind)
        s = jfm.score_from_velocity(v, path)
        ode = jfm.sample_ode(v, x0, solver=dfx.Heun(), steps=40, t1=0.999)
        sde = jfm.sample_sde(v, s, x0, diffusion=g, key=jr.key(5), solver=dfx.Euler(),
                             steps=80, t1=0.999)  # fmt: skip
        for x in (ode.x1, sde.x1):
            d = float(jfm.metrics.energy_distance(x, ref))
            # 4x the floor (~0.07) vs ~0.19 for the noise itself: training budget is small
            assert d < 4 * floor and d < 0.5 * noise, (kind, d, floor, noise)
