"""Sampling and likelihood on manifolds, and the distributions with exact densities."""

import math

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jfm

# Compile-heavy (a few minutes on 2 cores): behind the slow marker until trimmed.
pytestmark = pytest.mark.slow

S2, SO3, T2 = jfm.Sphere(2), jfm.SO3(), jfm.FlatTorus(2)
EZ = jnp.array([0.0, 0.0, 1.0])


def _hat(w):
    return jnp.array([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])


def _vj(f, *a, **k):
    return jax.jit(jax.vmap(f, *a, **k))


class Zonal(eqx.Module):
    """``u(x) = a P_x e_z`` on S^2 (the gradient of the height): ``div = -2 a x_3``; from
    the uniform law, ``tan(theta/2)`` shrinks by ``e^{-a t}`` (``theta`` the polar angle)."""

    a: jax.Array

    def __call__(self, t, x, args):
        return self.a * (EZ - x[2] * x)


def _zonal_closed_form(a, x1):
    """``log p_1(x1)`` and ``x0`` for the zonal flow from the uniform law on S^2."""
    theta1 = jnp.arccos(jnp.clip(x1[2], -1, 1))
    u1 = jnp.tan(theta1 / 2)
    u0 = u1 * jnp.exp(a)
    logp = -math.log(4 * math.pi) + 2 * a + 2 * jnp.log1p(u1**2) - 2 * jnp.log1p(u0**2)
    theta0 = 2 * jnp.arctan(u0)
    rho = jnp.linalg.norm(x1[:2])
    x0 = jnp.concatenate([x1[:2] / rho * jnp.sin(theta0), jnp.cos(theta0)[None]])
    return logp, x0


def _rotation_field(t, x, args):
    return (1.0 + t) * jnp.cross(EZ, x)


def _so3_field(t, r, args):
    # A state-dependent Lie-algebra field (not left-invariant): R [w(t, R)]_x.
    w = jnp.sin(3 * t + r[:, 0] + 2 * r[1]) + jnp.array([0.5, -0.2, 0.1])
    return r @ _hat(w)


def _sphere_field(t, x, args):
    a = jnp.array([[0.3, -1.0, 0.2], [1.0, 0.1, -0.5], [0.4, 0.7, -0.2]])
    return a.astype(x.dtype) @ x + jnp.sin(2 * t) * EZ.astype(x.dtype)


def test_solvers_stay_on_manifold_and_count_nfe(getkey):
    steps = 40
    prod = jfm.ProductManifold(T2, S2)

    def prod_field(t, x, args):
        a, s = prod.split(x)
        return prod.join([jnp.sin(a[::-1]) + t, _sphere_field(t, s, args)])

    cases = [
        (SO3, _so3_field),
        (S2, _sphere_field),
        (prod, prod_field),
    ]
    for m, field in cases:
        x0 = m.random_uniform(8, key=getkey())
        for solver, nfe in (
            (jfm.GeodesicEuler(m), steps),
            (jfm.ProjectedSolver(m, dfx.Tsit5()), 6 * steps + 1),  # FSAL: (7 - 1) n + 1
        ):
            sol = jfm.sample_ode(field, x0, solver=solver, steps=steps)
            off = float(jnp.abs(_vj(m.proj)(sol.x1) - sol.x1).max())
            assert off < 1e-13, (type(m).__name__, off)  # round-off in float64
            assert int(sol.nfe) == nfe
    # float32: the dtype is kept and points stay on the sphere to float32 round-off.
    x0 = S2.random_uniform(8, key=getkey(), dtype=jnp.float32)
    sol = jfm.sample_ode(_sphere_field, x0, solver=jfm.ProjectedSolver(S2, dfx.Tsit5()), steps=20)
    assert sol.x1.dtype == jnp.float32
    assert float(jnp.abs(jnp.linalg.norm(sol.x1, axis=1) - 1).max()) < 5e-7


