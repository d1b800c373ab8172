"""Manifolds: maps against closed forms, geomstats and Meta's flow_matching; geodesic
paths; the Riemannian CFM loss; the manifold model."""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from flax import nnx

import jfm

# Compile-heavy (a few minutes on 2 cores): behind the slow marker until trimmed.
pytestmark = pytest.mark.slow


def _vj(f, *a, **k):
    """``jax.jit(jax.vmap(f))``: one compiled call instead of op-by-op dispatch."""
    return jax.jit(jax.vmap(f, *a, **k))


MANIFOLDS = {
    "sphere2": jfm.Sphere(2),
    "sphere3": jfm.Sphere(3),
    "torus3": jfm.FlatTorus(3),
    "so3": jfm.SO3(),
    "euclid2": jfm.Euclidean(2),
    "product": jfm.ProductManifold(jfm.FlatTorus(2), jfm.Sphere(2), jfm.SO3()),
}


def _points(m, n, key):
    if isinstance(m, jfm.Euclidean):
        return jr.normal(key, (n, m.d))
    return m.random_uniform(n, key=key)


def _tangent(m, x, key, scale=1.0):
    v = jr.normal(key, x.shape, x.dtype)
    return scale * _vj(m.proj_tangent)(x, v)


def _injective_tangent(m, x, key):
    """Tangent vectors inside the injectivity radius (|v| < pi on each compact factor)."""
    v = _tangent(m, x, key)
    n = _vj(m.norm)(x, v)
    return (
        v
        * (2.5 * jr.uniform(key, n.shape) / n)[:, None, None][
            (...,) + (0,) * (2 - len(m.event_shape))
        ]
    )


@pytest.mark.parametrize("name", list(MANIFOLDS))
def test_exp_log_round_trips_and_distance(name, getkey):
    m = MANIFOLDS[name]
    x, y = _points(m, 64, getkey()), _points(m, 64, getkey())
    v = _vj(m.log)(x, y)
    # exp_x(log_x y) = y, |log_x y| = d(x, y), log_x y tangent at x: round-off in float64.
    np.testing.assert_allclose(_vj(m.exp)(x, v), y, atol=1e-12)
    np.testing.assert_allclose(_vj(m.norm)(x, v), _vj(m.dist)(x, y), atol=1e-12)
    np.testing.assert_allclose(_vj(m.proj_tangent)(x, v), v, atol=1e-12)
    # log_x(exp_x w) = w inside the injectivity radius; d is symmetric.
    w = _injective_tangent(m, x, getkey())
    np.testing.assert_allclose(_vj(m.log)(x, _vj(m.exp)(x, w)), w, atol=1e-11)
    np.testing.assert_allclose(_vj(m.dist)(x, y), _vj(m.dist)(y, x), atol=1e-12)
    # Points are fixed by proj; exp stays on the manifold.
    np.testing.assert_allclose(_vj(m.proj)(x), x, atol=1e-14)
    e = _vj(m.exp)(x, w)
    np.testing.assert_allclose(_vj(m.proj)(e), e, atol=1e-13)


@pytest.mark.parametrize("name", list(MANIFOLDS))
def test_parallel_transport_identities(name, getkey):
    m = MANIFOLDS[name]
    x, y = _points(m, 32, getkey()), _points(m, 32, getkey())
    u, v = _tangent(m, x, getkey()), _tangent(m, x, getkey())
    tr = _vj(m.transport)
    tu, tv = tr(x, y, u), tr(x, y, v)
    # Tangent at y, an isometry, and it carries log_x y to -log_y x (the geodesic's velocity).
    np.testing.assert_allclose(_vj(m.proj_tangent)(y, tu), tu, atol=1e-12)
    np.testing.assert_allclose(_vj(m.inner)(y, tu, tv), _vj(m.inner)(x, u, v), atol=1e-12)
    np.testing.assert_allclose(tr(x, y, _vj(m.log)(x, y)), -_vj(m.log)(y, x), atol=1e-11)


