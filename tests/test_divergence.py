"""Divergence: exact (jvp chunks / jacfwd) and Hutchinson (jvp and vjp) estimators."""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jfm

from .helpers import raises_arg


def mlp_field(key, event_shape, hidden=16):
    """A random time-conditioned tanh MLP field on ``event_shape``, written with jnp."""
    d = math.prod(event_shape)
    k1, k2, k3, k4 = jr.split(key, 4)
    w1 = jr.normal(k1, (hidden, d + 1)) / math.sqrt(d + 1)
    b1 = jr.normal(k2, (hidden,))
    w2 = jr.normal(k3, (d, hidden)) / math.sqrt(hidden)
    b2 = jr.normal(k4, (d,))

    def f(t, x, args):
        dt = x.dtype
        inp = jnp.concatenate([x.reshape(-1), jnp.reshape(t, (1,)).astype(dt)])
        h = jnp.tanh(w1.astype(dt) @ inp + b1.astype(dt))
        return (w2.astype(dt) @ h + b2.astype(dt)).reshape(event_shape)

    return f


def jacfwd_trace(f, t, x):
    """The reference: the trace of the full Jacobian from jax.jacfwd."""
    d = x.size
    jac = jax.jacfwd(lambda y: f(t, y.reshape(x.shape), None).reshape(-1))(x.reshape(-1))
    return jnp.trace(jac.reshape(d, d))


def cubic(t, x, args):
    """f(x) = |x|^2 x: J = |x|^2 I + 2 x x^T, div = (D + 2) |x|^2, grad div = 2 (D + 2) x."""
    return jnp.sum(x**2) * x


@pytest.mark.slow
@pytest.mark.parametrize("event_shape", [(3,), (2, 2, 2)], ids=["vec", "cube"])
def test_exact_matches_jacfwd_trace(event_shape, getkey):
    f = mlp_field(getkey(), event_shape)
    x = jr.normal(getkey(), event_shape)
    ref = jacfwd_trace(f, 0.3, x)
    d = x.size
    for method, chunk in [("auto", None), ("jacfwd", None), ("jvp", None)] + [
        ("jvp", c) for c in (1, 3, 2 * d)
    ]:
        got = jfm.divergence_exact(f, 0.3, x, None, chunk=chunk, method=method)
        assert got.shape == () and got.dtype == jnp.float64
        # same derivatives, summed in another order: float64 round-off only
        assert abs(float(got - ref)) < 1e-12 * (1 + abs(float(ref))), (method, chunk)

    # batched and jitted (several chunks, one of them ragged)
    xs = jr.normal(getkey(), (4, *event_shape))
    batched = jax.jit(jax.vmap(lambda y: jfm.divergence_exact(f, 0.3, y, None, chunk=3)))(xs)
    refs = jnp.stack([jacfwd_trace(f, 0.3, y) for y in xs])
    assert float(jnp.max(jnp.abs(batched - refs))) < 1e-12 * (1 + float(jnp.max(jnp.abs(refs))))

    # float32 in, float32 out; agrees with the float64 value to float32 precision
    got32 = jfm.divergence_exact(f, 0.3, x.astype(jnp.float32), None, method="jvp", chunk=3)
    assert got32.dtype == jnp.float32
    assert abs(float(got32) - float(ref)) < 1e-5 * (1 + abs(float(ref)))  # float32 eps ~ 1e-7


def test_gradient_of_divergence_closed_form(getkey):
    # d = 4: div = 6 |x|^2, grad = 12 x, for both exact methods; Hutchinson's gradient
    # with fixed probes is 2 D x + 4 (x.u) u (Rademacher, |u|^2 = D), unbiased for 12 x.
    x = jr.normal(getkey(), (4,))
    for method in ("jacfwd", "jvp"):
        g = jax.grad(lambda y: jfm.divergence_exact(cubic, 0.0, y, None, method=method))(x)
        assert float(jnp.max(jnp.abs(g - 12 * x))) < 1e-12  # closed form, round-off only
    u = jr.rademacher(getkey(), (3, 4), dtype=jnp.float64)
    g = jax.grad(lambda y: jfm.divergence_hutchinson(cubic, 0.0, y, None, probe=u))(x)
    want = jnp.mean(8 * x.reshape(1, 4) + 4 * (u @ x).reshape(3, 1) * u, axis=0)
    assert float(jnp.max(jnp.abs(g - want))) < 1e-12  # closed form, round-off only


