"""Tests for the U-Net (jfm/models/_unet.py)."""

import functools
import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from flax import nnx

import jfm
from jfm.models import UNet, unet_config

SMALL = dict(
    image_size=8,
    channels=8,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(4,),
    groups=4,
)


# Building a U-Net and compiling its forward pass cost seconds each on CPU: the networks
# and their jitted applies are built once per module and shared by the tests.


@pytest.fixture(scope="module")
def net64():
    """The SMALL U-Net, class-conditional (3 classes + the null class), float64 params."""
    return UNet(1, **SMALL, num_classes=3, param_dtype=jnp.float64, rngs=nnx.Rngs(2))


@pytest.fixture(scope="module")
def net32():
    """The unconditional SMALL U-Net with float32 parameters."""
    return UNet(1, **SMALL, rngs=nnx.Rngs(1))


@pytest.fixture(scope="module")
def apply64(net64):
    """``jax.jit`` of ``net64``'s apply, shared so that its compilations are too."""
    return jax.jit(jfm.split_model(net64)[0])


def normal(key, shape, dtype=jnp.float64):
    """``jr.normal(key, shape, dtype)`` drawn flat: a rank-4 draw compiles for seconds."""
    return jr.normal(key, (math.prod(shape),), dtype).reshape(shape)


def jitted(net):
    """``(jax.jit(apply), params)`` of ``net``."""
    apply, params = jfm.split_model(net)
    return jax.jit(apply), params


def perturbed(params, key, scale=0.1):
    """``params`` with every leaf randomised (zero-initialised layers made non-zero)."""
    leaves, tree = jax.tree.flatten(params)
    # One flat draw for all leaves: a rank-4 draw per conv kernel would compile for ~15 s
    # per shape on XLA:CPU (see jfm._misc.sample_flat).
    noise = np.asarray(jr.normal(key, (sum(p.size for p in leaves),), jnp.float64))
    offsets = np.cumsum([0] + [p.size for p in leaves])
    leaves = [
        p + jnp.asarray(scale * noise[a:b].reshape(p.shape), p.dtype)
        for p, a, b in zip(leaves, offsets[:-1], offsets[1:])
    ]
    return jax.tree.unflatten(tree, leaves)


def test_cifar_config_has_about_35m_parameters():
    # Abstract init: shapes only, no memory, no compute.
    net = nnx.eval_shape(lambda: UNet(3, image_size=32, **unet_config("cifar10"), rngs=nnx.Rngs(0)))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(net, nnx.Param)))
    # DDPM / flow matching report 35.7M for this architecture (their dropout has no weights)
    assert 35.5e6 < n < 36.0e6, n
    out = jax.eval_shape(
        lambda m, x: m(jnp.zeros(2), x), net, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    )
    assert out.shape == (2, 32, 32, 3) and out.dtype == jnp.float32


# Every float64 call below has batch 4 (labels 0..3, 3 the null class): one compilation.
@pytest.mark.slow
def test_starts_at_zero_and_examples_are_independent(net64, apply64, getkey):
    x = normal(getkey(), (4, 8, 8, 1))
    t = jnp.asarray([0.1, 0.5, 0.9, 0.3])
    labels = jnp.arange(4)
    apply, params = apply64, nnx.state(net64)
    # zero-initialised output convolution: the untrained field is exactly 0
    np.testing.assert_array_equal(np.asarray(apply(params, t, x, labels)), 0.0)
    params = perturbed(params, getkey())
    out = apply(params, t, x, labels)
    assert out.shape == (4, 8, 8, 1) and bool(jnp.all(jnp.isfinite(out)))
    # GroupNorm normalises per example: no batch coupling (unlike BatchNorm). Row 1 alone
    # decides output row 1: other images, times and labels elsewhere leave it unchanged.
    others = normal(getkey(), (4, 8, 8, 1)).at[1].set(x[1])
    one = apply(params, jnp.asarray([0.7, 0.5, 0.2, 0.6]), others, labels[::-1].at[1].set(1))
    np.testing.assert_allclose(np.asarray(one[1]), np.asarray(out[1]), rtol=1e-12, atol=1e-12)
    assert not np.allclose(one[0], out[0])  # (and row 0 did change)
    # time matters
    assert not np.allclose(apply(params, t[::-1], x, labels), out)


