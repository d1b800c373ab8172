"""Tests of jfm.GaussianMixture: the exact marginal fields against independent computations."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.special
import scipy.stats

import jfm

from .helpers import ALL_PATHS, PATH_IDS

# Two float64 mixtures with non-diagonal covariances: K > D (3 in 2-D) and K < D (2 in 3-D).
MEANS_2D = np.array([[-1.5, 0.5], [1.0, -0.5], [0.5, 1.5]])
COVS_2D = np.array(
    [
        [[0.5, 0.2], [0.2, 0.3]],
        [[0.4, -0.15], [-0.15, 0.6]],
        [[0.2, 0.05], [0.05, 0.25]],
    ]
)
WEIGHTS_2D = np.array([0.3, 0.5, 0.2])

_A = np.array([[0.8, 0.1, 0.0], [0.3, 0.5, 0.0], [-0.2, 0.1, 0.6]])
MEANS_3D = np.array([[1.0, -0.5, 0.25], [-0.5, 0.75, -1.0]])
COVS_3D = np.stack([_A @ _A.T, np.diag([0.3, 0.5, 0.4]) + 0.1])
WEIGHTS_3D = np.array([0.6, 0.4])

MIXTURES = {"2d": (MEANS_2D, COVS_2D, WEIGHTS_2D), "3d": (MEANS_3D, COVS_3D, WEIGHTS_3D)}
PATHS = dict(zip(PATH_IDS, ALL_PATHS))
TIMES = (0.3, 0.7)


def _gmm(name, dtype=jnp.float64):
    m, c, w = MIXTURES[name]
    return jfm.GaussianMixture(jnp.asarray(m, dtype), jnp.asarray(c, dtype), jnp.asarray(w, dtype))


@eqx.filter_jit
def _eval(field, t, xs):
    """A field on a batch of points (one compilation per field type and shapes)."""
    return jax.vmap(field, in_axes=(None, 0, None))(t, xs, None)


def _coefs(path, t):
    return tuple(float(f(t)) for f in (path.alpha, path.sigma, path.d_alpha, path.d_sigma))


def _scipy_log_prob(means, covs, weights, xs):
    logs = np.stack(
        [
            np.log(w) + np.atleast_1d(scipy.stats.multivariate_normal(m, c).logpdf(xs))
            for m, c, w in zip(means, covs, weights)
        ]
    )
    return scipy.special.logsumexp(logs, axis=0)


def _points(name, n, seed):
    d = MIXTURES[name][0].shape[1]
    return np.random.default_rng(seed).normal(size=(n, d)) * 1.5


# -- 1. log-density ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", MIXTURES)
def test_log_prob_matches_scipy(name):
    m, c, w = MIXTURES[name]
    xs = _points(name, 16, 0)
    got = np.asarray(jax.vmap(_gmm(name).log_prob)(jnp.asarray(xs)))
    # float64 Cholesky vs scipy's eigendecomposition: agreement to rounding.
    np.testing.assert_allclose(got, _scipy_log_prob(m, c, w, xs), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("path", [PATHS["cosine"], PATHS["ve"]], ids=["cosine", "ve"])
def test_marginal_log_prob_matches_scipy(path):
    m, c, w = MIXTURES["2d"]
    a, s, _, _ = _coefs(path, 0.4)
    xs = _points("2d", 8, 1)
    marg = _gmm("2d").marginal(path, 0.4)
    got = np.asarray(jax.vmap(marg.log_prob)(jnp.asarray(xs)))
    want = _scipy_log_prob(a * m, a**2 * c + s**2 * np.eye(2), w, xs)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)  # rounding only


# -- 2. score = grad log p_t ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("path", ALL_PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("name", MIXTURES)
def test_score_is_grad_log_marginal(name, path):
    gmm = _gmm(name)
    score = gmm.score_field(path)
    xs = jnp.asarray(_points(name, 6, 2))
    for t in TIMES:
        want = jax.vmap(jax.grad(gmm.marginal(path, t).log_prob))(xs)
        got = _eval(score, jnp.asarray(t), xs)
        # Two float64 evaluations of the same function (analytic vs autodiff): rounding.
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)


# -- 3. velocity = E[u_t(x | x1) | x_t = x] by self-normalised importance sampling ------------


def _draw_mixture_numpy(name, n, seed):
    """Draws from the mixture with numpy (independent of GaussianMixture.sample)."""
    m, c, w = MIXTURES[name]
    rng = np.random.default_rng(seed)
    k = rng.choice(len(w), size=n, p=w)
    chol = np.linalg.cholesky(c)
    z = rng.normal(size=(n, m.shape[1]))
    return m[k] + np.einsum("nij,nj->ni", chol[k], z)


@pytest.mark.parametrize("name", MIXTURES)
def test_velocity_matches_monte_carlo(name):
    n = 200_000
    x1 = _draw_mixture_numpy(name, n, 3)
    gmm = _gmm(name)
    rng = np.random.default_rng(4)
    d = x1.shape[1]
    for pid, t in (("condot", 0.6), ("cosine", 0.5), ("vp", 0.5), ("ve", 0.5)):
        path = PATHS[pid]
        a, s, da, ds = _coefs(path, t)
        # Query points: typical draws of p_t.
        xs = a * x1[:2] + s * rng.normal(size=(2, d))
        got = np.asarray(_eval(gmm.velocity_field(path), jnp.asarray(t), jnp.asarray(xs)))
        for x, u_exact in zip(xs, got):
            logw = -0.5 * np.sum((x - a * x1) ** 2, axis=1) / s**2
            wts = np.exp(logw - logw.max())
            u = da * x1 + ds * (x - a * x1) / s  # conditional velocity given x1 at x_t = x
            est = wts @ u / wts.sum()
            # Delta-method standard error of the self-normalised estimator.
            se = np.sqrt((wts**2) @ (u - est) ** 2) / wts.sum()
            ess = wts.sum() ** 2 / (wts**2).sum()
            assert ess > 2_000, (pid, ess)  # enough effective samples for the delta method
            # 5 standard errors: a false alarm has probability ~1e-6 per coordinate.
            assert np.all(np.abs(u_exact - est) < 5 * se), (pid, u_exact, est, se)


# -- 4. K = 1: the closed-form Gaussian flow ----------------------------------------------------


@pytest.mark.parametrize("path", ALL_PATHS, ids=PATH_IDS)
def test_velocity_single_gaussian_closed_form(path):
    m = jnp.array([0.7, -1.2])
    var = jnp.array([0.5, 2.0])
    gmm = jfm.GaussianMixture(m.reshape(1, 2), jnp.diag(var).reshape(1, 2, 2), jnp.ones(1))
    u = gmm.velocity_field(path)
    x0s = jnp.asarray(_points("2d", 5, 5))

    def flow(t, x0):  # x_t = a m + sqrt(a^2 S + s^2) x0 solves dx/dt = u_t(x)
        a, s = path.alpha(t), path.sigma(t)
        return a * m + jnp.sqrt(a**2 * var + s**2) * x0

    times = [0.0, 0.1, 0.5, 0.9] + ([1.0] if isinstance(path.schedule, jfm.CondOT) else [])
    for t in times:
        t = jnp.asarray(t)
        xt, dxdt = jax.vmap(lambda x0: jax.jvp(lambda tt: flow(tt, x0), (t,), (jnp.ones_like(t),)))(
            x0s
        )
        got = _eval(u, t, xt)
        assert np.all(np.isfinite(got))
        # Same maths in two forms (Cholesky solve vs elementwise sqrt), float64: rounding.
        np.testing.assert_allclose(got, dxdt, rtol=1e-9, atol=1e-9)


# -- 5. consistency of the parametrizations -----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("path", ALL_PATHS, ids=PATH_IDS)
def test_fields_consistent_with_convert(path):
    gmm = _gmm("3d")
    xs = jnp.asarray(_points("3d", 4, 6))
    for t in TIMES:
        tt = jnp.asarray(t)
        score = _eval(gmm.score_field(path), tt, xs)
        fields = {k: _eval(gmm.field(path, k), tt, xs) for k in ("velocity", "x1", "x0")}
        fields["x1"] = _eval(gmm.x1_field(path), tt, xs)
        for kind, got in fields.items():
            want = jax.vmap(lambda x, sc: path.convert(t, x, sc, src="score", dst=kind))(xs, score)
            # Linear identity for Gaussian paths; only rounding separates the two sides.
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, err_msg=kind)


# -- 6. sampling --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MIXTURES)
def test_sample_moments(name, getkey):
    m, c, w = MIXTURES[name]
    gmm = _gmm(name)
    n = 100_000
    xs = np.asarray(gmm.sample(n, key=getkey()))
    assert xs.shape == (n, m.shape[1]) and xs.dtype == np.float64
    mean = w @ m
    cov = np.einsum("k,kij->ij", w, c) + np.einsum("k,ki,kj->ij", w, m, m) - np.outer(mean, mean)
    np.testing.assert_allclose(gmm.mean(), mean, rtol=1e-12, atol=1e-12)  # same formula
    np.testing.assert_allclose(gmm.covariance(), cov, rtol=1e-12, atol=1e-12)  # same formula
    # Sample mean within 5 standard errors (sqrt(diag cov / n)).
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(xs.mean(0) - mean) < 5 * se_mean)
    # Sample covariance entries within 5 standard errors of the centred products.
    cen = xs - mean
    prods = cen[:, :, None] * cen[:, None, :]
    se_cov = prods.std(0) / np.sqrt(n)
    assert np.all(np.abs(prods.mean(0) - cov) < 5 * se_cov)


def test_sample_is_a_pure_function_of_key():
    gmm = _gmm("2d")
    a = gmm.sample(50, key=jr.key(1))
    b = gmm.sample(50, key=jr.key(1))
    c = gmm.sample(50, key=jr.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.any(np.all(np.asarray(a) == np.asarray(c), axis=1))
    # Legacy uint32 keys are accepted too.
    assert gmm.sample(3, key=jr.PRNGKey(0)).shape == (3, 2)


def test_isotropic():
    means = jnp.array([[0.0, 1.0], [2.0, -1.0]])
    gmm = jfm.GaussianMixture.isotropic(means, jnp.array([0.5, 2.0]))
    np.testing.assert_allclose(gmm.covs[1], 4.0 * np.eye(2))  # std^2 I, exact
    np.testing.assert_allclose(gmm.weights, [0.5, 0.5])  # default equal weights, exact
    x = np.array([0.3, 0.2])
    want = _scipy_log_prob(
        np.asarray(means), [0.25 * np.eye(2), 4.0 * np.eye(2)], [0.5, 0.5], x[None]
    )
    np.testing.assert_allclose(gmm.log_prob(jnp.asarray(x)), want[0], rtol=1e-12)  # rounding


# -- 7. bad input -------------------------------------------------------------------------------


def test_bad_construction():
    m, c, w = MIXTURES["2d"]
    with pytest.raises(ValueError, match="`means`"):
        jfm.GaussianMixture(m[0], c, w)
    with pytest.raises(ValueError, match="`covs`"):
        jfm.GaussianMixture(m, c[:, 0], w)
    with pytest.raises(ValueError, match="`covs`"):
        jfm.GaussianMixture(m, c[:2], w)
    with pytest.raises(ValueError, match="`weights`"):
        jfm.GaussianMixture(m, c, np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="`weights` must sum to 1"):
        jfm.GaussianMixture(m, c, np.array([0.3, 0.3, 0.3]))
    with pytest.raises(ValueError, match="`weights` must be non-negative"):
        jfm.GaussianMixture(m, c, np.array([-0.2, 0.7, 0.5]))
    not_pd = c.copy()
    not_pd[1] = [[1.0, 2.0], [2.0, 1.0]]
    with pytest.raises(ValueError, match="`covs` must be positive definite"):
        jfm.GaussianMixture(m, not_pd, w)
    asym = c.copy()
    asym[0, 0, 1] += 0.1
    with pytest.raises(ValueError, match="`covs` must be symmetric"):
        jfm.GaussianMixture(m, asym, w)
    nan_means = m.copy()
    nan_means[0, 0] = np.nan
    with pytest.raises(ValueError, match="`means` must be finite"):
        jfm.GaussianMixture(nan_means, c, w)
    with pytest.raises(TypeError, match="`means`"):
        jfm.GaussianMixture(m.astype(np.int32), c, w)
    with pytest.raises(TypeError, match="weights"):  # beartype or jfm
        jfm.GaussianMixture(m, c, "uniform")
    with pytest.raises(ValueError, match="`std`"):
        jfm.GaussianMixture.isotropic(m, -1.0)


def test_bad_call_arguments():
    gmm = _gmm("2d")
    path = PATHS["condot"]
    with pytest.raises(ValueError, match="`x`"):
        gmm.log_prob(jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="`x`"):
        gmm.velocity_field(path)(0.5, jnp.zeros(3), None)
    with pytest.raises(ValueError, match="`t`"):
        gmm.score_field(path)(1.5, jnp.zeros(2), None)
    with pytest.raises(ValueError, match="`t`"):
        gmm.marginal(path, -0.1)
    with pytest.raises(TypeError, match="path"):  # beartype or jfm
        gmm.velocity_field(jfm.CondOT())
    with pytest.raises(ValueError, match="`kind`"):
        gmm.field(path, "eps")
    with pytest.raises(ValueError, match="`n`"):
        gmm.sample(0, key=jr.key(0))
    with pytest.raises(TypeError, match="key"):  # beartype or jfm
        gmm.sample(3, key=0)


# -- 8. jit / vmap / grad / dtypes --------------------------------------------------------------


def test_jit_vmap_match_eager():
    gmm = _gmm("2d")
    path = PATHS["vp"]
    xs = jnp.asarray(_points("2d", 3, 7))
    for field in (gmm.velocity_field(path), gmm.score_field(path)):
        eager = np.stack([np.asarray(field(0.4, x, None)) for x in xs])
        np.testing.assert_allclose(
            _eval(field, jnp.asarray(0.4), xs), eager, rtol=1e-12, atol=1e-12
        )
        # A field holds arrays (unhashable): jit it with eqx.filter_jit, or close over it.
        jitted = eqx.filter_jit(field)
        np.testing.assert_allclose(
            jax.jit(lambda x: field(0.4, x, None))(xs[0]), eager[0], rtol=1e-12, atol=1e-12
        )
        np.testing.assert_allclose(jitted(0.4, xs[0], None), eager[0], rtol=1e-12, atol=1e-12)
        # vmap over time as well as space.
        ts = jnp.array([0.4, 0.4, 0.4])
        np.testing.assert_allclose(
            jax.vmap(field, (0, 0, None))(ts, xs, None), eager, rtol=1e-12, atol=1e-12
        )


def test_no_recompile_for_new_mixture():
    path = PATHS["cosine"]

    @eqx.debug.assert_max_traces(max_traces=1)
    def run(field, t, x):
        return field(t, x, None)

    run = eqx.filter_jit(run)
    x = jnp.array([0.1, -0.2])
    g1 = _gmm("2d")
    g2 = jfm.GaussianMixture(g1.means + 1.0, g1.covs * 2.0, g1.weights)
    out1 = run(g1.velocity_field(path), jnp.asarray(0.5), x)
    out2 = run(g2.velocity_field(path), jnp.asarray(0.6), x)  # same shapes: no retrace
    np.testing.assert_allclose(out2, g2.velocity_field(path)(0.6, x, None), rtol=1e-12)
    assert not np.allclose(out1, out2)


def test_grad_and_traced_construction():
    """Built inside jit from traced arrays; d log p / d mu_k = r_k Sigma_k^{-1} (x - mu_k)."""
    m, c, w = (jnp.asarray(v) for v in MIXTURES["2d"])
    x = jnp.array([0.2, 0.1])
    g = jax.jit(jax.grad(lambda mm: jfm.GaussianMixture(mm, c, w).log_prob(x)))(m)
    logs = np.array(
        [
            np.log(wk) + scipy.stats.multivariate_normal(mk, ck).logpdf(np.asarray(x))
            for mk, ck, wk in zip(*MIXTURES["2d"])
        ]
    )
    r = np.exp(logs - scipy.special.logsumexp(logs))
    want = np.stack([r[k] * np.linalg.solve(c[k], x - m[k]) for k in range(3)])
    np.testing.assert_allclose(g, want, rtol=1e-10, atol=1e-12)  # float64 rounding


@pytest.mark.parametrize("path", [PATHS["condot"], PATHS["ve"]], ids=["condot", "ve"])
def test_float32(path):
    g32, g64 = _gmm("2d", jnp.float32), _gmm("2d", jnp.float64)
    x = np.array([0.3, -0.4])
    assert g32.log_prob(jnp.asarray(x, jnp.float32)).dtype == jnp.float32
    assert g32.sample(4, key=jr.key(0)).dtype == jnp.float32
    assert g32.marginal(path, 0.5).covs.dtype == jnp.float32
    for make in ("velocity_field", "score_field", "x1_field"):
        f32 = getattr(g32, make)(path)
        out = eqx.filter_jit(f32)(jnp.asarray(0.5, jnp.float32), jnp.asarray(x, jnp.float32), None)
        assert out.dtype == jnp.float32, make
        want = getattr(g64, make)(path)(0.5, jnp.asarray(x), None)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)  # float32 rounding
        # A float32 input through a float64 mixture computes in float32 too.
        assert getattr(g64, make)(path)(0.5, jnp.asarray(x, jnp.float32), None).dtype == jnp.float32