def test_fixed_probe_is_the_quadratic_form(getkey):
    a = jr.normal(getkey(), (5, 5))
    f = lambda t, x, args: a @ x
    x = jr.normal(getkey(), (5,))
    u = jr.normal(getkey(), (4, 5))
    est, se = jfm.divergence_hutchinson(f, 0.0, x, None, probe=u, return_stderr=True)
    terms = jnp.einsum("ki,ij,kj->k", u, a, u)  # u_k^T A u_k, independently
    assert abs(float(est - jnp.mean(terms))) < 1e-12  # same quadratic forms, round-off only
    assert abs(float(se - jnp.std(terms, ddof=1) / 2.0)) < 1e-12  # sd / sqrt(4)
    # the reverse-mode variant gives the same number for the same probes
    est_vjp = jfm.divergence_hutchinson(f, 0.0, x, None, probe=u, method="vjp")
    assert abs(float(est_vjp - est)) < 1e-12  # (u^T A) u vs u^T (A u): round-off only


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_jvp_and_vjp_estimates_agree(noise, getkey):
    f = mlp_field(getkey(), (2, 2, 2))
    x = jr.normal(getkey(), (2, 2, 2))
    key = getkey()
    kw = dict(key=key, probes=7, noise=noise, return_stderr=True)
    est, se = jfm.divergence_hutchinson(f, 0.7, x, None, **kw)
    est_v, se_v = jfm.divergence_hutchinson(f, 0.7, x, None, method="vjp", **kw)
    # same key -> same probes; forward vs reverse mode differ by round-off only
    assert abs(float(est - est_v)) < 1e-12 and abs(float(se - se_v)) < 1e-12
    # same key, same estimate (pure function of the key); another key, another estimate
    again = jfm.divergence_hutchinson(f, 0.7, x, None, key=key, probes=7, noise=noise)
    other = jfm.divergence_hutchinson(f, 0.7, x, None, key=getkey(), probes=7, noise=noise)
    assert float(again) == float(est) and float(other) != float(est)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_vjp_method_equals_jvp_for_the_same_probe(noise, getkey):
    f = mlp_field(getkey(), (5,))
    x = jr.normal(getkey(), (5,))
    u = (jr.rademacher if noise == "rademacher" else jr.normal)(getkey(), (3, 5), jnp.float64)
    est, se = jfm.divergence_hutchinson(f, 0.3, x, None, probe=u, return_stderr=True)
    est_v, se_v = jfm.divergence_hutchinson(
        f, 0.3, x, None, probe=u, return_stderr=True, method="vjp"
    )
    # same probes: u^T (J u) vs (u^T J) u differ by float64 round-off only
    assert abs(float(est - est_v)) < 1e-12 and abs(float(se - se_v)) < 1e-12
    # and both equal the hand-computed mean of u_k^T J u_k with the jacfwd Jacobian
    jac = jax.jacfwd(lambda y: f(0.3, y, None))(x)
    want = jnp.mean(jnp.einsum("ki,ij,kj->k", u, jac, u))
    assert abs(float(est_v - want)) < 1e-12  # round-off only
    # from a key it draws the same probes as the jvp version
    key = getkey()
    a = jfm.divergence_hutchinson(f, 0.3, x, None, key=key, probes=4, noise=noise, method="vjp")
    b = jfm.divergence_hutchinson(f, 0.3, x, None, key=key, probes=4, noise=noise)
    assert abs(float(a - b)) < 1e-12  # same probes, round-off only
    with raises_arg(ValueError, "probes", ">= 1"):
        jfm.divergence_hutchinson(f, 0.3, x, None, key=key, probes=0, method="vjp")
    assert not hasattr(jfm, "divergence_hutchinson_vjp")  # one name per concept


