"""Tests for the conditional flow matching loss and time samplers (jfm/_losses)."""

import functools
import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.integrate
import scipy.stats
from flax import nnx

import jfm

from .helpers import raises_arg


def _affine_apply(p, t, x, args):
    """A tiny batch-first model: p["w"] * x + p["b"] * t (per example)."""
    return p["w"] * x + p["b"] * t.reshape(-1, *([1] * (x.ndim - 1)))


# -- (a) the loss equals a hand computation ---------------------------------------------


def _vp_coeffs(t, bmin=0.1, bmax=20.0):
    s = 1 - t
    log_a = -0.25 * s**2 * (bmax - bmin) - 0.5 * s * bmin
    a = np.exp(log_a)
    sig = np.sqrt(1 - a**2)
    da = 0.5 * (bmin + s * (bmax - bmin)) * a
    return a, sig, da, -a * da / sig


def _cot_coeffs(t):
    return t, 1 - t, np.ones_like(t), -np.ones_like(t)


@pytest.mark.parametrize("kind", ["velocity", "x1", "x0", "score"])
@pytest.mark.parametrize(
    "schedule,coeffs", [(jfm.CondOT(), _cot_coeffs), (jfm.VP(), _vp_coeffs)], ids=["condot", "vp"]
)
def test_loss_matches_hand_computation(schedule, coeffs, kind, getkey):
    path = jfm.AffinePath(schedule)
    x1 = np.asarray(jr.normal(getkey(), (5, 2, 3)))
    x0 = np.asarray(jr.normal(getkey(), (5, 2, 3)))
    t = np.array([0.05, 0.3, 0.5, 0.77, 0.95])
    p = {"w": jnp.asarray(0.7), "b": jnp.asarray(-0.3)}
    loss = jfm.cfm_loss(
        _affine_apply, p, jnp.asarray(x1), path=path, key=getkey(), x0=jnp.asarray(x0),
        t=jnp.asarray(t), kind=kind,
    )  # fmt: skip
    a, s, da, ds = (c[:, None, None] for c in coeffs(t))
    xt = a * x1 + s * x0
    target = {"velocity": da * x1 + ds * x0, "x1": x1, "x0": x0, "score": -x0 / s}[kind]
    model = 0.7 * xt - 0.3 * t[:, None, None]
    expect = ((model - target) ** 2).mean(axis=(1, 2))
    assert loss.shape == (5,) and loss.dtype == jnp.float64
    # Same closed forms evaluated in numpy: float64 round-off.
    np.testing.assert_allclose(loss, expect, rtol=1e-12)


# -- (b) unbiasedness: CFM and marginal FM differ by a parameter-free constant -----------

M = np.array([1.0, -2.0])  # data N(M, V I) under CondOT with x0 ~ N(0, I)
V = 0.5


def _marginal_coeffs(t):
    """u_t(x) = a(t) x + b(t) M, the exact marginal velocity for Gaussian data."""
    s2 = t**2 * V + (1 - t) ** 2  # Var(x_t)
    a = (t * V - (1 - t)) / s2  # Cov(x1 - x0, x_t) / Var(x_t)
    return a, 1 - t * a


def _gauss_apply(p, t, x, args):
    a, b = _marginal_coeffs(t)
    return p["c"] * a[:, None] * x + p["d"] * b[:, None] * jnp.asarray(M)[None, :]


def test_cfm_is_unbiased_for_the_marginal_fm_loss(getkey):
    n = 40_000
    path = jfm.AffinePath(jfm.CondOT())
    x1 = jnp.asarray(M)[None, :] + math.sqrt(V) * jr.normal(getkey(), (n, 2))
    key = getkey()
    exact = {"c": jnp.asarray(1.0), "d": jnp.asarray(1.0)}
    off = {"c": jnp.asarray(1.3), "d": jnp.asarray(0.8)}

    @jax.jit
    def losses(p):
        return jfm.cfm_loss(_gauss_apply, p, x1, path=path, key=key)

    # Same key: the same (t, x0, x_t) draws for both models (paired comparison).
    l_exact, l_off = losses(exact), losses(off)
    t = jfm.uniform_time(n, key=jr.split(key, 3)[0], dtype=jnp.float64)
    x0 = jr.normal(jr.split(key, 3)[1], (n, 2), jnp.float64)
    xt = t[:, None] * x1 + (1 - t)[:, None] * x0
    # The pairing is right: the exact model's CFM loss recomputed from these draws.
    by_hand = jnp.mean((_gauss_apply(exact, t, xt, None) - (x1 - x0)) ** 2, 1)
    np.testing.assert_allclose(l_exact, by_hand, rtol=1e-10)  # same numbers, jit vs eager
    fm_diff = jnp.mean((_gauss_apply(off, t, xt, None) - _gauss_apply(exact, t, xt, None)) ** 2, 1)
    cfm_diff = l_off - l_exact
    # CFM(theta) - CFM(theta*) estimates FM(theta) - FM(theta*) = E||u_theta - u||^2 / d.
    se = float(jnp.std(cfm_diff - fm_diff)) / math.sqrt(n)
    gap = float(jnp.mean(cfm_diff - fm_diff))
    assert abs(gap) < 4 * se, (gap, se)  # 4 standard errors of a Monte-Carlo mean
    assert float(jnp.mean(fm_diff)) > 20 * se  # the perturbed field is measurably worse
    assert float(jnp.mean(l_off)) > float(jnp.mean(l_exact))

    # Gradient of the expected CFM loss vanishes at the exact marginal velocity.
    per_example = jax.jit(jax.jacfwd(losses))  # 2 scalar parameters: 2 JVPs
    for p, zero in ((exact, True), (off, False)):
        g = per_example(p)
        for name in ("c", "d"):
            mean, se = float(jnp.mean(g[name])), float(jnp.std(g[name])) / math.sqrt(n)
            if zero:
                assert abs(mean) < 4 * se, (name, mean, se)  # 4 Monte-Carlo standard errors
            else:
                assert abs(mean) > 10 * se, (name, mean, se)  # off the optimum: clearly not 0


