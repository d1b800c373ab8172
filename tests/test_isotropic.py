"""IsotropicPath from a radial CDF: Gaussian special case, inverse-CDF sampling, validation."""

import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.special as jsp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats

import jfm

from .helpers import raises_arg


def tanh_cdf(tau, r):
    # tanh(r / tau) written as 1 - 2 sigmoid(-2 r / tau): its autodiff r-derivative does not
    # cancel to zero in the tail (1 - tanh^2 does).
    return 1 - 2 * jax.nn.sigmoid(-2 * r / tau)


def exp_cdf(tau, r):
    return -jnp.expm1(-r / tau)


def gaussian_cdf(schedule, d, T=1.0):
    """The radius CDF of N(0, sigma^2 I_d) with sigma = schedule.sigma(jfm t = 1 - tau / T)."""

    def cdf(tau, r):
        s = schedule.sigma(1 - tau / T)
        return jsp.gammainc(0.5 * d, r**2 / (2 * s**2))

    return cdf


@pytest.mark.slow
def test_gaussian_special_case_is_affine_ve(getkey):
    d, sched = 3, jfm.VE(0.01, 5.0)
    affine = jfm.AffinePath(sched)
    iso = jfm.IsotropicPath(cdf=gaussian_cdf(sched, d), T=1.0)
    t = jnp.array([0.1, 0.5, 0.9, 0.3])
    x1 = jr.normal(getkey(), (4, d))
    x = jax.vmap(lambda a, b, k: affine.sample_conditional(a, b, key=k))(
        t, x1, jr.split(getkey(), 4)
    )

    def both(p):
        f = jax.vmap(p.conditional_velocity)(t, x, x1)
        return f, jax.vmap(p.conditional_log_density)(t, x, x1)

    (fi, li), (fa, la) = jax.jit(both)(iso), jax.jit(both)(affine)
    # Autodiff of the incomplete gamma vs the closed form sigma'/sigma (x - x1): the two
    # agree to the accuracy of jax's gammainc derivatives (~1e-10 relative).
    np.testing.assert_allclose(fi, fa, rtol=1e-9)
    np.testing.assert_allclose(li, la, rtol=1e-10)


@pytest.mark.parametrize("cdf", [tanh_cdf], ids=["tanh"])
def test_inverse_cdf_radius_ks(cdf, getkey):
    path = jfm.IsotropicPath(cdf=cdf, T=2.0)  # tau = T (1 - t) = 1 at t = 0.5
    keys = jr.split(getkey(), 2000)
    x = jax.jit(jax.vmap(lambda k: path.sample_conditional(0.5, jnp.zeros(3), key=k)))(keys)
    rho = np.linalg.norm(np.asarray(x), axis=1)
    ref = lambda s: np.asarray(cdf(1.0, jnp.asarray(s)))  # noqa: E731
    # Fixed key; a correct sampler fails this with probability 1e-3.
    assert scipy.stats.kstest(rho, ref).pvalue > 1e-3
    assert scipy.stats.kstest(rho, lambda s: ref(1.2 * s)).pvalue < 1e-6  # power


def test_density_normalized_2d():
    path = jfm.IsotropicPath(cdf=exp_cdf, T=1.0)
    x1 = jnp.array([0.3, -0.2])

    def radial(r):  # p(x) * 2 pi r along a ray
        x = x1 + jnp.array([r, 0.0])
        return float(jnp.exp(path.conditional_log_density(0.4, x, x1))) * 2 * np.pi * r

    total = scipy.integrate.quad(radial, 0, 50.0, limit=200)[0]
    np.testing.assert_allclose(total, 1.0, rtol=1e-8)  # quadrature accuracy


@pytest.mark.parametrize("dtype", [jnp.float64])  # float32 paths: test_poisson, test_continuity
def test_quantile_map_derivative_is_the_field(dtype, getkey):
    # d/dt of the quantile map (implicit-function derivative through the bisection) must
    # equal the autodiff field -(d_t psi / d_r psi) (x - x1) / r: two independent routes.
    path = jfm.IsotropicPath(cdf=tanh_cdf, T=3.0)
    x0 = path.prior_sample((5, 2), key=getkey(), dtype=dtype)
    x1 = jr.normal(getkey(), (5, 2), dtype)
    t = jnp.asarray(0.6, dtype)

    def dsample(a, b):
        return jax.jvp(lambda s: path.sample(s, a, b), (t,), (jnp.ones_like(t),))[1]

    dx = jax.jit(jax.vmap(dsample))(x0, x1)
    v = jax.jit(jax.vmap(path.target, (None, 0, 0)))(t, x0, x1)
    assert v.dtype == dtype
    tol = 1e-9 if dtype == jnp.float64 else 2e-3  # bisection resolution in float32
    np.testing.assert_allclose(dx, v, rtol=tol, atol=tol)
    # At t = 0 the map is the identity around x1; at t = 1 it lands on x1.
    x_start = jax.jit(jax.vmap(path.sample, (None, 0, 0)))(jnp.zeros((), dtype), x0, x1)
    np.testing.assert_allclose(x_start, x0 + x1, rtol=tol, atol=tol)
    np.testing.assert_array_equal(jax.vmap(path.sample, (None, 0, 0))(1.0, x0, x1), x1)


BAD_CDFS = {
    "limit at infinity": lambda tau, r: 0.5 * jnp.tanh(r / tau),
    "not zero at zero": lambda tau, r: 0.1 + 0.9 * jnp.tanh(r / tau),
    "non-monotone": lambda tau, r: 1 - jnp.exp(-r / tau) * jnp.cos(3 * r / tau),
    "no data limit": lambda tau, r: jnp.tanh(r / (tau + 1.0)),
}


@pytest.mark.parametrize("name", list(BAD_CDFS))
def test_bad_cdfs_are_rejected(name):
    report = jfm.check_cdf(BAD_CDFS[name], T=1.0)
    assert not report.ok and report.problems
    with raises_arg(ValueError, "cdf", "not a valid radial CDF"):
        jfm.IsotropicPath(cdf=BAD_CDFS[name])
    jfm.IsotropicPath(cdf=BAD_CDFS[name], validate=False)  # the user's explicit choice


@pytest.mark.slow
def test_good_cdfs_pass_and_interface(getkey):
    for cdf in (tanh_cdf, exp_cdf, gaussian_cdf(jfm.VE(0.01, 5.0), 2)):
        assert jfm.check_cdf(cdf, T=1.0).ok
    path = jfm.IsotropicPath(cdf=exp_cdf, T=2.0, event_shape=(2,))
    x = path.prior_sample((6, 2), key=getkey())
    assert x.shape == (6, 2)
    lp = jax.jit(jax.vmap(path.prior_log_prob))(x)
    np.testing.assert_allclose(
        lp, jax.vmap(path.conditional_log_density, (None, 0, 0))(0.0, x, jnp.zeros_like(x))
    )
    with raises_arg(ValueError, "kind"):
        path.target(0.5, x[0], x[1], kind="x0")
    with raises_arg(ValueError, "T"):
        jfm.IsotropicPath(cdf=exp_cdf, T=-1.0)
    with raises_arg(TypeError, "cdf"):
        jfm.IsotropicPath(cdf=3.0)