def test_convergence_orders_on_the_sphere(getkey):
    # The field (1 + t) e_z x x: the exact flow rotates by 1.5 rad about e_z.
    x0 = S2.random_uniform(8, key=getkey())
    c, s = math.cos(1.5), math.sin(1.5)
    exact = x0 @ jnp.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]).T
    cases = (
        (jfm.GeodesicEuler(S2), 1, (16, 32)),
        (jfm.ProjectedSolver(S2, dfx.Euler()), 1, (16, 32)),
        (jfm.ProjectedSolver(S2, dfx.Midpoint()), 2, (16, 32)),
        (jfm.ProjectedSolver(S2, dfx.Tsit5()), 5, (4, 8)),
    )
    for solver, order, (n1, n2) in cases:
        errs = [
            float(
                jnp.abs(
                    jfm.sample_ode(_rotation_field, x0, solver=solver, steps=n).x1 - exact
                ).max()
            )
            for n in (n1, n2)
        ]
        measured = math.log2(errs[0] / errs[1])
        # The projection keeps the inner method's order (Hairer-Lubich-Wanner IV.4.2).
        # Tsit5's pre-asymptotic slope at 4 -> 8 steps exceeds 5 (at least order 5).
        assert measured > order - 0.3 and (order == 5 or measured < order + 0.3), measured


def test_adaptive_projected_solver(getkey):
    x0 = S2.random_uniform(1, key=getkey())
    calls = []

    def counted(t, x, args):
        jax.debug.callback(lambda: calls.append(1))
        return _rotation_field(t, x, args)

    solver = jfm.ProjectedSolver(S2, dfx.Tsit5())
    sol = jfm.sample_ode(counted, x0, solver=solver, rtol=1e-9, atol=1e-9)
    c, s = math.cos(1.5), math.sin(1.5)
    exact = x0 @ jnp.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]).T
    assert float(jnp.abs(sol.x1 - exact).max()) < 1e-8  # tolerance-driven accuracy
    assert int(sol.nfe) == len(calls)  # exact NFE (heuristic + FSAL + rejections)
    with pytest.raises(ValueError, match="adaptive"):
        jfm.sample_ode(_rotation_field, x0, solver=jfm.GeodesicEuler(S2), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="adaptive"):
        jfm.sample_ode(
            _rotation_field, x0, solver=jfm.ProjectedSolver(S2, dfx.Euler()), rtol=1e-5, atol=1e-5
        )
    with pytest.raises(TypeError, match="Runge-Kutta"):
        jfm.ProjectedSolver(S2, dfx.ImplicitEuler())


def test_uniform_likelihood_is_minus_log_volume(getkey):
    # Killing fields preserve the uniform law: log p = -log vol exactly, with the exact
    # divergence and with Hutchinson on tangent probes (zero variance: P J P is skew).
    prod = jfm.ProductManifold(T2, S2, SO3)
    w0 = jnp.array([0.3, -0.7, 0.2])

    def killing(t, x, args):
        a, s, r = prod.split(x)
        return prod.join([jnp.array([0.4, -1.1]), (1 + t) * jnp.cross(EZ, s), r @ _hat(w0)])

    x = prod.random_uniform(4, key=getkey())
    path = jfm.GeodesicPath(prod)
    for div, key in ((jfm.ExactDivergence(), None), (jfm.HutchinsonDivergence(3), getkey())):
        logp, sol = jfm.manifold_log_prob(
            killing, x, manifold=prod, solver=dfx.Tsit5(), steps=6, path=path,
            divergence=div, key=key,
        )  # fmt: skip
        np.testing.assert_allclose(logp, -prod.log_volume, rtol=0, atol=1e-13)
        assert float(jnp.abs(_vj(prod.proj)(sol.x1) - sol.x1).max()) < 1e-13
    assert prod.log_volume == pytest.approx(2 * math.log(2 * math.pi) + math.log(32 * math.pi**3))


