"""Tests for classifier-free guidance and sample_ode's jump times."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jfm

from .helpers import raises_arg

MEANS = jnp.array([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]])
STD = 0.4
PATH = jfm.AffinePath(jfm.CondOT())


class ClassConditionalGMM(eqx.Module):
    """Exact fields of a class-conditional GMM: class k -> component k, null -> mixture."""

    fields: list

    def __init__(self):
        comps = [jfm.GaussianMixture.isotropic(MEANS[k : k + 1], STD) for k in range(3)]
        mix = jfm.GaussianMixture.isotropic(MEANS, STD)
        self.fields = [g.velocity_field(PATH) for g in comps] + [mix.velocity_field(PATH)]

    def __call__(self, t, x, label):
        return jnp.stack([f(t, x, None) for f in self.fields])[label]


@eqx.filter_jit
def _call_jit(f, t, x, c):
    return f(t, x, c)


def _call(f, t, x, c):  # one compilation per field structure (eager dispatch is slow)
    return _call_jit(f, jnp.asarray(t, x.dtype), x, c)


def test_scale_zero_one_and_affine(getkey):
    field = ClassConditionalGMM()
    x, t, c, null = jr.normal(getkey(), (2,)), 0.4, jnp.asarray(1), jnp.asarray(3)
    v_c, v_u = _call(field, t, x, c), _call(field, t, x, null)
    # w = 0: the unconditional field; w = 1: the conditional one (round-off of v_u + (v_c - v_u)).
    g0 = jfm.classifier_free_guidance(field, 0.0, null_label=3)
    g1 = jfm.classifier_free_guidance(field, 1.0, null_label=3)
    np.testing.assert_allclose(_call(g0, t, x, c), v_u, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(_call(g1, t, x, c), v_c, rtol=1e-14, atol=1e-14)
    g = jfm.classifier_free_guidance(field, 2.5, null_label=3)
    np.testing.assert_allclose(_call(g, t, x, c), v_u + 2.5 * (v_c - v_u), rtol=1e-14)
    # Inside / outside the interval; its edges are the field's jump times.
    gi = jfm.classifier_free_guidance(field, 2.5, null_label=3, interval=(0.3, 0.7))
    np.testing.assert_array_equal(gi.jump_ts, jnp.array([0.3, 0.7]))
    assert g.jump_ts is None
    np.testing.assert_allclose(_call(gi, 0.5, x, c), _call(g, 0.5, x, c), rtol=1e-14)
    np.testing.assert_allclose(_call(gi, 0.2, x, c), _call(field, 0.2, x, c), rtol=1e-14)
    np.testing.assert_allclose(_call(gi, 0.8, x, c), _call(field, 0.8, x, c), rtol=1e-14)
    # jit (scale traced: no recompilation for a new scale), vmap over examples, float32.
    f = jax.jit(lambda s, y: jfm.classifier_free_guidance(field, s, null_label=3)(t, y, c))
    np.testing.assert_allclose(f(2.5, x), _call(g, t, x, c), rtol=1e-14)
    xs = jr.normal(getkey(), (4, 2))
    out = eqx.filter_jit(jax.vmap(g, in_axes=(None, 0, None)))(jnp.asarray(t), xs, c)
    np.testing.assert_allclose(out[3], _call(g, t, xs[3], c), rtol=1e-14)
    assert _call(g, t, x.astype(jnp.float32), c).dtype == jnp.float32


@pytest.mark.slow  # statistical: 3 adaptive solves of 1000 points (~50 s on 2 busy cores)
def test_cfg_scale_one_samples_the_class(getkey):
    field = ClassConditionalGMM()
    n = 1000
    for k in (0, 2):
        guided = jfm.classifier_free_guidance(field, 1.0, null_label=3, interval=(0.2, 0.8))
        x0 = jr.normal(getkey(), (n, 2))
        sol = jfm.sample_ode(
            guided, x0, solver=dfx.Tsit5(), rtol=1e-6, atol=1e-6, args=jnp.asarray(k)
        )
        # Samples of component k: mean MEANS[k], std STD per coordinate. The ODE of the
        # exact single-Gaussian field maps N(0, I) onto N(mu, STD^2 I) exactly, so only the
        # Monte-Carlo error remains: 4 standard errors.
        se_mean = STD / np.sqrt(n)
        np.testing.assert_allclose(sol.x1.mean(0), MEANS[k], atol=4 * se_mean)
        se_std = STD / np.sqrt(2 * n)
        np.testing.assert_allclose(sol.x1.std(0), STD, atol=4 * se_std)
        # The flow is the exact transport: each point maps to mu + STD * x0 (affine map).
        np.testing.assert_allclose(sol.x1, MEANS[k][None] + STD * x0, atol=1e-4)  # rtol 1e-6 solve
    # Scale 0 samples the mixture: about a third of the points near each mean.
    # (interval (0, 1): the same field structure as above, so no recompilation)
    g0 = jfm.classifier_free_guidance(field, 0.0, null_label=3, interval=(0.0, 1.0))
    sol = jfm.sample_ode(
        g0,
        jr.normal(getkey(), (n, 2)),
        solver=dfx.Tsit5(),
        rtol=1e-6,
        atol=1e-6,
        args=jnp.asarray(0),
    )
    nearest = jnp.argmin(jnp.sum((sol.x1[:, None] - MEANS[None]) ** 2, -1), axis=1)
    frac = np.bincount(np.asarray(nearest), minlength=3) / n
    np.testing.assert_allclose(frac, 1 / 3, atol=4 * np.sqrt(2 / 9 / n))  # 4 binomial SE


_CALLS = [0]


def _tick():
    _CALLS[0] += 1


class Counting(eqx.Module):
    inner: eqx.Module

    @property
    def jump_ts(self):
        return self.inner.jump_ts

    def __call__(self, t, x, args):
        jax.debug.callback(_tick)
        return self.inner(t, x, args)


@pytest.mark.slow
def test_jump_times_reach_the_controller_and_nfe_is_exact(getkey):
    field = ClassConditionalGMM()
    guided = jfm.classifier_free_guidance(field, 4.0, null_label=3, interval=(0.3, 0.6))
    x0 = jr.normal(getkey(), (16, 2))
    runs = {}
    for name, jumps in (("with", None), ("without", jnp.zeros((0,)))):
        for solver in (dfx.Dopri5(),):  # FSAL: the re-evaluations after jumps count
            _CALLS[0] = 0
            sol = jfm.sample_ode(
                Counting(guided),
                x0,
                solver=solver,
                rtol=1e-6,
                atol=1e-6,
                args=jnp.asarray(1),
                jump_ts=jumps,
            )
            jax.block_until_ready(sol.x1)
            jax.effects_barrier()
            # Joint solve: the callback fires once per batched field call = the per-example
            # nfe, including the first-stage re-evaluations after each jump (FSAL solvers).
            assert int(sol.nfe) == _CALLS[0], (name, type(solver).__name__)
            runs[name, type(solver).__name__] = sol
    # Steps ending on the jumps: fewer rejected steps than stepping across them blindly.
    for s in ("Dopri5",):
        assert int(runs["with", s].num_rejected_steps) < int(runs["without", s].num_rejected_steps)
        np.testing.assert_allclose(runs["with", s].x1, runs["without", s].x1, atol=1e-4)
    # Fixed steps ignore the jump times.
    fixed = jfm.sample_ode(guided, x0, solver=dfx.Euler(), steps=10, args=jnp.asarray(1))
    assert int(fixed.nfe) == 10


def _counted(field, x0, **kw):
    _CALLS[0] = 0
    sol = jfm.sample_ode(Counting(field), x0, args=jnp.asarray(1), **kw)
    jax.block_until_ready(sol.x1)
    jax.effects_barrier()
    return sol, _CALLS[0]


@pytest.mark.slow
def test_jump_times_with_a_user_controller(getkey):
    # The field's jump times also reach a user's adaptive controller (wrapped in a
    # dfx.ClipStepSizeController): the same solve as the rtol/atol shortcut; and a user's
    # own ClipStepSizeController with the jump times (the field's disabled) is that solve
    # again. NFE against counted calls, FSAL Dopri5 (first-stage re-evaluations at jumps;
    # the same solver, batch and args as above, so the shortcut solves are compiled once).
    field = ClassConditionalGMM()
    guided = jfm.classifier_free_guidance(field, 4.0, null_label=3, interval=(0.3, 0.6))
    x0 = jr.normal(getkey(), (16, 2))
    pid = dfx.PIDController(rtol=1e-6, atol=1e-6)
    kw = dict(solver=dfx.Dopri5())
    a, calls_a = _counted(guided, x0, stepsize_controller=pid, **kw)
    b, calls_b = _counted(guided, x0, rtol=1e-6, atol=1e-6, **kw)
    np.testing.assert_array_equal(a.x1, b.x1)
    assert calls_a == int(a.nfe) == calls_b == int(b.nfe)
    clip = dfx.ClipStepSizeController(pid, jump_ts=jnp.array([0.3, 0.6]))
    c, calls_c = _counted(guided, x0, stepsize_controller=clip, jump_ts=jnp.zeros((0,)), **kw)
    np.testing.assert_array_equal(c.x1, a.x1)
    assert calls_c == int(c.nfe) == calls_a
    # blind stepping across the jumps is another (costlier) solve
    d, calls_d = _counted(guided, x0, stepsize_controller=pid, jump_ts=jnp.zeros((0,)), **kw)
    assert calls_d == int(d.nfe) and int(d.num_rejected_steps) > int(a.num_rejected_steps)


@pytest.mark.slow
def test_jump_times_backwards(getkey):
    # Integrating backwards (t0=1, t1=0) the jump times are mirrored with the direction
    # (the initial-step heuristic runs in forward time): NFE still exact against counted
    # calls, and fewer rejections than stepping blindly across the edges.
    field = ClassConditionalGMM()
    guided = jfm.classifier_free_guidance(field, 4.0, null_label=3, interval=(0.3, 0.6))
    x1 = jr.normal(getkey(), (16, 2))
    # (times are traced: these reuse the forward solves compiled above)
    kw = dict(solver=dfx.Dopri5(), rtol=1e-6, atol=1e-6, t0=1.0, t1=0.0)
    a, calls_a = _counted(guided, x1, **kw)
    b, calls_b = _counted(guided, x1, jump_ts=jnp.zeros((0,)), **kw)
    assert calls_a == int(a.nfe) and calls_b == int(b.nfe)
    assert int(a.num_rejected_steps) < int(b.num_rejected_steps)
    # both at tolerance 1e-6; backwards the guided flow expands (|x| ~ 17 here), which
    # amplifies the local errors: ~1e-4 relative seen
    np.testing.assert_allclose(a.x1, b.x1, rtol=1e-3)


def test_errors():
    field = ClassConditionalGMM()
    g = jfm.classifier_free_guidance(field, 2.0, null_label=3)
    with raises_arg(ValueError, "args", "label"):
        g(0.5, jnp.zeros(2), None)
    with raises_arg(TypeError, "args", "integer"):
        g(0.5, jnp.zeros(2), jnp.asarray(1.0))
    with raises_arg(TypeError, "null_label"):
        jfm.classifier_free_guidance(field, 2.0, null_label=3.0)
    with raises_arg(TypeError, "scale"):
        jfm.classifier_free_guidance(field, "2", null_label=3)
    with raises_arg(TypeError, "field"):
        jfm.classifier_free_guidance(3, 2.0, null_label=3)
    for bad in ((0.5, 0.2), (-0.1, 0.5)):
        with raises_arg(ValueError, "interval"):
            jfm.classifier_free_guidance(field, 2.0, null_label=3, interval=bad)
    with raises_arg(ValueError, "interval", "pair"):
        jfm.classifier_free_guidance(field, 2.0, null_label=3, interval=(0.2,))
    with raises_arg(TypeError, "interval", "pair"):
        jfm.classifier_free_guidance(field, 2.0, null_label=3, interval=0.5)
    with raises_arg(ValueError, "jump_ts", "dimensions"):
        jfm.sample_ode(
            g,
            jnp.zeros((2, 2)),
            solver=dfx.Dopri5(),
            rtol=1e-3,
            atol=1e-3,
            args=jnp.asarray(0),
            jump_ts=jnp.zeros((2, 2)),
        )