# -- (c) time samplers ----------------------------------------------------------------


def test_uniform_time_moments(getkey):
    n = 200_000
    t = jfm.uniform_time(n, key=getkey(), dtype=jnp.float64)
    assert t.shape == (n,) and t.dtype == jnp.float64
    assert float(t.min()) >= 0 and float(t.max()) < 1
    # Standard errors: var/n for the mean; for the variance, sqrt((mu4 - var^2)/n) with
    # mu4 = 1/80 for U[0, 1].
    assert abs(float(t.mean()) - 0.5) < 4 * math.sqrt(1 / 12 / n)
    assert abs(float(t.var()) - 1 / 12) < 4 * math.sqrt((1 / 80 - 1 / 144) / n)
    assert jfm.uniform_time(3, key=getkey(), dtype=jnp.float32).dtype == jnp.float32


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (0.8, 0.5)])
def test_logit_normal_time_moments(mean, std, getkey):
    n = 200_000
    t = jfm.logit_normal_time(n, key=getkey(), mean=mean, std=std, dtype=jnp.float64)

    def moment(k):
        f = lambda z: scipy.special.expit(mean + std * z) ** k * scipy.stats.norm.pdf(z)
        return scipy.integrate.quad(f, -np.inf, np.inf, epsabs=1e-13)[0]

    m1, m2 = moment(1), moment(2)
    sd1, sd2 = math.sqrt(m2 - m1**2), math.sqrt(moment(4) - m2**2)
    # 4 standard errors of Monte-Carlo means of t and t^2.
    assert abs(float(t.mean()) - m1) < 4 * sd1 / math.sqrt(n)
    assert abs(float(jnp.mean(t**2)) - m2) < 4 * sd2 / math.sqrt(n)
    # Quantiles are sigmoid(mean + std * normal quantiles): check the median exactly-ish.
    med = scipy.special.expit(mean)
    density = scipy.stats.norm.pdf(0) / (std * med * (1 - med))  # p(median)
    assert abs(float(jnp.median(t)) - med) < 4 * 0.5 / (density * math.sqrt(n))


# -- (d) determinism, jit, grad, dtypes ------------------------------------------------


def test_same_key_same_loss_and_jit_grad(getkey):
    net = jfm.models.MLP(2, hidden_features=16, depth=2, time_embed_dim=8, rngs=nnx.Rngs(0))
    apply, params = jfm.split_model(net)
    path = jfm.AffinePath(jfm.Cosine())
    x1 = jr.normal(getkey(), (8, 2))
    k1, k2 = getkey(), getkey()
    sampler = functools.partial(jfm.logit_normal_time, mean=0.3)

    def mean_loss(p, x1, key):
        return jnp.mean(jfm.cfm_loss(apply, p, x1, path=path, key=key, time_sampler=sampler))

    value_and_grad = jax.jit(jax.value_and_grad(mean_loss))
    value, grads = value_and_grad(params, x1, k1)
    np.testing.assert_array_equal(value_and_grad(params, x1, k1)[0], value)  # bit for bit
    assert float(value_and_grad(params, x1, k2)[0]) != float(value)
    # Gradient vs a central finite difference along a random direction.
    direction = jax.tree.map(lambda p: jr.normal(jr.key(1), p.shape, p.dtype), params)
    h = 1e-3
    shift = lambda s: jax.tree.map(lambda p, d: p + s * d, params, direction)
    fd = (value_and_grad(shift(h), x1, k1)[0] - value_and_grad(shift(-h), x1, k1)[0]) / (2 * h)
    dot = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
    # float32 params: finite-difference truncation O(h^2) plus float32 round-off / h.
    np.testing.assert_allclose(float(dot), float(fd), rtol=2e-3, atol=1e-4)
    # float32 data gives a float32 loss (parameters are float32 too).
    out32 = jax.jit(mean_loss)(params, x1.astype(jnp.float32), k1)
    assert out32.dtype == jnp.float32 and bool(jnp.isfinite(out32))


