"""Log-likelihood by the augmented ODE, and bits per dimension."""

import math

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jfm

from .helpers import raises_arg, raises_exact

CONDOT = jfm.AffinePath(jfm.CondOT())
COSINE = jfm.AffinePath(jfm.Cosine())
#: Dopri5 at tight tolerances: the solver error sits far below the 2e-4 target.
TIGHT = dict(solver=dfx.Dopri5(), rtol=1e-8, atol=1e-8)


def make_gmm():
    """Three anisotropic, overlapping components in 2-D (float64)."""
    means = jnp.array([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]])
    covs = jnp.stack(
        [
            jnp.array([[0.5, 0.1], [0.1, 0.3]]),
            0.4 * jnp.eye(2),
            jnp.array([[0.3, -0.1], [-0.1, 0.6]]),
        ]
    )
    return jfm.GaussianMixture(means, covs, jnp.array([0.3, 0.5, 0.2]))


GMM = make_gmm()


def points(key, n=4):
    """Data points at t = 1: samples of the mixture plus one point in a low-density gap."""
    x = GMM.sample(n - 1, key=key)
    return jnp.concatenate([x, jnp.array([[0.0, 0.5]])])


class GaussField(eqx.Module):
    """Exact CondOT velocity of data N(0, s^2 I): x_t ~ N(0, v I), v = t^2 s^2 + (1 - t)^2,
    u_t(x) = v' / (2 v) x; cheap to compile (no mixture algebra)."""

    s: jax.Array

    def __call__(self, t, x, args):
        s2 = (self.s**2).astype(x.dtype)
        t = jnp.asarray(t, x.dtype)
        v = t**2 * s2 + (1 - t) ** 2
        dv = 2 * t * s2 - 2 * (1 - t)
        return dv / (2 * v) * x

    def log_prob(self, x):
        s = self.s.astype(x.dtype)
        return jnp.sum(-0.5 * (x / s) ** 2 - jnp.log(s) - 0.5 * math.log(2 * math.pi), axis=-1)


@pytest.mark.slow
@pytest.mark.parametrize("path", [CONDOT, COSINE], ids=["condot", "cosine"])
def test_exact_matches_gmm_density(path, getkey):
    # For CondOT and Cosine the source at t = 0 is exactly N(0, I) and the marginal at
    # t = 1 exactly the mixture, so log_prob must reproduce GMM.log_prob.
    x = points(getkey())
    logp, info = jfm.log_prob(GMM.velocity_field(path), x, path=path, **TIGHT)
    ref = jax.vmap(GMM.log_prob)(x)
    assert logp.shape == (4,) and logp.dtype == jnp.float64
    assert float(jnp.max(jnp.abs(logp - ref))) < 2e-4  # the target (seen: ~1e-8)
    assert bool(jnp.all(info.success)) and info.stderr is None
    assert info.nfe.shape == (4,) and bool(jnp.all(info.nfe > 0))


@pytest.mark.slow
def test_hutchinson_unbiased_with_stderr(getkey):
    # Each example gets its own probes: 3 points x 48 copies give 48 independent
    # Hutchinson log-densities per point; K = 2 probes each, so info.stderr is defined.
    x = points(getkey(), 3)
    reps = 48
    xr = jnp.repeat(x, reps, axis=0)
    field = GMM.velocity_field(CONDOT)
    kw = dict(path=CONDOT, divergence=jfm.HutchinsonDivergence(probes=2), **TIGHT)
    logp, info = jfm.log_prob(field, xr, key=getkey(), **kw)
    ref = jax.vmap(GMM.log_prob)(x)
    est = np.asarray(logp).reshape(3, reps)
    se = est.std(axis=1, ddof=1) / math.sqrt(reps)
    assert np.all(se > 0)  # really random
    # unbiased: each point's mean over independent probes within 4.5 standard errors
    assert np.all(np.abs(est.mean(axis=1) - np.asarray(ref)) < 4.5 * se), (est.mean(1), ref, se)
    # info.stderr^2 estimates the variance of one K = 2 estimate: its mean over copies
    # matches the sample variance over copies (to within the sampling error of both)
    var = est.var(axis=1, ddof=1)
    ratio = np.asarray(jnp.mean(info.stderr.reshape(3, reps) ** 2, axis=1)) / var
    assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio
    # same key, same values (probes are a pure function of the key)
    again, _ = jfm.log_prob(field, xr, key=jr.key(7), **kw)
    again2, _ = jfm.log_prob(field, xr, key=jr.key(7), **kw)
    assert bool(jnp.all(again == again2))