def test_likelihood_of_a_known_flow(getkey):
    a = jnp.asarray(0.8)
    x1 = S2.random_uniform(6, key=getkey())
    path = jfm.GeodesicPath(S2)

    def run(a):
        return jfm.manifold_log_prob(
            Zonal(a), x1, manifold=S2, solver=dfx.Tsit5(), rtol=1e-11, atol=1e-11, path=path
        )

    logp, sol = run(a)
    ref, x0 = jax.vmap(_zonal_closed_form, in_axes=(None, 0))(a, x1)
    np.testing.assert_allclose(logp, ref, atol=1e-8)
    np.testing.assert_allclose(sol.x1, x0, atol=1e-8)
    # Gradients through the solve agree with the closed form's.
    g = jax.grad(lambda a: jnp.sum(run(a)[0]))(a)
    g_ref = jax.grad(lambda a: jnp.sum(jax.vmap(_zonal_closed_form, in_axes=(None, 0))(a, x1)[0]))(
        a
    )
    np.testing.assert_allclose(g, g_ref, rtol=1e-6)
    # Hutchinson with tangent probes is unbiased: the mean over probes (one solve, 64
    # probes per example) is within 5 standard errors.
    lh, solh = jfm.manifold_log_prob(
        Zonal(a), x1, manifold=S2, solver=dfx.Tsit5(), rtol=1e-8, atol=1e-8, path=path,
        divergence=jfm.HutchinsonDivergence(64, noise="gaussian"), key=getkey(),
    )  # fmt: skip
    assert np.all(np.abs(lh - ref) < 5 * solh.stderr + 1e-7)
    assert float(jnp.max(solh.stderr)) > 1e-3  # the estimate is random


def test_divergence_closed_forms_and_hutchinson(getkey):
    c = jnp.array([0.3, -1.2, 0.5])
    x = S2.random_uniform(8, key=getkey())
    grad_h = lambda t, x, args: c  # projected to P c, the gradient of c . x  # noqa: E731
    d = _vj(lambda p: jfm.manifold_divergence(S2, grad_h, 0.0, p))(x)
    np.testing.assert_allclose(d, -2 * x @ c, atol=1e-13)  # Laplacian of c . x on S^2
    s3 = jfm.Sphere(3)
    c4 = jnp.array([0.3, -1.2, 0.5, 0.7])
    y = s3.random_uniform(8, key=getkey())
    d = _vj(lambda p: jfm.manifold_divergence(s3, lambda t, x, a: c4, 0.0, p))(y)
    np.testing.assert_allclose(d, -3 * y @ c4, atol=1e-13)
    # SO(3): the gradient field of tr(A^T R), sum_k tr(A^T R E_k) R E_k, has divergence
    # (its Laplacian) -2 tr(A^T R) for the metric tr(U^T V) / 2.
    amat = jr.normal(getkey(), (3, 3))
    basis = [_hat(e) for e in jnp.eye(3)]

    def grad_tr(t, r, args):
        return sum(jnp.sum(amat * (r @ e)) * (r @ e) for e in basis)

    r = SO3.random_uniform(8, key=getkey())
    d = _vj(lambda p: jfm.manifold_divergence(SO3, grad_tr, 0.0, p))(r)
    np.testing.assert_allclose(d, -2 * jnp.sum(amat[None] * r, axis=(1, 2)), atol=1e-12)
    # Hutchinson (tangent probes) against the exact value for a nonlinear field.
    n = 4000
    keys = jr.split(getkey(), n)
    for m, field, p in ((S2, _sphere_field, x[0]), (SO3, _so3_field, r[0])):
        exact = jfm.manifold_divergence(m, field, 0.3, p)
        est = jax.jit(
            jax.vmap(
                lambda k: jfm.manifold_divergence(m, field, 0.3, p, divergence="hutchinson", key=k)
            )
        )(keys)
        se = float(jnp.std(est)) / math.sqrt(n)
        assert abs(float(jnp.mean(est)) - float(exact)) < 5 * se
        assert se > 1e-4


# -- distributions ------------------------------------------------------------------------


VMF = jfm.VonMisesFisherMixture(
    jnp.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, -1.0]]), jnp.array([20.0, 5.0, 2.0]),
    jnp.array([0.5, 0.3, 0.2]),
)  # fmt: skip
WN = jfm.WrappedNormalMixture(
    jnp.array([[1.0, 1.0], [4.0, 5.5]]), jnp.array([[0.3, 0.6], [1.0, 0.5]]), jnp.array([1.0, 2.0])
)


