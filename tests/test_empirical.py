"""The empirical (Green's-function) field, its loss, ODE sampling and short 2-D training."""

import functools

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from flax import nnx

import jfm

from .helpers import raises_arg
from .test_isotropic import exp_cdf, tanh_cdf

PATHS = {
    "condot": jfm.AffinePath(jfm.CondOT()),
    "pfgm": jfm.PoissonPath(r_max=4.0),
    "iso-tanh": jfm.IsotropicPath(cdf=tanh_cdf, T=2.0),
    "sb": jfm.SchrodingerBridgePath(0.5),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pfgm", "iso-tanh", "sb"])
def test_empirical_field_transports_the_empirical_marginal(name, getkey):
    # d/dt p_t + div(p_t u_t) = 0 for the MARGINAL p_t = mean_i p_t(x | y_i): checks the
    # softmax weights (the normalization by the time component) independently.
    path, data = PATHS[name], jr.normal(getkey(), (5, 2))
    field = jfm.empirical_field(path, data)

    def log_marginal(t, x):
        lp = jax.vmap(path.conditional_log_density, (None, None, 0))(t, x, data)
        return jax.nn.logsumexp(lp)

    for _ in range(4):
        t = jr.uniform(getkey(), (), minval=0.1, maxval=0.9)
        x = path.sample_conditional(t, data[0], key=getkey())
        lp0 = log_marginal(t, x)
        dq = jax.jvp(lambda s: jnp.exp(log_marginal(s, x) - lp0), (t,), (jnp.ones_like(t),))[1]
        pu = lambda s, y, a: jnp.exp(log_marginal(s, y) - lp0) * field(s, y, a)  # noqa: E731
        div = jfm.divergence_exact(pu, t, x, None)
        # float64 round-off relative to the size of the terms.
        assert abs(float(dq + div)) < 1e-10 * (abs(float(dq)) + abs(float(div)) + 1)


def test_x1_kind_converts_to_the_velocity(getkey):
    path, data = PATHS["pfgm"], jr.normal(getkey(), (7, 2))
    u = jfm.empirical_field(path, data)
    m = jfm.empirical_field(path, data, kind="x1")
    x = 3 * jr.normal(getkey(), (2,))
    # The Poisson velocity is affine in x1, so the posterior mean gives the marginal field.
    np.testing.assert_allclose(
        u(0.3, x), path.convert(0.3, x, m(0.3, x), src="x1", dst="velocity"), rtol=1e-12
    )


@pytest.mark.slow
def test_poisson_ode_lands_on_the_data(getkey):
    # The exact Poisson field of M charges, integrated by an adaptive diffrax solver from
    # prior draws, ends on the charges (the empirical distribution is the data end).
    path = jfm.PoissonPath(r_max=20.0, event_shape=(2,))
    data = jr.normal(getkey(), (6, 2))
    x0 = path.prior_sample((64, 2), key=getkey())
    sol = jfm.sample_ode(
        jfm.empirical_field(path, data),
        x0,
        solver=dfx.Tsit5(),
        rtol=1e-6,
        atol=1e-6,
        t1=1 - 1e-4,
    )
    dist = jnp.min(jnp.linalg.norm(sol.x1[:, None] - data[None], axis=-1), axis=1)
    # At t1 the conditional radius scale is r_max * 1e-4 = 2e-3: samples sit that close.
    assert float(jnp.quantile(dist, 0.9)) < 0.05
    assert int(sol.nfe) > 0


def test_losses_accept_the_new_paths(getkey):
    apply = lambda p, t, x, args: p * x  # noqa: E731
    x1 = jr.normal(getkey(), (8, 2))
    cases = [
        (PATHS["pfgm"], jfm.cfm_loss),
        (PATHS["iso-tanh"], jfm.cfm_loss),
        (jfm.IsotropicPath(cdf=exp_cdf), jfm.empirical_field_loss),
    ]
    for path, loss in cases:

        def mean_loss(p, path=path, loss=loss):
            return jnp.mean(loss(apply, p, x1, path=path, key=jr.key(0)))

        val, grad = jax.jit(jax.value_and_grad(mean_loss))(0.5)
        assert np.isfinite(float(val)) and float(grad) != 0
    # kind="x1" needs convert(): the isotropic path is a flow path, not a convertible one.
    with raises_arg(TypeError, "path", "kind"):
        jfm.empirical_field_loss(apply, 0.5, x1, path=PATHS["iso-tanh"], key=getkey(), kind="x1")
    with raises_arg(ValueError, "kind"):
        jfm.empirical_field_loss(apply, 0.5, x1, path=PATHS["pfgm"], key=getkey(), kind="x0")
    with raises_arg(TypeError, "path"):
        jfm.empirical_field(object(), x1)


class Squashed(eqx.Module):
    """The model on ``x / sqrt(1 + |x|^2 / 16)``: PFGM's heavy-tailed prior puts inputs
    at 100x the data scale, where an MLP only extrapolates linearly."""

    apply: eqx.Module

    def __call__(self, params, t, x, args=None):
        return self.apply(params, t, x / jnp.sqrt(1 + jnp.sum(x * x, -1, keepdims=True) / 16), args)


BLOBS = jfm.GaussianMixture.isotropic(
    jnp.array([[-2.5, 0.0], [2.5, 0.0]], jnp.float32), jnp.asarray(0.3, jnp.float32)
)


def _train_and_sample(path, loss, kind, steps, key):
    net = jfm.models.MLP(2, hidden_features=64, depth=2, rngs=nnx.Rngs(0))
    apply, params = jfm.split_model(net)
    apply = Squashed(apply)
    opt = optax.adam(3e-3)
    loss_fn = functools.partial(loss, path=path, kind=kind)
    step = jfm.make_train_step(apply, opt, loss_fn)
    data_fn = jax.jit(lambda k: BLOBS.sample(256, key=k))
    state, _ = jfm.fit(
        step,
        jfm.init_train_state(params, opt),
        data_fn,
        steps=steps,
        key=key,
        progress=False,
        log_every=steps,
    )
    field = jfm.field_from_model(apply, state.params, path=path, kind=kind)
    x0 = path.prior_sample((500, 2), key=jr.key(1), dtype=jnp.float32)
    sol = jfm.sample_ode(field, x0, solver=dfx.Dopri5(), rtol=1e-3, atol=1e-3, t1=1 - 1e-3)
    ref = BLOBS.sample(500, key=jr.key(2))
    prior_ed = float(jfm.metrics.energy_distance(x0, ref))
    return float(jfm.metrics.energy_distance(sol.x1, ref)), prior_ed, int(sol.nfe)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pfgm", "iso-tanh"])
def test_short_training_reaches_the_data(name):
    path, loss, kind = {
        "pfgm": (jfm.PoissonPath(r_max=6.0), jfm.empirical_field_loss, "x1"),
        "iso-tanh": (jfm.IsotropicPath(cdf=tanh_cdf, T=6.0), jfm.empirical_field_loss, "velocity"),
    }[name]
    ed, prior_ed, nfe = _train_and_sample(path, loss, kind, 300, jr.key(0))
    # Two data samples of 500 are ~0.01 apart in energy distance, the priors > 0.5, a 20 %
    # contraction of the data ~0.1. 300 steps of a small MLP: PFGM (x1-prediction) lands
    # within 0.1, the isotropic path (velocity) learns slower and is held to 0.15 (measured
    # 0.085 and 0.107 on this seed).
    bound = {"pfgm": 0.1, "iso-tanh": 0.15}[name]
    assert prior_ed > 0.5 and ed < bound, (name, ed, prior_ed, nfe)