# -- gradients --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "adjoint",
    [dfx.RecursiveCheckpointAdjoint(), dfx.BacksolveAdjoint()],
    ids=["checkpoint", "backsolve"],
)
@pytest.mark.slow
def test_gradient_wrt_mixture_mean(adjoint, getkey):
    x = points(getkey(), 3)
    # Fixed steps: the discrete solve is a smooth function of the parameters, so the
    # central difference converges to its gradient. Heun and a joint solve keep the
    # compilation of the gradient short; 128 steps keep the solver error small.
    kw = dict(solver=dfx.Heun(), steps=128, path=CONDOT, batch="joint")

    def total(mean0, adjoint=None):
        gmm = eqx.tree_at(lambda g: g.means, GMM, GMM.means.at[0].set(mean0))
        logp, _ = jfm.log_prob(gmm.velocity_field(CONDOT), x, adjoint=adjoint, **kw)
        return jnp.sum(logp)

    m0 = GMM.means[0]
    grad = jax.grad(total)(m0, adjoint)
    # (the central difference uses the default adjoint: one compilation for both tests)
    h = 1e-4
    fd = jnp.stack([(total(m0 + h * e) - total(m0 - h * e)) / (2 * h) for e in jnp.eye(2)])
    assert float(jnp.max(jnp.abs(fd))) > 1e-2  # a gradient that matters
    # checkpoint: the exact gradient of the discrete solve (central difference O(h^2)
    # ~ 1e-8); backsolve: the continuous adjoint solved on the same 128 Heun steps
    # backwards, which differs from it by the solver's O(dt^2) error (~2e-4 here)
    tol = 1e-6 if isinstance(adjoint, dfx.RecursiveCheckpointAdjoint) else 2e-3
    assert float(jnp.max(jnp.abs(grad - fd))) < tol * (1 + float(jnp.max(jnp.abs(fd))))


# -- solver statistics, batching, compilation -------------------------------------------


_CALLS = [0]
_TRACES = [0]


def _tick():
    _CALLS[0] += 1


class Counting(eqx.Module):
    """Counts evaluations (host callback) and traces (Python side effect) of a field."""

    inner: eqx.Module

    def __call__(self, t, x, args):
        _TRACES[0] += 1
        jax.debug.callback(_tick)
        return self.inner(t, x, args)


def counted(field, x, **kw):
    _CALLS[0] = 0
    logp, info = jfm.log_prob(Counting(field), x, **kw)
    jax.block_until_ready(logp)
    jax.effects_barrier()
    return logp, info, _CALLS[0]


def test_joint_batch_nfe_and_no_recompile(getkey):
    x = jr.normal(getkey(), (4, 3))
    field = GaussField(jnp.asarray(0.6))
    kw = dict(path=CONDOT, batch="joint", **TIGHT)
    _TRACES[0] = 0
    logp, info, calls = counted(field, x, **kw)
    # one joint solve: scalar counters; the callback (no batched operand) fires once per
    # batched evaluation of the augmented field, i.e. once per stage (the divergence
    # reuses the field's primal output): the count is exactly the computed nfe
    assert info.nfe.shape == () and calls == int(info.nfe) and calls > 0
    assert float(jnp.max(jnp.abs(logp - field.log_prob(x)))) < 1e-6  # closed form, tol 1e-8
    # x0: the flow is x_t = sqrt(v(t)) z, so x0 = x / s
    assert float(jnp.max(jnp.abs(info.x1 - x / 0.6))) < 1e-6  # closed form, tol 1e-8
    traces = _TRACES[0]
    # a second call with new data and new parameters (same shapes) does not retrace
    field2, x2 = GaussField(jnp.asarray(0.8)), jr.normal(getkey(), (4, 3))
    logp2, _, _ = counted(field2, x2, **kw)
    assert _TRACES[0] == traces
    assert float(jnp.max(jnp.abs(logp2 - field2.log_prob(x2)))) < 1e-6  # new values used