def test_estimator_values_match_functions(getkey):
    # jfm.ExactDivergence / jfm.HutchinsonDivergence called on one example are the
    # functions with the same options; their terms() give (f(x), terms) with the
    # primal output of the same linearization.
    f = mlp_field(getkey(), (2, 3))
    x = jr.normal(getkey(), (2, 3))
    key = getkey()
    for est in (jfm.ExactDivergence(), jfm.ExactDivergence(chunk=2, method="jvp"),
                jfm.ExactDivergence(method="jacfwd")):  # fmt: skip
        want = jfm.divergence_exact(f, 0.3, x, None, chunk=est.chunk, method=est.method)
        assert abs(float(est(f, 0.3, x) - want)) < 1e-12  # same computation
        assert est.num_terms == 1 and not est.needs_key and est.draw(key, (2, 3), x.dtype) is None
    ref = jacfwd_trace(f, 0.3, x)
    g = lambda y: f(0.3, y.reshape(2, 3), None).reshape(-1)
    out, terms = jfm.ExactDivergence(chunk=4).terms(g, x.reshape(-1), None)
    assert terms.shape == (1,) and abs(float(terms[0] - ref)) < 1e-12  # round-off only
    assert float(jnp.max(jnp.abs(out - g(x.reshape(-1))))) == 0.0  # the primal output
    for method in ("jvp", "vjp"):
        for noise in ("rademacher", "gaussian"):
            est = jfm.HutchinsonDivergence(probes=3, noise=noise, method=method)
            want, se = jfm.divergence_hutchinson(f, 0.3, x, None, key=key, probes=3, noise=noise,
                                                 method=method, return_stderr=True)  # fmt: skip
            got, gse = est(f, 0.3, x, key=key, return_stderr=True)
            assert abs(float(got - want)) < 1e-12 and abs(float(gse - se)) < 1e-12
            assert est.num_terms == 3 and est.needs_key
            u = est.draw(key, (2, 3), x.dtype)
            assert u.shape == (3, 2, 3) and u.dtype == x.dtype
            _, terms = est.terms(g, x.reshape(-1), u)
            fixed = jfm.divergence_hutchinson(f, 0.3, x, None, probe=u, method=method)
            assert abs(float(jnp.mean(terms) - fixed)) < 1e-12  # the same probes
    with raises_arg(TypeError, "key"):
        jfm.HutchinsonDivergence()(f, 0.3, x, key=None)


def test_hutchinson_unbiased_for_mlp(getkey):
    f = mlp_field(getkey(), (3,))
    x = jr.normal(getkey(), (3,))
    ref = jacfwd_trace(f, 0.4, x)
    n = 4000
    keys = jr.split(getkey(), n)
    for noise in ("rademacher", "gaussian"):
        est = jax.jit(
            jax.vmap(lambda k: jfm.divergence_hutchinson(f, 0.4, x, None, key=k, noise=noise))
        )(keys)
        se = float(jnp.std(est, ddof=1)) / math.sqrt(n)
        assert se > 0  # a real random estimate
        # unbiased: the mean over n independent keys is within 4.5 standard errors
        assert abs(float(jnp.mean(est)) - float(ref)) < 4.5 * se, (noise, se)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_variance_matches_theory(noise, getkey):
    # Linear field f(x) = A x: J = A, one probe's estimate u^T A u has mean tr A and
    # variance 2 ||S||_F^2 (Gaussian) or 2 (||S||_F^2 - sum_i S_ii^2) (Rademacher),
    # S = (A + A^T) / 2.
    d = 6
    a = jr.normal(getkey(), (d, d))
    f = lambda t, x, args: a @ x
    x = jr.normal(getkey(), (d,))
    s = 0.5 * (a + a.T)
    fro2 = float(jnp.sum(s**2))
    var_theory = 2 * fro2 if noise == "gaussian" else 2 * (fro2 - float(jnp.sum(jnp.diag(s) ** 2)))
    n = 20000
    est = np.asarray(
        jax.jit(jax.vmap(lambda k: jfm.divergence_hutchinson(f, 0.0, x, None, key=k, noise=noise)))(
            jr.split(getkey(), n)
        )
    )
    mean, var = est.mean(), est.var(ddof=1)
    m4 = np.mean((est - mean) ** 4)
    # standard error of the sample variance, (m4 - var^2) / n (chi-square style)
    se_var = math.sqrt((m4 - var**2) / n)
    assert abs(var - var_theory) < 5 * se_var, (var, var_theory, se_var)
    assert abs(mean - float(jnp.trace(a))) < 5 * math.sqrt(var_theory / n)  # unbiased

    # the mean over K probes: variance / K, and return_stderr estimates its sd
    k = 8
    out = jax.jit(
        jax.vmap(
            lambda kk: jfm.divergence_hutchinson(
                f, 0.0, x, None, key=kk, probes=k, noise=noise, return_stderr=True
            )
        )
    )(jr.split(getkey(), 4000))
    means, ses = np.asarray(out[0]), np.asarray(out[1])
    # Var(mean of K) = var / K, to within the sampling error of a 4000-sample variance
    assert abs(means.var(ddof=1) / (var_theory / k) - 1) < 0.15
    # E[stderr^2] = var / K (the sample variance over probes is unbiased)
    assert abs(np.mean(ses**2) / (var_theory / k) - 1) < 0.1