def _sphere_grid(n=400):
    th = (jnp.arange(n, dtype=float) + 0.5) * math.pi / n
    ph = (jnp.arange(2 * n, dtype=float) + 0.5) * math.pi / n
    tt, pp = jnp.meshgrid(th, ph, indexing="ij")
    pts = jnp.stack([jnp.sin(tt) * jnp.cos(pp), jnp.sin(tt) * jnp.sin(pp), jnp.cos(tt)], -1)
    return pts.reshape(-1, 3), (jnp.sin(tt) * (math.pi / n) ** 2).reshape(-1)


def test_densities_integrate_to_one():
    pts, w = _sphere_grid()
    p = jnp.exp(_vj(VMF.log_prob)(pts))
    assert float(jnp.sum(p * w)) == pytest.approx(1.0, abs=1e-5)
    g = (jnp.arange(256, dtype=float) + 0.5) * 2 * math.pi / 256
    aa, bb = jnp.meshgrid(g, g, indexing="ij")
    pts2 = jnp.stack([aa.ravel(), bb.ravel()], 1)
    p2 = jnp.exp(_vj(WN.log_prob)(pts2))
    assert float(jnp.sum(p2) * (2 * math.pi / 256) ** 2) == pytest.approx(1.0, abs=1e-10)
    # SO(3), one component at I: p depends on the angle, whose volume element is
    # 8 pi (1 - cos theta) d theta (total 8 pi^2).
    so3d = jfm.IsotropicSO3Mixture(jnp.eye(3)[None], jnp.array([0.9]), jnp.ones(1))
    th = (jnp.arange(20000, dtype=float) + 0.5) * math.pi / 20000
    rs = _vj(lambda t: SO3.exp(jnp.eye(3), _hat(jnp.array([t, 0.0, 0.0]))))(th)
    pth = jnp.exp(_vj(so3d.log_prob)(rs))
    total = jnp.sum(pth * 8 * math.pi * (1 - jnp.cos(th))) * math.pi / 20000
    assert float(total) == pytest.approx(1.0, abs=1e-8)


def _ks(samples, cdf_grid, grid):
    """Kolmogorov-Smirnov distance of samples to a CDF tabulated on a grid."""
    s = np.sort(np.asarray(samples))
    emp = np.arange(1, s.size + 1) / s.size
    return float(np.max(np.abs(emp - np.interp(s, grid, cdf_grid))))