def test_vmap_nfe_matches_counted_calls(getkey):
    # identical examples: every per-example solve is the same, so the batched loop makes
    # exactly the calls of one example (2 more for the initial-step heuristic included)
    x = jnp.broadcast_to(jr.normal(getkey(), (1, 3)), (3, 3))
    logp, info, calls = counted(GaussField(jnp.asarray(0.6)), x, path=CONDOT, **TIGHT)
    assert bool(jnp.all(info.nfe == info.nfe[0])) and calls == int(info.nfe[0])


def test_float32_and_prior_callable(getkey):
    # the field of N(0, s^2 I) data under CondOT with an explicit prior callable; the
    # dtype follows x; fixed steps
    gauss = GaussField(jnp.asarray(0.5, jnp.float32))
    x = 0.5 * jr.normal(getkey(), (5, 3), jnp.float32)
    prior = lambda z: -0.5 * jnp.sum(z**2) - 1.5 * jnp.log(2 * jnp.pi).astype(z.dtype)
    kw = dict(solver=dfx.Tsit5(), steps=20, prior_log_prob=prior)
    logp, info = jfm.log_prob(gauss, x, **kw)
    # and under an outer jax.jit (the field's arrays closed over)
    jitted = jax.jit(lambda y: jfm.log_prob(gauss, y, **kw)[0])(x)
    assert float(jnp.max(jnp.abs(jitted - logp))) < 1e-6  # same computation, float32
    assert logp.dtype == jnp.float32 and info.x1.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(logp - gauss.log_prob(x)))) < 1e-4  # Tsit5 20 steps, f32
    assert bool(jnp.all(info.nfe == 6 * 20 + 1))  # FSAL 7-stage tableau: 6 n + 1


def test_failure_reported(getkey):
    x = jr.normal(getkey(), (4, 3))
    kw = dict(path=CONDOT, solver=dfx.Dopri5(), rtol=1e-10, atol=1e-10, max_steps=2)
    field = GaussField(jnp.asarray(0.6))
    with pytest.raises(Exception, match="max_steps=2 reached"):
        jax.block_until_ready(jfm.log_prob(field, x, **kw)[0])
    _, info = jfm.log_prob(field, x, throw=False, **kw)
    assert not bool(jnp.any(info.success))
    assert bool(jnp.all(info.result == dfx.RESULTS.max_steps_reached))


def test_bad_input(getkey):
    field = GMM.velocity_field(CONDOT)
    x = points(getkey())
    kw = dict(solver=dfx.Dopri5(), rtol=1e-5, atol=1e-5)
    with raises_arg(ValueError, "path", "prior_log_prob"):
        jfm.log_prob(field, x, **kw)
    with raises_arg(ValueError, "path", "prior_log_prob"):
        jfm.log_prob(field, x, path=CONDOT, prior_log_prob=CONDOT.prior_log_prob, **kw)
    with raises_arg(TypeError, "path"):
        jfm.log_prob(field, x, path="condot", **kw)
    with raises_arg(TypeError, "key", "required"):
        jfm.log_prob(field, x, path=CONDOT, divergence="hutchinson", **kw)
    with raises_arg(TypeError, "key", "required"):
        jfm.log_prob(field, x, path=CONDOT, divergence=jfm.HutchinsonDivergence(probes=3), **kw)
    with raises_arg(ValueError, "probes", ">= 1"):
        jfm.HutchinsonDivergence(probes=0)
    with raises_arg(ValueError, "noise"):
        jfm.HutchinsonDivergence(noise="x")
    with raises_arg(ValueError, "method", "vjp"):
        jfm.HutchinsonDivergence(method="jacfwd")
    with raises_arg(ValueError, "chunk", ">= 1"):
        jfm.ExactDivergence(chunk=0)
    with raises_arg(ValueError, "chunk", "jvp"):
        jfm.ExactDivergence(chunk=2, method="jacfwd")
    with raises_arg(ValueError, "divergence", "hutchinson"):
        jfm.log_prob(field, x, path=CONDOT, divergence="approx", **kw)
    with raises_arg(TypeError, "divergence", "estimator"):
        jfm.log_prob(field, x, path=CONDOT, divergence=3, **kw)
    with raises_arg(ValueError, "batch"):
        jfm.log_prob(field, x, path=CONDOT, batch="loop", **kw)
    with raises_arg(TypeError, "x", "floating"):
        jfm.log_prob(field, x.astype(jnp.int32), path=CONDOT, **kw)
    with raises_arg(ValueError, "x", "batch axis"):
        jfm.log_prob(field, jnp.zeros(()), path=CONDOT, **kw)
    with raises_arg(ValueError, "t0", "below `t1`"):
        jfm.log_prob(field, x, path=CONDOT, t0=1.0, t1=0.0, **kw)
    with raises_exact(ValueError, "Step controls exclude each other.*got steps, rtol/atol"):
        jfm.log_prob(field, x, path=CONDOT, steps=4, **kw)
    with raises_arg(ValueError, "steps", "exceeds `max_steps`"):
        jfm.log_prob(field, x, path=CONDOT, solver=dfx.Heun(), steps=9, max_steps=8)
    with raises_arg(ValueError, "ts", "strictly monotone"):
        jfm.log_prob(field, x, path=CONDOT, solver=dfx.Heun(), ts=jnp.array([0.0, 0.7, 0.5, 1.0]))
    with raises_arg(ValueError, "t1", "disagrees"):
        jfm.log_prob(field, x, path=CONDOT, solver=dfx.Heun(), ts=jnp.linspace(0, 1, 4), t1=0.9)
    with raises_arg(ValueError, "dt0", "adaptive stepping only"):
        jfm.log_prob(field, x, path=CONDOT, solver=dfx.Heun(), steps=4, dt0=-0.1)
    with raises_arg(ValueError, "solver", "error estimate"):
        jfm.log_prob(field, x, path=CONDOT, solver=dfx.Euler(), rtol=1e-3, atol=1e-3)
    with raises_arg(TypeError, "solver"):
        jfm.log_prob(field, x, path=CONDOT, solver="dopri5", steps=4)
    with raises_arg(ValueError, "field", "shape"):
        jfm.log_prob(lambda t, y, a: y[:1], x, path=CONDOT, steps=2, solver=dfx.Euler())