# -- (e) smoothing adds smoothing^2 -----------------------------------------------------


def test_smoothing_adds_its_variance(getkey):
    n, d, smoothing = 4000, 8, 0.3
    path = jfm.AffinePath(jfm.CondOT())
    x1 = jr.normal(getkey(), (n, d))
    x0 = jr.normal(getkey(), (n, d))
    t = jr.uniform(getkey(), (n,))

    def oracle(p, tt, x, args):
        """The exact conditional target plus the model's identity response to (x - x_t)."""
        clean = jax.vmap(path.sample)(tt, x0, x1)
        return jax.vmap(path.target)(tt, x0, x1) + p * (x - clean)

    key = getkey()
    base = jfm.cfm_loss(oracle, 1.0, x1, path=path, key=key, x0=x0, t=t)
    np.testing.assert_allclose(base, 0.0, atol=1e-13)  # the exact target: zero loss
    smooth = jfm.cfm_loss(oracle, 1.0, x1, path=path, key=key, x0=x0, t=t, smoothing=smoothing)
    # loss_i = smoothing^2 * mean_j eps_ij^2: mean smoothing^2, sd smoothing^2 sqrt(2/d).
    se = smoothing**2 * math.sqrt(2 / d / n)
    assert abs(float(smooth.mean()) - smoothing**2) < 4 * se
    # Per example it is a scaled chi-square with d degrees of freedom: check its variance.
    np.testing.assert_allclose(float(smooth.var()), smoothing**4 * 2 / d, rtol=0.1)  # ~2% sd


# -- (f) errors -------------------------------------------------------------------------


def test_loss_errors(getkey):
    path = jfm.AffinePath(jfm.CondOT())
    x1 = jnp.zeros((4, 2))
    p = {"w": jnp.asarray(1.0), "b": jnp.asarray(0.0)}
    key = getkey()
    loss = functools.partial(jfm.cfm_loss, _affine_apply, p)
    with raises_arg(ValueError, "x0"):
        loss(x1, path=path, key=key, x0=jnp.zeros((4, 3)))
    with raises_arg(ValueError, "kind"):
        loss(x1, path=path, key=key, kind="eps")
    with raises_arg(ValueError, "smoothing"):
        loss(x1, path=path, key=key, smoothing=-0.1)
    with raises_arg(ValueError, "smoothing"):  # a Python number is checked under jit too
        jax.jit(lambda k: loss(x1, path=path, key=k, smoothing=-0.1))(key)
    with raises_arg(TypeError, "path"):
        loss(x1, path=jfm.CondOT(), key=key)
    with raises_arg(TypeError, "key"):
        loss(x1, path=path, key=None)
    with raises_arg(TypeError, "key"):
        loss(x1, path=path, key=0)
    with raises_arg(ValueError, "t"):
        loss(x1, path=path, key=key, t=jnp.zeros(3))
    with raises_arg(ValueError, "t"):
        loss(x1, path=path, key=key, t=jnp.full(4, 1.5))
    with raises_arg(ValueError, "apply"):
        jfm.cfm_loss(lambda p, t, x, a: x[:, :1], p, x1, path=path, key=key)
    with raises_arg(TypeError, "x1"):
        loss(jnp.zeros((4, 2), jnp.int32), path=path, key=key)
    for sampler in (jfm.uniform_time, jfm.logit_normal_time):
        with raises_arg(ValueError, "n"):
            sampler(0, key=key)
        with raises_arg(TypeError, "key"):
            sampler(3, key=None)
    with raises_arg(ValueError, "std"):
        jfm.logit_normal_time(3, key=key, std=0.0)


def test_given_times_closed_over_by_jit():
    # Concrete times captured by a jit trace are range-checked on the host, not traced.
    path = jfm.AffinePath(jfm.CondOT())
    x1 = jnp.array([[1.0, 2.0], [0.5, -1.0]])
    t = jnp.array([0.2, 0.5])

    def apply(p, t, x, args):
        return p * x

    loss = functools.partial(jfm.cfm_loss, apply, x1=x1, path=path, t=t)
    eager = loss(jnp.float64(1.0), key=jr.key(0))
    np.testing.assert_allclose(jax.jit(lambda p: loss(p, key=jr.key(0)))(1.0), eager, rtol=1e-14)
    late = t + 1.0
    with raises_arg(ValueError, "t", "lie in"):
        jax.jit(lambda p: jfm.cfm_loss(apply, p, x1, path=path, t=late, key=jr.key(0)))(1.0)