def test_bad_input(getkey):
    f = lambda t, x, args: -x
    x = jnp.ones(3)
    key = getkey()
    with raises_arg(ValueError, "probes", ">= 1"):
        jfm.divergence_hutchinson(f, 0.0, x, None, key=key, probes=0)
    with raises_arg(TypeError, "probes"):
        jfm.divergence_hutchinson(f, 0.0, x, None, key=key, probes=1.5)
    with raises_arg(ValueError, "noise", "rademacher"):
        jfm.divergence_hutchinson(f, 0.0, x, None, key=key, noise="uniform")
    with raises_arg(TypeError, "key", "required"):
        jfm.divergence_hutchinson(f, 0.0, x, None)
    with raises_arg(TypeError, "key", "int seed"):
        jfm.divergence_hutchinson(f, 0.0, x, None, key=0)
    with raises_arg(ValueError, "probe", r"\(K, 3\)"):
        jfm.divergence_hutchinson(f, 0.0, x, None, probe=jnp.ones((2, 4)))
    with raises_arg(ValueError, "probe", r"\(K, 3\)"):
        jfm.divergence_hutchinson(f, 0.0, x, None, probe=jnp.ones(3))
    with raises_arg(ValueError, "probes", "does not match"):
        jfm.divergence_hutchinson(f, 0.0, x, None, probe=jnp.ones((2, 3)), probes=3)
    with raises_arg(ValueError, "return_stderr", "at least 2"):
        jfm.divergence_hutchinson(f, 0.0, x, None, key=key, return_stderr=True)
    for fn, kw in [
        (jfm.divergence_exact, {}),
        (jfm.divergence_hutchinson, dict(key=key)),
        (jfm.divergence_hutchinson, dict(key=key, method="vjp")),
    ]:
        with raises_arg(TypeError, "x", "floating"):
            fn(f, 0.0, jnp.ones(3, jnp.int32), None, **kw)
        with raises_arg(TypeError, "f", "callable"):
            fn("f", 0.0, x, None, **kw)
        with raises_arg(ValueError, "t", "scalar"):
            fn(f, jnp.zeros(2), x, None, **kw)
        with raises_arg(ValueError, "f", "shape"):
            fn(lambda t, x, args: x[:2], 0.0, x, None, **kw)
    with raises_arg(ValueError, "method", "vjp"):
        jfm.divergence_hutchinson(f, 0.0, x, None, key=key, method="jacfwd")
    with raises_arg(ValueError, "method", "jacfwd"):
        jfm.divergence_exact(f, 0.0, x, None, method="reverse")
    with raises_arg(ValueError, "chunk", ">= 1"):
        jfm.divergence_exact(f, 0.0, x, None, chunk=0)
    with raises_arg(ValueError, "chunk", "jvp"):
        jfm.divergence_exact(f, 0.0, x, None, chunk=2, method="jacfwd")