@pytest.mark.parametrize("name", list(MANIFOLDS))
def test_proj_derivative_is_the_tangent_projector(name, getkey):
    # What the Riemannian divergence as an ambient trace relies on.
    m = MANIFOLDS[name]
    x = _points(m, 8, getkey())
    v = jr.normal(getkey(), x.shape)
    dproj = _vj(lambda a, b: jax.jvp(m.proj, (a,), (b,))[1])(x, v)
    np.testing.assert_allclose(dproj, _vj(m.proj_tangent)(x, v), atol=1e-12)


def test_sphere_closed_forms_small_and_antipodal(getkey):
    s = jfm.Sphere(2)
    x = s.random_uniform(16, key=getkey())
    v = _tangent(s, x, getkey())
    for eps in (1e-9, 1e-5, 1.0):
        w = v / jnp.linalg.norm(v, axis=1, keepdims=True) * eps
        y = _vj(s.exp)(x, w)
        # exp_x(w) = cos|w| x + sin|w| w/|w|; log recovers w to relative round-off.
        ref = jnp.cos(eps) * x + jnp.sin(eps) * w / eps
        np.testing.assert_allclose(y, ref, atol=1e-15)
        np.testing.assert_allclose(_vj(s.log)(x, y), w, atol=1e-15)  # y rounds at 1e-16
        np.testing.assert_allclose(_vj(s.dist)(x, y), eps, atol=1e-15)
    # The antipode: log has length pi and exp of it lands on -x.
    la = _vj(s.log)(x, -x)
    np.testing.assert_allclose(jnp.linalg.norm(la, axis=1), math.pi, rtol=1e-14)
    np.testing.assert_allclose(_vj(s.exp)(x, la), -x, atol=1e-14)
    assert float(jfm.Sphere(2).log_volume) == pytest.approx(math.log(4 * math.pi), rel=1e-15)
    assert float(jfm.Sphere(3).log_volume) == pytest.approx(math.log(2 * math.pi**2), rel=1e-15)
    # Gradients are finite at y = x (the log's 0/0 is guarded).
    g = jax.grad(lambda y: jnp.sum(s.log(x[0], y) ** 2))(x[0])
    assert np.all(np.isfinite(g))


def test_so3_closed_forms_near_zero_and_pi(getkey):
    so3 = jfm.SO3()
    a = jr.normal(getkey(), (16, 3))
    a = a / jnp.linalg.norm(a, axis=1, keepdims=True)
    for theta in (1e-9, 1e-4, 1.0, math.pi - 1e-4, math.pi - 1e-9):
        w = theta * a
        r = _vj(lambda wi: so3.exp(jnp.eye(3), so3.proj_tangent(jnp.eye(3), _hat(wi))))(w)
        # Rodrigues' closed form, orthogonality, and the round trip w -> R -> w.
        k = _vj(_hat)(a)
        ref = jnp.eye(3)[None] + math.sin(theta) * k + (1 - math.cos(theta)) * (k @ k)
        np.testing.assert_allclose(r, ref, atol=1e-14)
        np.testing.assert_allclose(
            r @ jnp.swapaxes(r, 1, 2), jnp.broadcast_to(jnp.eye(3), r.shape), atol=1e-14
        )
        back = _vj(lambda ri: _vee(so3.log(jnp.eye(3), ri)))(r)
        np.testing.assert_allclose(back, w, atol=2e-8 if theta > 3 else 1e-13)
        np.testing.assert_allclose(_vj(lambda ri: so3.dist(jnp.eye(3), ri))(r), theta, atol=1e-8)
    # Polar projection: the closest rotation, equal to U V^T of the SVD.
    r = so3.random_uniform(8, key=getkey())
    noisy = r + 0.2 * jr.normal(getkey(), r.shape)
    u, _, vt = np.linalg.svd(np.asarray(noisy))
    np.testing.assert_allclose(_vj(so3.proj)(noisy), u @ vt, atol=1e-13)
    assert so3.log_volume == pytest.approx(math.log(8 * math.pi**2), rel=1e-15)