@pytest.mark.slow
def test_divergence_values_and_strings(getkey):
    # the estimator values: "exact" is ExactDivergence(); "hutchinson" is one Rademacher
    # probe (HutchinsonDivergence()), the same numbers for the same key; chunked exact
    # jvp equals jacfwd; 2+ probes give a stderr, one probe none.
    x = jr.normal(getkey(), (3, 3))
    field = GaussField(jnp.asarray(0.6))
    kw = dict(path=CONDOT, solver=dfx.Heun(), steps=16)
    a, sa = jfm.log_prob(field, x, divergence="exact", **kw)
    b, _ = jfm.log_prob(field, x, divergence=jfm.ExactDivergence(chunk=2, method="jvp"), **kw)
    np.testing.assert_allclose(a, b, rtol=1e-12)  # same derivatives, other summation order
    assert sa.stderr is None and isinstance(sa, jfm.Solution)
    np.testing.assert_array_equal(sa.log_prob, a)
    key = getkey()
    h1, s1 = jfm.log_prob(field, x, divergence="hutchinson", key=key, **kw)
    h2, _ = jfm.log_prob(field, x, divergence=jfm.HutchinsonDivergence(), key=key, **kw)
    np.testing.assert_array_equal(h1, h2)
    assert s1.stderr is None
    # the reverse-mode estimator with the same probes: the same numbers up to round-off
    hv, _ = jfm.log_prob(field, x, divergence=jfm.HutchinsonDivergence(method="vjp"), key=key,
                         **kw)  # fmt: skip
    np.testing.assert_allclose(hv, h1, rtol=1e-12)
    # this field is isotropic linear (J = c(t) I): a Rademacher probe's u^T J u = D c(t)
    # exactly, so Hutchinson equals the exact divergence up to round-off
    np.testing.assert_allclose(h1, a, rtol=1e-12)
    g4, s4 = jfm.log_prob(field, x, divergence=jfm.HutchinsonDivergence(probes=4, noise="gaussian"),
                          key=key, **kw)  # fmt: skip
    assert s4.stderr.shape == (3,) and bool(jnp.all(s4.stderr > 0))  # gaussian: random


