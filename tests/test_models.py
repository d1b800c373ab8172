"""Tests for the Flax NNX networks (jfm.models)."""

import functools
import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from flax import nnx

import jfm

from .helpers import raises_arg


def _numpy_embedding(t, dim, scale, max_period):
    half = dim // 2
    out = np.zeros((len(t), dim))
    for i, ti in enumerate(np.asarray(t, dtype=np.float64)):
        for k in range(half):
            freq = max_period ** (-k / half)
            out[i, k] = math.sin(scale * ti * freq)
            out[i, half + k] = math.cos(scale * ti * freq)
    return out


@pytest.mark.parametrize("dim,scale,max_period", [(8, 1000.0, 10000.0), (6, 1.0, 100.0)])
def test_sinusoidal_embedding_matches_formula(dim, scale, max_period):
    t = jnp.array([0.0, 0.013, 0.5, 0.999, 1.0])
    emb = jfm.models.sinusoidal_embedding(t, dim, scale=scale, max_period=max_period)
    assert emb.shape == (5, dim) and emb.dtype == jnp.float64
    # Same formula, float64 both sides: round-off of sin/cos at arguments up to 1000.
    np.testing.assert_allclose(emb, _numpy_embedding(t, dim, scale, max_period), atol=1e-12)
    module = jfm.models.SinusoidalEmbedding(dim, scale=scale, max_period=max_period)
    np.testing.assert_array_equal(module(t), emb)  # the module calls the function
    emb32 = jfm.models.sinusoidal_embedding(t.astype(jnp.float32), dim)
    assert emb32.dtype == jnp.float32


def test_sinusoidal_embedding_errors():
    t = jnp.zeros(3)
    with raises_arg(ValueError, "dim"):
        jfm.models.sinusoidal_embedding(t, 7)
    with raises_arg(ValueError, "dim"):
        jfm.models.SinusoidalEmbedding(0)
    with raises_arg(ValueError, "t"):
        jfm.models.sinusoidal_embedding(jnp.zeros((3, 1)), 8)
    with raises_arg(TypeError, "t"):
        jfm.models.sinusoidal_embedding(jnp.zeros(3, jnp.int32), 8)
    with raises_arg(ValueError, "max_period"):
        jfm.models.sinusoidal_embedding(t, 8, max_period=1.0)


@functools.cache  # construction compiles initialisers: build each network once
def _small_net(size, num_classes=None):
    return jfm.models.MLP(
        size,
        hidden_features=16,
        depth=2,
        time_embed_dim=8,
        num_classes=num_classes,
        rngs=nnx.Rngs(0),
    )


@pytest.mark.slow
@pytest.mark.parametrize("event", [(2,), (4, 4, 1)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_mlp_shape_and_dtype(event, dtype, getkey):
    net = _small_net(math.prod(event))
    x = jr.normal(getkey(), (3, *event), dtype)
    t = jnp.array([0.1, 0.5, 0.9], dtype)
    out = net(t, x)
    assert out.shape == (3, *event) and out.dtype == dtype
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(net)))
    # A scalar t is broadcast over the batch: identical to passing it per example.
    np.testing.assert_array_equal(net(jnp.asarray(0.5, dtype), x), net(jnp.full(3, 0.5, dtype), x))
    # Batch-first and per-example independent: evaluating one row alone gives that row.
    tol = 1e-12 if dtype == jnp.float64 else 1e-6  # matmul blocking differs with batch size
    np.testing.assert_allclose(net(t[1:2], x[1:2])[0], out[1], rtol=tol, atol=tol)