def _hat(w):
    return jnp.array([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])


def _vee(a):
    return jnp.array([a[2, 1], a[0, 2], a[1, 0]])


def test_uniform_laws_match_their_moments(getkey):
    n = 20000
    # S^2: E[x] = 0, E[x x^T] = I/3; SO(3) Haar: the angle has density (1 - cos t)/pi,
    # E[theta] = pi/2 + 2/pi; T^d: E[cos x] = 0. Tolerance 5 standard errors.
    x = jfm.Sphere(2).random_uniform(n, key=getkey())
    np.testing.assert_allclose(jnp.mean(x, 0), 0.0, atol=5 / math.sqrt(3 * n))
    np.testing.assert_allclose(x.T @ x / n, jnp.eye(3) / 3, atol=5 * 0.3 / math.sqrt(n))
    so3 = jfm.SO3()
    r = so3.random_uniform(n, key=getkey())
    th = _vj(lambda ri: so3.dist(jnp.eye(3), ri))(r)
    sd = float(jnp.std(th))
    assert abs(float(jnp.mean(th)) - (math.pi / 2 + 2 / math.pi)) < 5 * sd / math.sqrt(n)
    a = jfm.FlatTorus(2).random_uniform((100, 200), key=getkey())
    assert a.shape == (100, 200, 2) and float(a.min()) >= 0 and float(a.max()) < 2 * math.pi
    np.testing.assert_allclose(jnp.mean(jnp.cos(a), (0, 1)), 0.0, atol=5 / math.sqrt(2 * n))


def test_against_geomstats(getkey):
    np.trapz = getattr(np, "trapz", np.trapezoid)
    pytest.importorskip("geomstats")
    import os

    os.environ.setdefault("GEOMSTATS_BACKEND", "numpy")
    from geomstats.geometry.hypersphere import Hypersphere
    from geomstats.geometry.special_orthogonal import SpecialOrthogonal

    s, gs_s = jfm.Sphere(2), Hypersphere(dim=2)
    x, y = (
        np.asarray(s.random_uniform(16, key=getkey())),
        np.asarray(s.random_uniform(16, key=getkey())),
    )
    v = np.asarray(_tangent(s, jnp.asarray(x), getkey()))
    np.testing.assert_allclose(_vj(s.exp)(x, v), gs_s.metric.exp(v, x), atol=1e-12)
    np.testing.assert_allclose(_vj(s.log)(x, y), gs_s.metric.log(y, x), atol=1e-10)
    np.testing.assert_allclose(_vj(s.dist)(x, y), gs_s.metric.dist(x, y), atol=1e-10)
    np.testing.assert_allclose(
        _vj(s.transport)(x, y, v),
        gs_s.metric.parallel_transport(v, x, end_point=y),
        atol=1e-10,
    )
    so3, gs_g = jfm.SO3(), SpecialOrthogonal(3, point_type="matrix")
    r, q = (
        np.asarray(so3.random_uniform(16, key=getkey())),
        np.asarray(so3.random_uniform(16, key=getkey())),
    )
    u = np.asarray(_tangent(so3, jnp.asarray(r), getkey(), 0.5))
    np.testing.assert_allclose(_vj(so3.exp)(r, u), gs_g.metric.exp(u, r), atol=1e-10)
    np.testing.assert_allclose(_vj(so3.log)(r, q), gs_g.metric.log(q, r), atol=1e-8)
    np.testing.assert_allclose(_vj(so3.dist)(r, q), gs_g.metric.dist(r, q), atol=1e-8)
    np.testing.assert_allclose(
        _vj(so3.inner)(r, u, u), gs_g.metric.inner_product(u, u, r), atol=1e-12
    )