def test_samplers_match_densities(getkey):
    n = 20000
    crit = 1.95 / math.sqrt(n)  # KS at the 0.1% level
    # vMF mixture: each sample's height x_3 against the density's marginal (quadrature).
    x = VMF.sample(n, key=getkey())
    assert float(jnp.abs(jnp.linalg.norm(x, axis=1) - 1).max()) < 1e-14
    pts, w = _sphere_grid(800)
    p = np.asarray(jnp.exp(_vj(VMF.log_prob)(pts)) * w)
    order = np.argsort(np.asarray(pts[:, 0]))
    cdf = np.cumsum(p[order])
    assert _ks(x[:, 0], cdf, np.asarray(pts[order, 0])) < crit
    # Single vMF: E[mu . x] = coth k - 1/k, and the entropy in closed form.
    k = 7.0
    one = jfm.VonMisesFisherMixture(EZ[None], jnp.array([k]), jnp.ones(1))
    mean_w = 1 / math.tanh(k) - 1 / k
    z = one.sample(n, key=getkey())[:, 2]
    assert abs(float(jnp.mean(z)) - mean_w) < 5 * float(jnp.std(z)) / math.sqrt(n)
    h_true = -(math.log(k / (2 * math.pi * (1 - math.exp(-2 * k)))) + k * (mean_w - 1))
    h, se = one.entropy(n, key=getkey())
    assert abs(float(h) - h_true) < 5 * float(se)
    # Wrapped normals on T^2: the first angle's marginal CDF from the density.
    a = WN.sample(n, key=getkey())
    g = (jnp.arange(512, dtype=float) + 0.5) * 2 * math.pi / 512
    aa, bb = jnp.meshgrid(g, g, indexing="ij")
    dens = jnp.exp(_vj(WN.log_prob)(jnp.stack([aa.ravel(), bb.ravel()], 1))).reshape(512, 512)
    marg = np.asarray(jnp.sum(dens, 1)) * (2 * math.pi / 512) ** 2
    assert _ks(a[:, 0], np.cumsum(marg), np.asarray(g) + math.pi / 512) < crit
    # SO(3): the angle to the mean against the density's angle marginal.
    so3d = jfm.IsotropicSO3Mixture(
        jnp.stack([jnp.eye(3), SO3.exp(jnp.eye(3), _hat(jnp.array([0.0, 2.0, 0.0])))]),
        jnp.array([0.4, 0.7]),
        jnp.array([1.0, 0.0]),
    )
    r = so3d.sample(n, key=getkey())
    assert float(jnp.abs(r @ jnp.swapaxes(r, 1, 2) - jnp.eye(3)[None]).max()) < 1e-13
    ang = _vj(lambda q: SO3.dist(jnp.eye(3), q))(r)
    th = (jnp.arange(4000, dtype=float) + 0.5) * math.pi / 4000
    rs = _vj(lambda t: SO3.exp(jnp.eye(3), _hat(jnp.array([t, 0.0, 0.0]))))(th)
    pth = np.asarray(jnp.exp(_vj(so3d.log_prob)(rs)) * 8 * math.pi * (1 - jnp.cos(th)))
    assert _ks(ang, np.cumsum(pth) * math.pi / 4000, np.asarray(th) + math.pi / 8000) < crit
    # The mixture integrates to one over SO(3) (importance sampling from the uniform).
    u = SO3.random_uniform(n, key=getkey())
    est = jnp.exp(_vj(so3d.log_prob)(u) + SO3.log_volume)
    assert abs(float(jnp.mean(est)) - 1) < 5 * float(jnp.std(est)) / math.sqrt(n)


def test_product_distribution_and_uniform(getkey):
    d = jfm.ProductDistribution(WN, VMF)
    x = d.sample(500, key=getkey())
    assert x.shape == (500, 5)
    parts = d.manifold.split(x[0])
    np.testing.assert_allclose(d.log_prob(x[0]), WN.log_prob(parts[0]) + VMF.log_prob(parts[1]))
    u = jfm.ManifoldUniform(SO3)
    assert float(u.log_prob(jnp.eye(3))) == pytest.approx(-math.log(8 * math.pi**2))
    with pytest.raises(ValueError, match="compact"):
        jfm.ManifoldUniform(jfm.Euclidean(2))
    with pytest.raises(ValueError, match="means"):
        jfm.VonMisesFisherMixture(jnp.ones((2, 2)), jnp.ones(2), jnp.ones(2))
    with pytest.raises(ValueError, match="weights"):
        jfm.WrappedNormalMixture(jnp.ones((2, 2)), jnp.ones((2, 2)), jnp.ones(3))


def test_likelihood_bad_inputs():
    x = jnp.array([[0.0, 0.0, 1.0]])
    path = jfm.GeodesicPath(S2)
    common = dict(manifold=S2, solver=jfm.GeodesicEuler(S2), steps=2)
    with pytest.raises(ValueError, match="exactly one"):
        jfm.manifold_log_prob(_rotation_field, x, **common)
    with pytest.raises(ValueError, match="exactly one"):
        jfm.manifold_log_prob(
            _rotation_field, x, path=path, prior_log_prob=path.prior_log_prob, **common
        )
    with pytest.raises(ValueError, match="x"):
        jfm.manifold_log_prob(_rotation_field, jnp.ones((1, 2)), path=path, **common)
    with pytest.raises(TypeError, match="key"):
        jfm.manifold_log_prob(_rotation_field, x, path=path, divergence="hutchinson", **common)
    with pytest.raises(ValueError, match="solver"):
        jfm.manifold_log_prob(
            _rotation_field, x, manifold=S2, solver=jfm.GeodesicEuler(T2), steps=2, path=path
        )
    with pytest.raises(TypeError, match="path"):
        jfm.manifold_log_prob(_rotation_field, x, path=jfm.AffinePath(jfm.CondOT()), **common)
