"""Tests for the model adapter: split_model, field_from_model, ModelField (jfm/_model.py)."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from flax import nnx

import jfm

from .helpers import raises_arg


@functools.cache  # construction compiles initialisers: build each network once
def _net(seed=0, num_classes=None, param_dtype=jnp.float64):
    return jfm.models.MLP(
        3,
        hidden_features=16,
        depth=2,
        time_embed_dim=8,
        num_classes=num_classes,
        param_dtype=param_dtype,
        rngs=nnx.Rngs(seed),
    )


def test_split_model_apply_equals_module(getkey):
    net = _net(num_classes=2)
    apply, params = jfm.split_model(net)
    t = jr.uniform(getkey(), (5,))
    x = jr.normal(getkey(), (5, 3))
    labels = jnp.array([0, 1, 2, 1, 0])
    # Same module, same inputs: merge rebuilds it exactly.
    np.testing.assert_array_equal(apply(params, t, x, labels), net(t, x, labels))
    # Two models of one architecture give equal (hash-equal) applies, different params.
    apply2, params2 = jfm.split_model(_net(seed=1, num_classes=2))
    assert apply2 == apply and hash(apply2) == hash(apply)
    assert not np.allclose(apply(params2, t, x, labels), apply(params, t, x, labels))


def test_field_vmapped_equals_batch_apply(getkey):
    apply, params = jfm.split_model(_net(num_classes=2))
    field = jfm.field_from_model(apply, params)
    x = jr.normal(getkey(), (6, 3))
    labels = jnp.array([0, 1, 2, 2, 1, 0])
    t = 0.37
    batched = jax.vmap(field, in_axes=(None, 0, 0))(t, x, labels)
    expect = apply(params, jnp.full(6, t), x, labels)
    # Same matmuls on the same numbers (vmap of a batch-1 call is a batched call).
    np.testing.assert_allclose(batched, expect, rtol=1e-14, atol=1e-14)
    # One shared label for the whole batch (args not mapped).
    shared = jax.vmap(field, in_axes=(None, 0, None))(t, x, jnp.asarray(1))
    np.testing.assert_allclose(
        shared, apply(params, jnp.full(6, t), x, jnp.ones(6, jnp.int32)), rtol=1e-14, atol=1e-14
    )
    # A single example, unbatched.
    np.testing.assert_allclose(field(t, x[2], labels[2]), expect[2], rtol=1e-14, atol=1e-14)
    # The vmapped field multiplies a whole (B, .) batch per layer, as the model does.
    jaxpr = jax.make_jaxpr(jax.vmap(field, in_axes=(None, 0, 0)))(t, x, labels)
    dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
    assert len(dots) == 3 and all(e.outvars[0].aval.shape[0] == 6 for e in dots)


def test_grads_through_field_match_grads_through_apply(getkey):
    apply, params = jfm.split_model(_net())
    x = jr.normal(getkey(), (4, 3))
    w = jr.normal(getkey(), (4, 3))
    t = 0.6

    def via_field(p):
        out = jax.vmap(jfm.field_from_model(apply, p), in_axes=(None, 0, None))(t, x, None)
        return jnp.sum(w * out)

    def via_apply(p):
        return jnp.sum(w * apply(p, jnp.full(4, t), x, None))

    g_field = jax.grad(via_field)(params)
    g_apply = jax.grad(via_apply)(params)
    # Same function, two batching routes: equal up to float64 round-off.
    for a, b in zip(jax.tree.leaves(g_field), jax.tree.leaves(g_apply), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    # eqx.filter_grad w.r.t. the field itself sees the params as its leaves.
    field = jfm.field_from_model(apply, params)
    g_eqx = eqx.filter_grad(lambda f: jnp.sum(w * jax.vmap(f, (None, 0, None))(t, x, None)))(field)
    for a, b in zip(jax.tree.leaves(g_eqx.params), jax.tree.leaves(g_apply), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("kind", ["x1", "x0", "score"])
@pytest.mark.parametrize("schedule", [jfm.CondOT(), jfm.VP()], ids=["condot", "vp"])
def test_prediction_is_converted_to_velocity(kind, schedule, getkey):
    path = jfm.AffinePath(schedule)
    apply, params = jfm.split_model(_net())
    x = jr.normal(getkey(), (3,))
    t = jnp.asarray(0.42)
    field = jfm.field_from_model(apply, params, path=path, kind=kind)
    raw = apply(params, t.reshape(1), x[None], None)[0]
    by_hand = path.convert(t, x, raw, src=kind, dst="velocity")
    np.testing.assert_allclose(field(t, x, None), by_hand, rtol=1e-13, atol=1e-13)
    # And the velocity from the converted prediction is what a velocity model would give
    # for the matching raw output: recompute it from the linear relations for "x1".
    if kind == "x1":
        a, s, da, ds = path.alpha(t), path.sigma(t), path.d_alpha(t), path.d_sigma(t)
        v = da * raw + ds * (x - a * raw) / s
        np.testing.assert_allclose(field(t, x, None), v, rtol=1e-12, atol=1e-12)


def test_params_are_dynamic_under_filter_jit(getkey):
    apply, params = jfm.split_model(_net())
    x = jr.normal(getkey(), (4, 3))

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def evaluate(field, x):
        return jax.vmap(field, in_axes=(None, 0, None))(0.5, x, None)

    out1 = evaluate(jfm.field_from_model(apply, params), x)
    scaled = jax.tree.map(lambda p: 2 * p, params)
    out2 = evaluate(jfm.field_from_model(apply, scaled), x)
    apply3, params3 = jfm.split_model(_net(seed=3))  # a fresh split of the same architecture
    out3 = evaluate(jfm.field_from_model(apply3, params3), x)
    # New parameter values reach the compiled function (outputs change, no retrace).
    np.testing.assert_allclose(out2, apply(scaled, jnp.full(4, 0.5), x, None), rtol=1e-12)
    np.testing.assert_allclose(out3, apply(params3, jnp.full(4, 0.5), x, None), rtol=1e-12)
    assert not np.allclose(out1, out2)


def test_model_adapter_errors():
    apply, params = jfm.split_model(_net())
    path = jfm.AffinePath(jfm.CondOT())
    with raises_arg(TypeError, "model"):
        jfm.split_model(lambda t, x, a: x)
    with raises_arg(ValueError, "kind"):
        jfm.field_from_model(apply, params, path=path, kind="noise")
    with raises_arg(ValueError, "path"):
        jfm.field_from_model(apply, params, kind="x1")
    with raises_arg(TypeError, "path"):
        jfm.field_from_model(apply, params, path=jfm.CondOT(), kind="x1")
    # A path without convert() (a flow path, not a convertible one): a clear TypeError.
    iso = jfm.IsotropicPath(cdf=lambda tau, r: -jnp.expm1(-r / tau))
    with raises_arg(TypeError, "path", "AbstractConvertiblePath"):
        jfm.field_from_model(apply, params, path=iso, kind="x1")
    jfm.field_from_model(apply, params, path=iso)  # a velocity model needs no conversion
    field = jfm.field_from_model(apply, params)
    with raises_arg(ValueError, "t", "scalar"):
        field(jnp.zeros(2), jnp.zeros(3), None)
    bad = jfm.field_from_model(lambda p, t, x, a: x[0], params)
    with raises_arg(ValueError, "apply"):
        bad(0.5, jnp.zeros(3), None)