@pytest.mark.slow
def test_ts_grid_and_fixed_step_nfe(getkey):
    # A grid ts= is given increasing and integrated from t1 back to t0: the same as a
    # uniform grid's fixed steps, and nfe against counted calls (Heun: 2 per step).
    x = jr.normal(getkey(), (3, 3))
    field = GaussField(jnp.asarray(0.6))
    grid = jnp.linspace(0.0, 1.0, 9)
    a, sa, calls = counted(field, x, path=CONDOT, solver=dfx.Heun(), ts=grid, batch="joint")
    b, _ = jfm.log_prob(field, x, path=CONDOT, solver=dfx.Heun(), steps=8, batch="joint")
    np.testing.assert_allclose(a, b, rtol=1e-12)  # the same 8 steps up to round-off
    assert calls == int(sa.nfe) == 16 and int(sa.num_steps) == 8
    # a non-uniform grid converges to the closed form too
    s = jnp.linspace(0.0, 1.0, 65)
    c, _ = jfm.log_prob(field, x, path=CONDOT, solver=dfx.Heun(), ts=s + 0.1 * jnp.sin(jnp.pi * s))
    assert float(jnp.max(jnp.abs(c - field.log_prob(x)))) < 5e-3  # Heun, 64 steps: ~1.4e-3 seen


# -- bits per dimension -----------------------------------------------------------------


def test_bits_per_dim_uniform_model_is_exact(getkey):
    # a model uniform on [-1, 1]^D (log p = -D log 2) scores exactly `bits`
    x_int = np.random.default_rng(0).integers(0, 32, (6, 4, 4, 3), dtype=np.uint8)
    seen = []

    def uniform(x):
        seen.append(x)
        return jnp.full(x.shape[:1], -x[0].size * math.log(2.0), x.dtype)

    bpd = jfm.bits_per_dim(uniform, x_int, bits=5, key=getkey())
    assert bpd.shape == (6,) and bpd.dtype == jnp.float64
    assert float(jnp.max(jnp.abs(bpd - 5.0))) < 1e-12  # closed form, round-off only
    # the dequantized data lie in their cells: floor((x + 1) / 2 * 2^bits) == x_int
    x = np.asarray(seen[0])
    assert np.all((x >= -1) & (x < 1))
    assert np.all(np.floor((x + 1) / 2 * 32).astype(np.uint8) == x_int)


def test_bits_per_dim_gaussian_expectation(getkey):
    # x_int uniform on {0..2^b - 1} and u ~ U[0, 1) make x uniform on [-1, 1), E x^2 = 1/3;
    # under the model N(0, s^2 I): E bpd = (log(2 pi s^2) / 2 + 1 / (6 s^2)) / log 2 + b - 1
    s, b, d, n = 0.7, 3, 4, 20000
    x_int = np.random.default_rng(1).integers(0, 2**b, (n, d))
    gauss = lambda x: jnp.sum(-0.5 * (x / s) ** 2 - 0.5 * math.log(2 * math.pi * s**2), axis=1)
    bpd = np.asarray(jfm.bits_per_dim(gauss, x_int, bits=b, key=getkey()))
    want = (0.5 * math.log(2 * math.pi * s**2) + 1 / (6 * s**2)) / math.log(2) + b - 1
    se = bpd.std(ddof=1) / math.sqrt(n)
    assert abs(bpd.mean() - want) < 4.5 * se, (bpd.mean(), want, se)  # Monte Carlo mean


def test_bits_per_dim_bad_input(getkey):
    f = lambda x: jnp.zeros(x.shape[:1])
    key = getkey()
    x_int = jnp.zeros((2, 3), jnp.int32)
    with raises_arg(TypeError, "x_int", "integer"):
        jfm.bits_per_dim(f, jnp.zeros((2, 3)), bits=8, key=key)
    with raises_arg(ValueError, "x_int", "lie in"):
        jfm.bits_per_dim(f, x_int + 256, bits=8, key=key)
    with raises_arg(ValueError, "bits"):
        jfm.bits_per_dim(f, x_int, bits=0, key=key)
    with raises_arg(TypeError, "bits"):
        jfm.bits_per_dim(f, x_int, bits=8.0, key=key)
    with raises_arg(TypeError, "log_prob_fn", "callable"):
        jfm.bits_per_dim("f", x_int, bits=8, key=key)
    with raises_arg(ValueError, "log_prob_fn", "one log-density"):
        jfm.bits_per_dim(lambda x: jnp.zeros(()), x_int, bits=8, key=key)
    with raises_arg(TypeError, "key"):
        jfm.bits_per_dim(f, x_int, bits=8, key=3)
