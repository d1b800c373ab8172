"""Density (mode-seeking) guidance."""

import math

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jfm

from .helpers import raises_arg

CONDOT = jfm.AffinePath(jfm.CondOT())
#: Three well-separated isotropic components in 2-D.
GMM = jfm.GaussianMixture.isotropic(jnp.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 3.0]]), 0.5)
FIELD = GMM.velocity_field(CONDOT)


@jax.jit
def batch_log_prob(x):
    """The true log-density of a batch ``[B, 2]``, compiled once for the whole file."""
    return jax.vmap(GMM.log_prob)(x)


def cubic(t, x, args):
    """f(x) = |x|^2 x: div f = (D + 2) |x|^2, grad(-div f) = -2 (D + 2) x."""
    return jnp.sum(x**2) * x


@eqx.filter_jit
def evaluate(field, t, x):
    return field(t, x, None)


def test_exact_guidance_closed_form(getkey):
    x = jr.normal(getkey(), (3,))
    for scale in (0.0, 0.3, -1.5):
        guided = jfm.density_guidance(cubic, scale, divergence=jfm.ExactDivergence())
        want = cubic(0.0, x, None) + scale * (-10.0 * x)  # D = 3: -2 (D + 2) x
        got = evaluate(guided, 0.0, x)  # scale is traced: one compilation
        assert got.shape == x.shape and got.dtype == x.dtype
        assert float(jnp.max(jnp.abs(got - want))) < 1e-12  # closed form, round-off only
    # scale 0 leaves the field unchanged, also for Hutchinson guidance
    same = evaluate(jfm.density_guidance(FIELD, 0.0, key=getkey()), 0.4, x[:2])
    assert float(jnp.max(jnp.abs(same - FIELD(0.4, x[:2], None)))) < 1e-14  # v + 0 * g


def test_hutchinson_guidance_unbiased(getkey):
    # At fixed (t, x) the Hutchinson guided field, averaged over keys, equals the exact
    # guided field within its standard error (per coordinate).
    scale = 0.5
    n = 3000

    @jax.jit
    def both(keys, t, x):
        want = jfm.density_guidance(FIELD, scale, divergence="exact")(t, x, None)
        div = jfm.HutchinsonDivergence(probes=2)
        hutch = lambda k: jfm.density_guidance(FIELD, scale, divergence=div, key=k)(t, x, None)
        return want, jax.vmap(hutch)(keys)

    pts = [(0.5, jnp.array([0.3, 0.2])), (0.8, jnp.array([-0.9, 1.4]))]
    for t, x in pts:
        want, samples = both(jr.split(getkey(), n), jnp.asarray(t), x)
        mean = jnp.mean(samples, axis=0)
        se = jnp.std(samples, axis=0, ddof=1) / math.sqrt(n)
        assert bool(jnp.all(se > 0))  # really random
        # unbiased: within 4.5 standard errors per coordinate
        assert bool(jnp.all(jnp.abs(mean - want) < 4.5 * se)), (t, mean, want, se)
        assert float(jnp.max(jnp.abs(want - FIELD(t, x, None)))) > 10 * float(jnp.max(se))


@pytest.mark.slow  # statistical: 4 guided 40-step solves of 512 points (~30 s)
def test_guidance_raises_true_log_density(getkey):
    # The same noise transported by the (Hutchinson) guided field: the mean true
    # log-density of the samples rises with the scale (paired comparison: the same x0
    # for every scale). Exact guidance is covered by the closed form and by its agreement
    # with Hutchinson guidance above.
    x0 = jr.normal(getkey(), (512, 2))
    key = getkey()
    means = []
    for scale in (0.0, 0.05, 0.1, 0.2):
        guided = jfm.density_guidance(FIELD, scale, key=key)
        x1 = jfm.sample_ode(guided, x0, solver=dfx.Heun(), steps=40).x1
        means.append(float(jnp.mean(batch_log_prob(x1))))
    diffs = np.diff(means)
    # strictly rising, by clearly more than the integration noise (observed steps ~0.05)
    assert np.all(diffs > 0.01), means


def test_no_recompile_for_new_scale_or_key(getkey):
    # scale and key are arrays inside the returned Module: new values, same compilation
    traces = [0]

    def field(t, x, args):
        traces[0] += 1  # Python side effect: runs only while tracing
        return FIELD(t, x, args)

    x0 = jr.normal(getkey(), (8, 2))
    out = []
    for scale, key in [(0.1, getkey()), (0.3, getkey())]:
        guided = jfm.density_guidance(field, scale, key=key)
        out.append(jfm.sample_ode(guided, x0, solver=dfx.Euler(), steps=4).x1)
        if len(out) == 1:
            first = traces[0]
    assert traces[0] == first and float(jnp.max(jnp.abs(out[0] - out[1]))) > 0
    # float32 in, float32 out
    g32 = evaluate(jfm.density_guidance(FIELD, 0.1, key=getkey()), 0.5, jnp.ones(2, jnp.float32))
    assert g32.dtype == jnp.float32


def test_bad_input(getkey):
    with raises_arg(TypeError, "key", "required"):
        jfm.density_guidance(FIELD, 0.1)
    with raises_arg(TypeError, "key", "required"):
        jfm.density_guidance(FIELD, 0.1, divergence=jfm.HutchinsonDivergence(probes=2))
    with raises_arg(ValueError, "key", "exact"):
        jfm.density_guidance(FIELD, 0.1, key=getkey(), divergence=jfm.ExactDivergence())
    with raises_arg(ValueError, "key", "exact"):
        jfm.density_guidance(FIELD, 0.1, key=getkey(), divergence="exact")
    with raises_arg(ValueError, "probes", ">= 1"):
        jfm.density_guidance(
            FIELD, 0.1, key=getkey(), divergence=jfm.HutchinsonDivergence(probes=0)
        )
    with raises_arg(ValueError, "noise"):
        jfm.density_guidance(
            FIELD, 0.1, key=getkey(), divergence=jfm.HutchinsonDivergence(noise="bernoulli")
        )
    with raises_arg(ValueError, "divergence", "hutchinson"):
        jfm.density_guidance(FIELD, 0.1, key=getkey(), divergence="approx")
    with raises_arg(TypeError, "divergence", "estimator"):
        jfm.density_guidance(FIELD, 0.1, key=getkey(), divergence=2)
    with raises_arg(TypeError, "scale"):
        jfm.density_guidance(FIELD, "big", key=getkey())
    with raises_arg(ValueError, "scale", "scalar"):
        jfm.density_guidance(FIELD, jnp.ones(2), key=getkey())
    with raises_arg(TypeError, "field", "callable"):
        jfm.density_guidance(None, 0.1, key=getkey())
    with pytest.raises(TypeError, match="exact"):  # the old keyword is gone
        jfm.density_guidance(FIELD, 0.1, exact=True)