def test_against_flow_matching(getkey):
    torch = pytest.importorskip("torch")
    fm = pytest.importorskip("flow_matching.utils.manifolds")
    t = lambda a: torch.from_numpy(np.asarray(a))  # noqa: E731
    for m, ref in ((jfm.Sphere(2), fm.Sphere()), (jfm.FlatTorus(3), fm.FlatTorus())):
        x, y = m.random_uniform(32, key=getkey()), m.random_uniform(32, key=getkey())
        v = _tangent(m, x, getkey(), 0.7)
        np.testing.assert_allclose(_vj(m.exp)(x, v), ref.expmap(t(x), t(v)).numpy(), atol=1e-12)
        np.testing.assert_allclose(_vj(m.log)(x, y), ref.logmap(t(x), t(y)).numpy(), atol=1e-7)
        np.testing.assert_allclose(_vj(m.proj)(2 * x), ref.projx(t(2 * x)).numpy(), atol=1e-14)
        w = jr.normal(getkey(), x.shape)
        np.testing.assert_allclose(
            _vj(m.proj_tangent)(x, w), ref.proju(t(x), t(w)).numpy(), atol=1e-14
        )
    s = jfm.Sphere(2)
    x, y = s.random_uniform(32, key=getkey()), s.random_uniform(32, key=getkey())
    np.testing.assert_allclose(_vj(s.dist)(x, y), fm.Sphere().dist(t(x), t(y)).numpy(), atol=1e-7)


# -- geodesic path, loss, model -----------------------------------------------------------


@pytest.mark.parametrize("name", ["sphere2", "so3", "product", "torus3"])
def test_geodesic_path_endpoints_and_constant_speed(name, getkey):
    m = MANIFOLDS[name]
    path = jfm.GeodesicPath(m)
    x0, x1 = _points(m, 16, getkey()), _points(m, 16, getkey())
    samp = _vj(path.sample, in_axes=(None, 0, 0))
    np.testing.assert_allclose(samp(0.0, x0, x1), x0, atol=1e-14)
    np.testing.assert_allclose(samp(1.0, x0, x1), x1, atol=1e-12)
    d = _vj(m.dist)(x0, x1)
    for t in (0.1, 0.5, 0.9):
        xt, ut = _vj(path.sample_and_target, in_axes=(None, 0, 0))(t, x0, x1)
        # CondOT: constant speed d(x0, x1); x_t at distance t d from x0, tangent velocity.
        np.testing.assert_allclose(_vj(m.norm)(xt, ut), d, rtol=1e-10)
        np.testing.assert_allclose(_vj(m.dist)(x0, xt), t * d, rtol=1e-10)
        np.testing.assert_allclose(_vj(m.proj_tangent)(xt, ut), ut, atol=1e-12)
        # Given x_t and x1 alone: kappa'/(1 - kappa) log_{x_t} x1.
        cv = _vj(path.conditional_velocity, in_axes=(None, 0, 0))(t, xt, x1)
        np.testing.assert_allclose(cv, ut, atol=1e-9)
    # A cosine schedule: speed kappa'(t) d.
    cos = jfm.GeodesicPath(m, jfm.Cosine())
    _, ut = _vj(cos.sample_and_target, in_axes=(None, 0, 0))(0.3, x0, x1)
    np.testing.assert_allclose(
        _vj(m.norm)(x0, ut) * 0
        + jnp.sqrt(_vj(lambda a: jnp.sum(a * a))(ut)) * 0
        + _vj(m.norm)(_vj(cos.sample, in_axes=(None, 0, 0))(0.3, x0, x1), ut),
        0.5 * math.pi * math.cos(0.15 * math.pi) * d,
        rtol=1e-10,
    )