def test_mlp_computes_in_input_dtype_and_param_dtype():
    net = jfm.models.MLP(
        2, hidden_features=8, depth=1, time_embed_dim=4, param_dtype=jnp.float64, rngs=nnx.Rngs(1)
    )
    assert all(p.dtype == jnp.float64 for p in jax.tree.leaves(nnx.state(net)))
    x = jnp.array([[0.3, -1.2]])
    out64 = net(jnp.array([0.25]), x)
    out32 = net(jnp.array([0.25], jnp.float32), x.astype(jnp.float32))
    assert out64.dtype == jnp.float64 and out32.dtype == jnp.float32
    # Same maths, float32 round-off on O(1) numbers through two small layers.
    np.testing.assert_allclose(out32, out64, rtol=1e-5, atol=1e-6)
    # Depth 0 is an affine map of [x, emb(t)]: check against the kernel by hand.
    lin = jfm.models.MLP(2, depth=0, time_embed_dim=4, rngs=nnx.Rngs(2))
    t = jnp.array([0.3])
    feats = jnp.concatenate([x, jfm.models.sinusoidal_embedding(t, 4)], axis=-1)
    by_hand = feats @ lin.out.kernel[...].astype(jnp.float64) + lin.out.bias[...].astype(
        jnp.float64
    ).reshape(1, 2)
    np.testing.assert_allclose(lin(t, x), by_hand, rtol=1e-12)


def test_mlp_class_conditioning(getkey):
    net = _small_net(2, num_classes=3)
    assert net.class_embed.embedding.shape == (4, 8)  # K + 1 rows: the null class
    x = jr.normal(getkey(), (4, 2))
    t = jnp.full(4, 0.5)
    same = jnp.zeros(4, jnp.int32)
    out0 = net(t, x, same)
    for label in (1, 2, 3):  # 3 is the null class
        out = net(t, x, jnp.full(4, label, jnp.int32))
        assert np.all(np.isfinite(out))
        # Different learned embeddings: outputs differ by far more than round-off.
        assert np.min(np.abs(np.asarray(out - out0))) > 1e-6
    # Labels act per example: mixing labels gives each row its own label's output.
    mixed = net(t, x, jnp.array([0, 1, 2, 3]))
    for i in range(4):
        np.testing.assert_allclose(
            mixed[i], net(t, x, jnp.full(4, i, jnp.int32))[i], rtol=1e-12, atol=1e-12
        )
    # Labels closed over by a jitted function are constants, range-checked like eager ones.
    labels = jnp.array([0, 1, 2, 3])
    np.testing.assert_allclose(jax.jit(lambda x: net(t, x, labels))(x), mixed, rtol=1e-12)
    bad = labels + 1  # 4 > num_classes=3
    with raises_arg(ValueError, "args"):
        jax.jit(lambda x: net(t, x, bad))(x)


def test_mlp_errors():
    net = _small_net(4)
    cond = _small_net(4, num_classes=2)
    x = jnp.zeros((3, 2, 2))
    with raises_arg(ValueError, "x"):
        net(jnp.zeros(3), jnp.zeros((3, 3)))
    with raises_arg(ValueError, "t"):
        net(jnp.zeros(2), x)
    with raises_arg(ValueError, "t"):
        net(jnp.zeros((3, 1)), x)
    with raises_arg(TypeError, "x"):
        net(jnp.zeros(3), jnp.zeros((3, 4), jnp.int32))
    with raises_arg(ValueError, "args"):
        cond(jnp.zeros(3), x)
    with raises_arg(TypeError, "args"):
        cond(jnp.zeros(3), x, jnp.zeros(3))
    with raises_arg(ValueError, "args"):
        cond(jnp.zeros(3), x, jnp.zeros(2, jnp.int32))
    with raises_arg(ValueError, "args"):
        cond(jnp.zeros(3), x, jnp.array([0, 1, 3]))  # 3 > num_classes=2
    with raises_arg(ValueError, "depth"):
        jfm.models.MLP(4, depth=-1, rngs=nnx.Rngs(0))
    with raises_arg(ValueError, "time_embed_dim"):
        jfm.models.MLP(4, time_embed_dim=5, rngs=nnx.Rngs(0))
    with raises_arg(ValueError, "in_features"):
        jfm.models.MLP(0, rngs=nnx.Rngs(0))
    with raises_arg(TypeError, "rngs"):
        jfm.models.MLP(4, rngs=0)