# float32 only: the float64 path is exercised by the other tests (param_dtype=float64),
# and each dtype costs a full U-Net grad compile (~40 s on the 2-core CI machine).
@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.float32])
def test_dtypes_jit_and_grad(dtype, net32, getkey):
    apply, params = jitted(net32)
    params = perturbed(params, getkey())
    x = normal(getkey(), (2, 8, 8, 1), dtype)
    t = jnp.asarray([0.2, 0.7], dtype)
    out = apply(params, t, x, None)
    assert out.dtype == dtype
    # float32 params used in a float64 computation: the same function to float32 accuracy
    ref = apply(params, t.astype(jnp.float64), x.astype(jnp.float64), None)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=2e-3, atol=2e-4)
    loss = functools.partial(jfm.cfm_loss, apply, path=jfm.AffinePath(jfm.CondOT()))
    key = getkey()
    g = jax.jit(jax.grad(lambda p: jnp.mean(loss(p, x, key=key))))(params)
    norms = [float(jnp.linalg.norm(v)) for v in jax.tree.leaves(g)]
    assert all(np.isfinite(norms)) and sum(n > 0 for n in norms) > 0.9 * len(norms)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(g))  # param_dtype kept


@pytest.mark.slow
def test_class_conditioning_and_null_class(net64, apply64, getkey):
    net = net64
    assert net.class_embed.embedding.shape == (4, 4 * SMALL["channels"])  # K + 1 rows
    apply, params = apply64, nnx.state(net)
    params = perturbed(params, getkey())
    x = normal(getkey(), (1, 8, 8, 1))
    x = jnp.broadcast_to(x, (4, 8, 8, 1))  # one image, four labels (3 = the null class)
    t = jnp.full((4,), 0.5, jnp.float64)
    outs = apply(params, t, x, jnp.arange(4))
    for i in range(4):
        for j in range(i):
            assert not np.allclose(outs[i], outs[j])
    with pytest.raises(ValueError, match="null class"):
        net(t, x, jnp.full((4,), 4))
    with pytest.raises(ValueError, match="labels"):
        net(t, x, None)


@pytest.mark.slow  # ~40 s on 2 CPU cores: one compile of a full U-Net train step
def test_field_and_training_reduce_the_loss(net32):
    # 15 Adam steps on a fixed batch must lower the CFM loss of the U-Net (it learns).
    apply, params = jfm.split_model(net32)
    opt = optax.adam(3e-3)
    loss_fn = functools.partial(jfm.cfm_loss, path=jfm.AffinePath(jfm.CondOT()))
    step = jax.jit(jfm.make_train_step(apply, opt, loss_fn))
    state = jfm.init_train_state(params, opt)
    x = jfm.data.digits(dtype=jnp.float32)[:32]
    key = jr.key(0)  # a fixed key: the same t and noise every step, so the loss is comparable
    losses = []
    for _ in range(15):
        state, m = step(state, x, key)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.8 * losses[0], losses
    field = jfm.field_from_model(apply, state.params)
    # the per-example field of the trained model (shapes only: no compile of its own)
    assert jax.eval_shape(field, 0.5, x[0], None).shape == (8, 8, 1)


@pytest.mark.slow
def test_errors(net64):
    with pytest.raises(ValueError, match="`name`"):
        unet_config("imagenet")
    with pytest.raises(ValueError, match="`channel_mult`"):
        UNet(1, image_size=8, channel_mult=(), rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="rngs"):  # beartype may check the hint first
        UNet(1, **SMALL, rngs=0)
    with pytest.raises(ValueError, match="`attention_heads`"):
        UNet(1, **{**SMALL, "channels": 6, "groups": 2}, attention_heads=5, rngs=nnx.Rngs(0))
    net = net64  # the shape checks come before the labels are read
    with pytest.raises(ValueError, match="divisible"):
        net(jnp.zeros(1), jnp.zeros((1, 7, 7, 1)))
    with pytest.raises(ValueError, match="C=1"):
        net(jnp.zeros(1), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="`t`"):
        net(jnp.zeros(2), jnp.zeros((1, 8, 8, 1)))


# (flax's own rank-4 draw is the slow compile being avoided: a 3x3x8x16 reference alone
# costs ~17 s in the suite, so the rank-4 case is a small 1x1 kernel)
@pytest.mark.parametrize("shape", [(1, 1, 5, 7), (64, 32)])
def test_kernel_init_is_flax_lecun_normal_bit_for_bit(shape):
    # The U-Net draws its kernels flat, as the prefix of a power-of-two draw (one compile
    # per size instead of ~15 s per rank-4 shape on XLA:CPU); the values are flax's.
    from jfm.models._unet import _lecun_normal

    for dtype in (jnp.float32, jnp.float64):
        key = jr.key(sum(shape))
        ref = jax.nn.initializers.lecun_normal()(key, shape, dtype)
        got = _lecun_normal(key, shape, dtype)
        assert got.dtype == ref.dtype and got.shape == ref.shape
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