def test_riemannian_cfm_loss_values(getkey):
    s = jfm.Sphere(2)
    path = jfm.GeodesicPath(s)
    x0, x1 = s.random_uniform(32, key=getkey()), s.random_uniform(32, key=getkey())
    t = jr.uniform(getkey(), (32,))
    zero = lambda p, tt, x, args: jnp.zeros_like(x)  # noqa: E731
    loss = jfm.riemannian_cfm_loss(zero, None, x1, path=path, key=getkey(), x0=x0, t=t)
    # Zero model: |u_t|^2 / dim = d(x0, x1)^2 / 2 (constant speed).
    np.testing.assert_allclose(loss, _vj(s.dist)(x0, x1) ** 2 / 2, rtol=1e-10)
    # The exact conditional field of a point mass at x1 (its marginal field) has loss 0,
    # also when the model adds a normal component (projected away).
    target = x1[:1]

    def exact(p, tt, x, args):
        v = _vj(path.conditional_velocity, in_axes=(0, 0, None))(tt, x, target[0])
        return v + 3.0 * x

    xs = jnp.broadcast_to(target, x1.shape)
    loss = jfm.riemannian_cfm_loss(exact, None, xs, path=path, key=getkey(), t=0.9 * t)
    np.testing.assert_allclose(loss, 0.0, atol=1e-18)


def test_manifold_mlp_outputs_tangent_and_periodic(getkey):
    for name in ("sphere2", "so3", "product"):
        m = MANIFOLDS[name]
        net = jfm.models.ManifoldMLP(m, hidden_features=16, depth=2, rngs=nnx.Rngs(0))
        x = m.random_uniform(5, key=getkey())
        v = net(jnp.full(5, 0.3), x)
        assert v.shape == x.shape and v.dtype == x.dtype
        np.testing.assert_allclose(_vj(m.proj_tangent)(x, v), v, atol=1e-14)
        assert float(jnp.abs(v).max()) > 1e-3
    tor = jfm.FlatTorus(2)
    net = jfm.models.ManifoldMLP(tor, hidden_features=16, depth=1, rngs=nnx.Rngs(1))
    x = tor.random_uniform(5, key=getkey())
    np.testing.assert_allclose(net(jnp.zeros(5), x), net(jnp.zeros(5), x + 2 * math.pi), atol=1e-12)


def test_bad_inputs_raise():
    s = jfm.Sphere(2)
    with pytest.raises(ValueError, match="x0"):
        jfm.GeodesicPath(s).sample(0.5, jnp.zeros(2), jnp.zeros(3))
    with pytest.raises(ValueError, match="alpha"):
        jfm.GeodesicPath(s, jfm.VP())
    with pytest.raises(ValueError, match="not compact"):
        jfm.GeodesicPath(jfm.Euclidean(2))
    with pytest.raises(ValueError, match="source"):
        jfm.GeodesicPath(s, source=jfm.ManifoldUniform(jfm.FlatTorus(2)))
    with pytest.raises(TypeError, match="manifold"):
        jfm.GeodesicPath("sphere")
    with pytest.raises(ValueError, match="uniform"):
        jfm.Euclidean(2).random_uniform(3, key=jr.key(0))
    with pytest.raises(ValueError, match="kind"):
        jfm.GeodesicPath(s).target(0.5, jnp.eye(3)[0], jnp.eye(3)[1], kind="x1")
    with pytest.raises(ValueError, match="factors"):
        jfm.ProductManifold(s)
    with pytest.raises(ValueError, match="d"):
        jfm.Sphere(0)
    with pytest.raises(TypeError, match="path"):
        jfm.riemannian_cfm_loss(lambda *a: 0, None, jnp.ones((2, 3)), path=None, key=jr.key(0))
    with pytest.raises(ValueError, match="x1"):
        jfm.riemannian_cfm_loss(
            lambda *a: 0, None, jnp.ones((2, 2)), path=jfm.GeodesicPath(s), key=jr.key(0)
        )
