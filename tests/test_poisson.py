"""PoissonPath (PFGM / PFGM++): ratio-trick radius, density, coupling form, conversions."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats

import jfm

from .helpers import DTYPES, raises_arg


def radius_cdf(rho, n, aug):
    """P(||z|| <= rho) for the ratio trick: rho^2 / (1 + rho^2) ~ Beta(n/2, aug/2)."""
    return scipy.special.betainc(0.5 * n, 0.5 * aug, rho**2 / (1 + rho**2))


@pytest.mark.parametrize("d", [2, 16])
def test_ratio_trick_radius_ks(d, getkey):
    # r(t) = r_max (1 - t) = 1 at t = 0.5 with r_max = 2: the radius is ||z|| itself.
    path = jfm.PoissonPath(r_max=2.0)
    keys = jr.split(getkey(), 4000)
    x = jax.jit(jax.vmap(lambda k: path.sample_conditional(0.5, jnp.zeros(d), key=k)))(keys)
    rho = np.linalg.norm(np.asarray(x), axis=1)
    # The Beta form of the CDF against direct quadrature of the stated density
    # rho^{d-1} / (1 + rho^2)^{(d+1)/2} (independent check of the reference itself).
    dens = lambda s: s ** (d - 1) / (1 + s * s) ** (0.5 * (d + 1))  # noqa: E731
    z = scipy.integrate.quad(dens, 0, np.inf)[0]
    for q in (0.5, 2.0, 7.0):
        np.testing.assert_allclose(scipy.integrate.quad(dens, 0, q)[0] / z, radius_cdf(q, d, 1))
    # Fixed key; a correct sampler fails this with probability 1e-3.
    assert scipy.stats.kstest(rho, lambda s: radius_cdf(s, d, 1)).pvalue > 1e-3
    # The test has power: the CDF of another D is rejected.
    assert scipy.stats.kstest(rho, lambda s: radius_cdf(s, d, 2)).pvalue < 1e-6
    # Directions: uniform, so the mean unit vector is ~N(0, 1/(d n)) per coordinate.
    u = np.asarray(x) / rho[:, None]
    assert np.max(np.abs(u.mean(0))) < 5 / np.sqrt(4000 * d)  # 5-sigma bound


def test_density_is_multivariate_t(getkey):
    # p_r(x | x1) is Student-t with D dof, scale r / sqrt(D) (closed form from scipy).
    n, aug, r_max, t = 3, 5, 4.0, 0.3
    path = jfm.PoissonPath(r_max=r_max, aug_dim=aug)
    x1 = jr.normal(getkey(), (n,))
    r = r_max * (1 - t)
    dist = scipy.stats.multivariate_t(np.asarray(x1), (r**2 / aug) * np.eye(n), df=aug)
    for _ in range(3):
        x = x1 + 3 * jr.normal(getkey(), (n,))
        got = float(path.conditional_log_density(t, x, x1))
        np.testing.assert_allclose(got, dist.logpdf(np.asarray(x)), rtol=1e-12)
    # The prior is the same law at r_max around the origin.
    x = jr.normal(getkey(), (n,))
    prior = scipy.stats.multivariate_t(np.zeros(n), (r_max**2 / aug) * np.eye(n), df=aug)
    np.testing.assert_allclose(float(path.prior_log_prob(x)), prior.logpdf(np.asarray(x)))


def test_large_aug_dim_tends_to_gaussian(getkey):
    # PFGM++: D -> inf with r = sigma sqrt(D) gives N(x1, sigma^2 I), with an O(1/D) error.
    sigma = 0.7
    x1, x = jr.normal(getkey(), (2,)), jr.normal(getkey(), (2,))
    gauss = scipy.stats.multivariate_normal(np.asarray(x1), sigma**2 * np.eye(2))
    errs = []
    for aug in (1000, 10000):
        path = jfm.PoissonPath(r_max=2 * sigma * np.sqrt(aug), aug_dim=aug)
        got = float(path.conditional_log_density(0.5, x, x1))
        errs.append(abs(got - gauss.logpdf(np.asarray(x))))
    assert 7 < errs[0] / errs[1] < 13  # first-order convergence in 1/D


@pytest.mark.parametrize("dtype", DTYPES)
def test_coupling_form_target_and_convert(dtype, getkey):
    path = jfm.PoissonPath(r_max=5.0, aug_dim=2)
    x0 = path.prior_sample((4, 3), key=getkey(), dtype=dtype)
    x1 = jr.normal(getkey(), (4, 3), dtype)
    t = jnp.asarray(0.4, dtype)
    xt = jax.vmap(path.sample, (None, 0, 0))(t, x0, x1)
    assert xt.dtype == dtype and x0.shape == (4, 3)
    # target = d/dt sample (jvp) = conditional velocity at x_t.
    dx = jax.vmap(
        lambda a, b: jax.jvp(lambda s: path.sample(s, a, b), (t,), (jnp.ones_like(t),))[1]
    )(x0, x1)
    v = jax.vmap(path.target, (None, 0, 0))(t, x0, x1)
    u = jax.vmap(path.conditional_velocity, (None, 0, 0))(t, xt, x1)
    tol = 1e-12 if dtype == jnp.float64 else 1e-5  # round-off of (x - x1) / (1 - t)
    np.testing.assert_allclose(v, dx, rtol=tol, atol=tol)
    np.testing.assert_allclose(u, v, rtol=tol, atol=tol * 10)
    for src, pred in (("x1", x1), ("x0", x0), ("velocity", v)):
        for dst, want in (("x1", x1), ("x0", x0), ("velocity", v)):
            got = jax.vmap(lambda a, b: path.convert(t, a, b, src=src, dst=dst))(xt, pred)
            np.testing.assert_allclose(got, want, rtol=tol * 10, atol=tol * 10)


def test_jit_vmap_and_prior_shapes(getkey):
    path = jfm.PoissonPath(r_max=3.0, event_shape=(2, 2))
    x = path.prior_sample((5, 2, 2), key=getkey())
    assert x.shape == (5, 2, 2)
    # With event_shape, any number of batch axes; x0_sample is the prior.
    assert path.prior_sample((2, 3, 2, 2), key=getkey()).shape == (2, 3, 2, 2)
    key = getkey()
    np.testing.assert_array_equal(
        path.x0_sample((5, 2, 2), key=key), path.prior_sample((5, 2, 2), key=key)
    )
    lp = jax.jit(jax.vmap(path.prior_log_prob))(x)
    assert lp.shape == (5,) and bool(jnp.all(jnp.isfinite(lp)))
    f = jax.jit(jax.vmap(path.conditional_velocity, (None, 0, 0)))
    np.testing.assert_allclose(f(0.75, x, jnp.zeros_like(x)), -4 * x)  # -(x - x1) / (1 - t)


def test_bad_arguments():
    with raises_arg(ValueError, "r_max"):
        jfm.PoissonPath(r_max=0.0)
    with raises_arg(ValueError, "aug_dim"):
        jfm.PoissonPath(r_max=1.0, aug_dim=0)
    path = jfm.PoissonPath(r_max=1.0)
    with raises_arg(ValueError, "kind"):
        path.target(0.5, jnp.zeros(2), jnp.zeros(2), kind="score")
    with raises_arg(ValueError, "shape", "event_shape"):
        path.prior_sample((3,), key=jr.key(0))
    with raises_arg(ValueError, "shape", "event_shape"):
        jfm.PoissonPath(r_max=1.0, event_shape=(2,)).prior_sample((3, 4), key=jr.key(0))
    with raises_arg(ValueError, "x1"):
        path.conditional_velocity(0.5, jnp.zeros(2), jnp.zeros(3))
    with raises_arg(TypeError, "key"):
        path.sample_conditional(0.5, jnp.zeros(2), key=0)
