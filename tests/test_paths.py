"""Tests for schedules and the affine Gaussian path (jfm/_paths)."""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.integrate
import scipy.stats

import jfm

from .helpers import ALL_PATHS, ALL_SCHEDULES, PATH_IDS, raises_arg

KINDS = ["velocity", "x1", "x0", "score"]
# Interior times: conversions are singular at t=0 (1/alpha) and t=1 (1/sigma).
INTERIOR_TS = [0.1, 0.37, 0.5, 0.83]


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=PATH_IDS)
def test_closed_form_derivatives_match_jvp(schedule):
    ts = jnp.linspace(0.0, 0.99, 23)  # VP's d_sigma is infinite at t=1; stop short of it
    for fn, dfn in ((schedule.alpha, schedule.d_alpha), (schedule.sigma, schedule.d_sigma)):
        by_jvp = jax.vmap(lambda t: jax.jvp(fn, (t,), (jnp.ones_like(t),))[1])(ts)
        closed = jax.vmap(dfn)(ts)
        # Same maths, two evaluation orders: agreement to float64 round-off.
        np.testing.assert_allclose(closed, by_jvp, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", ALL_PATHS, ids=PATH_IDS)
def test_velocity_target_is_time_derivative_of_sample(path, getkey):
    x0, x1 = jr.normal(getkey(), (3,)), jr.normal(getkey(), (3,))
    for t in INTERIOR_TS:
        t = jnp.asarray(t)
        _, dxdt = jax.jvp(lambda s: path.sample(s, x0, x1), (t,), (jnp.ones_like(t),))
        # Definition of the conditional velocity: exact up to round-off.
        np.testing.assert_allclose(path.target(t, x0, x1, kind="velocity"), dxdt, rtol=1e-12)


@pytest.mark.parametrize("path", ALL_PATHS, ids=PATH_IDS)
def test_score_target_is_grad_of_conditional_log_density(path, getkey):
    x0, x1 = jr.normal(getkey(), (4,)), jr.normal(getkey(), (4,))
    for t in INTERIOR_TS:
        a, s = path.alpha(t), path.sigma(t)

        def logp(x):
            return jnp.sum(jax.scipy.stats.norm.logpdf(x, a * x1, s))

        x = path.sample(t, x0, x1)
        np.testing.assert_allclose(
            path.target(t, x0, x1, kind="score"), jax.grad(logp)(x), rtol=1e-10
        )


@pytest.mark.parametrize("path", ALL_PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("src", KINDS)
@pytest.mark.parametrize("dst", KINDS)
def test_convert_between_all_parametrizations(path, src, dst, getkey):
    x0, x1 = jr.normal(getkey(), (2, 3)), jr.normal(getkey(), (2, 3))
    for t in INTERIOR_TS:
        x = path.sample(t, x0, x1)
        pred = path.target(t, x0, x1, kind=src)
        out = path.convert(t, x, pred, src=src, dst=dst)
        # Linear algebra on O(1) numbers (VE's sigma up to 50): relative round-off only.
        np.testing.assert_allclose(out, path.target(t, x0, x1, kind=dst), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("path", ALL_PATHS, ids=PATH_IDS)
def test_boundaries_and_source(path, getkey):
    x0, x1 = jr.normal(getkey(), (5,)), jr.normal(getkey(), (5,))
    np.testing.assert_allclose(path.alpha(1.0), 1.0, atol=1e-12)
    if not isinstance(path.schedule, jfm.VE):
        np.testing.assert_allclose(path.sample(1.0, x0, x1), x1, atol=1e-12)
        np.testing.assert_allclose(path.sigma(1.0), 0.0, atol=1e-12)
        assert path.prior_std == 1.0
    else:
        np.testing.assert_allclose(path.sigma(1.0), path.schedule.sigma_min, rtol=1e-12)
        np.testing.assert_allclose(path.sigma(0.0), path.schedule.sigma_max, rtol=1e-12)
        assert path.prior_std == path.schedule.sigma_max
    # The source density against scipy.
    x = 2.0 * jr.normal(getkey(), (2, 3))
    ref = scipy.stats.norm(0.0, path.prior_std).logpdf(np.asarray(x)).sum()
    np.testing.assert_allclose(path.prior_log_prob(x), ref, rtol=1e-12)
    # prior_sample has the source's standard deviation (4 sigma of the sd estimate).
    z = path.prior_sample((20000, 2), key=getkey())
    assert z.shape == (20000, 2)
    sd_err = path.prior_std / math.sqrt(2 * 40000)
    assert abs(float(jnp.std(z)) - path.prior_std) < 4 * sd_err


def test_vp_matches_score_sde_integrals():
    # Independent check: alpha = exp(-1/2 int_0^s beta), sigma^2 = 1 - alpha^2, s = 1 - t.
    sched = jfm.VP(0.1, 20.0)
    path = jfm.AffinePath(sched)
    for t in [0.0, 0.25, 0.6, 0.95]:
        s = 1 - t
        integral, _ = scipy.integrate.quad(lambda u: 0.1 + u * (20.0 - 0.1), 0.0, s)
        a = math.exp(-0.5 * integral)
        np.testing.assert_allclose(path.alpha(t), a, rtol=1e-12)
        np.testing.assert_allclose(path.sigma(t), math.sqrt(1 - a * a), rtol=1e-12)
    np.testing.assert_allclose(path.alpha(0.0), math.exp(-(20.0 + 0.1) / 4), rtol=1e-12)


def test_cosine_is_variance_preserving_and_polynomial_one_is_condot():
    cos, poly, ot = (jfm.AffinePath(s) for s in (jfm.Cosine(), jfm.Polynomial(1.0), jfm.CondOT()))
    for t in [0.0, 0.3, 0.9]:
        np.testing.assert_allclose(cos.alpha(t) ** 2 + cos.sigma(t) ** 2, 1.0, rtol=1e-14)
        np.testing.assert_allclose(poly.alpha(t), ot.alpha(t), rtol=1e-14)
        np.testing.assert_allclose(poly.d_sigma(t), ot.d_sigma(t), rtol=1e-14)


def test_custom_schedule_uses_jvp_derivatives():
    path = jfm.AffinePath(jfm.CustomSchedule(lambda t: t**3, lambda t: 1 - t**3))
    for t in [0.2, 0.7]:
        np.testing.assert_allclose(path.d_alpha(t), 3 * t**2, rtol=1e-13)
        np.testing.assert_allclose(path.d_sigma(t), -3 * t**2, rtol=1e-13)


def test_jit_vmap_grad_and_traced_parameters(getkey):
    x0, x1 = jr.normal(getkey(), (7, 2)), jr.normal(getkey(), (7, 2))
    ts = jr.uniform(getkey(), (7,))
    path = jfm.AffinePath(jfm.Cosine())
    batched = jax.jit(jax.vmap(path.sample))(ts, x0, x1)
    by_hand = jnp.sin(jnp.pi * ts / 2)[:, None] * x1 + jnp.cos(jnp.pi * ts / 2)[:, None] * x0
    np.testing.assert_allclose(batched, by_hand, rtol=1e-13)

    # A schedule with traced parameters is built inside jit (validation skipped there) and
    # differentiated: d alpha(t)/d beta_max against a central finite difference.
    def alpha_of(bmax, t):
        return jfm.AffinePath(jfm.VP(0.1, bmax)).alpha(t)

    g = jax.jit(jax.grad(alpha_of))(15.0, 0.4)
    h = 1e-5
    fd = (alpha_of(15.0 + h, 0.4) - alpha_of(15.0 - h, 0.4)) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-7)  # central difference error O(h^2)


@pytest.mark.parametrize("path", ALL_PATHS, ids=PATH_IDS)
def test_float32_stays_float32(path):
    x0 = jnp.ones(3, jnp.float32)
    x1 = jnp.full(3, 0.5, jnp.float32)
    t = jnp.asarray(0.5, jnp.float32)
    assert path.sample(t, x0, x1).dtype == jnp.float32
    for kind in KINDS:
        assert path.target(t, x0, x1, kind=kind).dtype == jnp.float32
        assert path.convert(t, x0, x1, src=kind, dst="velocity").dtype == jnp.float32
    assert path.prior_log_prob(x0).dtype == jnp.float32


def test_schedule_validation_errors():
    with pytest.raises(ValueError, match="beta_min"):
        jfm.VP(5.0, 1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        jfm.VE(1.0, 0.5)
    with pytest.raises(ValueError, match="`n`"):
        jfm.Polynomial(0.0)
    with pytest.raises(ValueError, match="alpha\\(1\\) must be 1"):
        jfm.AffinePath(jfm.CustomSchedule(lambda t: 0.5 * t, lambda t: 1 - t))
    with pytest.raises(ValueError, match="non-decreasing"):
        jfm.AffinePath(
            jfm.CustomSchedule(lambda t: t + 0.2 * jnp.sin(2 * jnp.pi * t), lambda t: 1 - t)
        )
    with pytest.raises(ValueError, match="non-increasing"):
        jfm.AffinePath(jfm.CustomSchedule(lambda t: t, lambda t: (1 - t) * (1 + 2 * t)))
    with pytest.raises(ValueError, match="sigma must be > 0"):
        jfm.AffinePath(jfm.CustomSchedule(lambda t: t, lambda t: 1 - jnp.minimum(2 * t, 1.0)))
    with pytest.raises(TypeError, match="schedule"):
        jfm.AffinePath("condot")
    with pytest.raises(TypeError, match="alpha_fn"):
        jfm.CustomSchedule(1.0, lambda t: t)


def test_path_argument_errors(getkey):
    path = jfm.AffinePath(jfm.CondOT())
    x = jnp.ones(3)
    with pytest.raises(ValueError, match="`t` must lie in"):
        path.sample(1.5, x, x)
    with raises_arg(ValueError, "t", "scalar"):
        path.sample(jnp.ones(3), x, x)
    with raises_arg(TypeError, "t"):
        path.sample("0.5", x, x)
    with raises_arg(ValueError, "x1"):
        path.sample(0.5, x, jnp.ones(4))
    with raises_arg(TypeError, "x1", "floating dtype"):
        path.sample(0.5, x, jnp.ones(3, jnp.int32))
    with pytest.raises(ValueError, match="`kind`"):
        path.target(0.5, x, x, kind="eps")
    with pytest.raises(ValueError, match="`src`"):
        path.convert(0.5, x, x, src="noise", dst="x1")
    with pytest.raises(ValueError, match="`dst`"):
        path.convert(0.5, x, x, src="x1", dst="v")
    with pytest.raises(TypeError, match="key"):
        path.prior_sample((2, 3), key=0)
    with pytest.raises(TypeError, match="key"):
        path.prior_sample((2, 3), key=None)
    with pytest.raises(TypeError, match="shape"):
        path.prior_sample(3, key=getkey())


# -- the SDE view on the schedules ----------------------------------------------------------

SDE_SCHEDULES = ALL_SCHEDULES + [jfm.CustomSchedule(lambda t: t**3, lambda t: 1 - t**3)]
SDE_IDS = PATH_IDS + ["custom"]


def _general_sde(schedule, t):
    """f = -a'/a and g^2 = 2 (a'/a) s^2 - 2 s s', every derivative by jax.jvp."""
    d = lambda fn: jax.jvp(fn, (t,), (jnp.ones_like(t),))[1]  # noqa: E731
    a, s, da, ds = schedule.alpha(t), schedule.sigma(t), d(schedule.alpha), d(schedule.sigma)
    return -da / a, 2 * da / a * s**2 - 2 * s * ds


@pytest.mark.parametrize("schedule", SDE_SCHEDULES, ids=SDE_IDS)
def test_sde_coefficients_match_jvp_formula(schedule):
    ts = jnp.linspace(0.05, 0.95, 19)  # alpha(0) = 0 (CondOT-like) and VP's s'(1) are singular
    f, g2 = jax.vmap(lambda t: _general_sde(schedule, t))(ts)
    # Closed forms (or the default formula, for CustomSchedule) vs autodiff: round-off.
    np.testing.assert_allclose(jax.vmap(schedule.drift_coeff)(ts), f, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(jax.vmap(schedule.diffusion_sq)(ts), g2, rtol=1e-11, atol=1e-12)


def test_diffusion_sde_keeps_the_closed_forms():
    # The numbers DiffusionSDE gave when it chose its formula by schedule type.
    ts = jnp.linspace(0.0, 1.0, 11)
    vp, ve = jfm.VP(0.1, 20.0), jfm.VE(0.01, 50.0)
    sde = jfm.DiffusionSDE(jfm.AffinePath(vp))
    beta = 0.1 + (1 - ts) * (20.0 - 0.1)
    np.testing.assert_array_equal(jax.vmap(sde.drift_coeff)(ts), -0.5 * beta)  # same ops
    np.testing.assert_array_equal(jax.vmap(sde.diffusion)(ts), jnp.sqrt(beta))
    sde = jfm.DiffusionSDE(jfm.AffinePath(ve))
    old = jax.vmap(ve.sigma)(ts) * jnp.sqrt(2 * jnp.log(50.0 / 0.01))
    np.testing.assert_array_equal(jax.vmap(sde.drift_coeff)(ts), jnp.zeros_like(ts))
    # sqrt(s^2 c) now, s sqrt(c) before: float64 round-off.
    np.testing.assert_allclose(jax.vmap(sde.diffusion)(ts), old, rtol=1e-14)
    # The other schedules used the general formula: same numbers up to round-off.
    inner = jnp.linspace(0.1, 0.9, 9)
    for schedule in (jfm.CondOT(), jfm.Cosine(), jfm.Polynomial(2.0)):
        sde = jfm.DiffusionSDE(jfm.AffinePath(schedule))
        f, g2 = jax.vmap(lambda t, s=schedule: _general_sde(s, t))(inner)
        np.testing.assert_allclose(jax.vmap(sde.drift_coeff)(inner), f, rtol=1e-12)
        np.testing.assert_allclose(jax.vmap(sde.diffusion)(inner), jnp.sqrt(g2), rtol=1e-12)


# -- the path interface -----------------------------------------------------------------------


def test_path_hierarchy_and_x0_sample(getkey):
    iso = jfm.IsotropicPath(cdf=lambda tau, r: -jnp.expm1(-r / tau))
    sb = jfm.SchrodingerBridgePath(0.5)
    for path in (*ALL_PATHS, jfm.PoissonPath(r_max=2.0)):
        assert isinstance(path, jfm.AbstractConvertiblePath)
    assert isinstance(iso, jfm.AbstractFlowPath) and not isinstance(
        iso, jfm.AbstractConvertiblePath
    )
    assert isinstance(sb, jfm.AbstractPath) and not isinstance(sb, jfm.AbstractFlowPath)
    # sample_and_target of a flow path is (sample, target); the key is unused.
    path = jfm.AffinePath(jfm.Cosine())
    x0, x1 = jr.normal(getkey(), (3,)), jr.normal(getkey(), (3,))
    xt, ut = path.sample_and_target(0.3, x0, x1, key=getkey(), kind="x1")
    np.testing.assert_array_equal(xt, path.sample(0.3, x0, x1))
    np.testing.assert_array_equal(ut, path.target(0.3, x0, x1, kind="x1"))
    # AffinePath's x0 is standard normal whatever the source scale (VE: prior_std = 50).
    ve = jfm.AffinePath(jfm.VE(0.01, 50.0))
    key = getkey()
    z, prior = ve.x0_sample((4000, 2), key=key), ve.prior_sample((4000, 2), key=key)
    np.testing.assert_allclose(prior, 50.0 * z, rtol=1e-15)
    assert abs(float(jnp.std(z)) - 1) < 4 / math.sqrt(2 * 8000)  # 4 SE of the sd
    # event_shape, when given, is checked by the samplers.
    with raises_arg(ValueError, "shape", "event_shape"):
        jfm.AffinePath(jfm.CondOT(), event_shape=(2,)).prior_sample((3, 4), key=key)
    assert jfm.AffinePath(jfm.CondOT(), event_shape=(2,)).x0_sample((5, 2), key=key).shape == (
        5,
        2,
    )
