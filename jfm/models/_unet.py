"""A time-conditioned U-Net for images (Flax NNX, batch-first, channels-last)."""

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from flax import nnx
from jaxtyping import Array, ArrayLike, Float

from .._checks import check_array, check_int, check_name
from ._common import (
    cast_to_compute_dtype,
    check_even_dim,
    check_network_options,
    check_times,
    embed_class_labels,
)
from ._embed import sinusoidal_embedding


def _group_norm(channels: int, groups: int, param_dtype, rngs) -> nnx.GroupNorm:
    return nnx.GroupNorm(
        channels,
        num_groups=math.gcd(groups, channels),  # GroupNorm needs groups | channels
        epsilon=1e-6,
        param_dtype=param_dtype,
        promote_dtype=cast_to_compute_dtype,
        rngs=rngs,
    )


def _norm(norm: nnx.GroupNorm, x: Array) -> Array:
    # Flax's GroupNorm computes its statistics in promote_types(x.dtype, float32), which
    # strict dtype promotion rejects for float64 inputs; the promotion is local and the
    # result is cast back to x's dtype (parameters are cast by cast_to_compute_dtype).
    with jax.numpy_dtype_promotion("standard"):
        return norm(x).astype(x.dtype)


def _lecun_normal(key, shape, dtype=jnp.float32):
    """Flax's default kernel init (``lecun_normal``), drawn flat as a power-of-two prefix.

    A normal truncated to ``[-2, 2]``, scaled to variance ``1 / fan_in`` (``fan_in``: the
    product of all but the last axis), computed as ``jax.nn.initializers.lecun_normal``
    does. The one difference is how it is drawn: as the first ``prod(shape)`` values of
    a flat draw of the next power-of-two size, so the draw compiles once per size class
    instead of once per kernel shape. Measured: the wall time of
    ``UNet(1, image_size=8, **unet_config("tiny"), rngs=nnx.Rngs(0))`` in a fresh process
    (XLA:CPU, JAX 0.10.2, 2 shared cores, 4 runs each) was 22-40 s with flax's
    ``nnx.initializers.lecun_normal()`` (18 kernel shapes, each its own compile, the
    rank-4 ones the slow ones) and 6-12 s with this function (8 sizes); with zero init,
    the floor, 3.6 s.

    Under threefry with ``jax_threefry_partitionable`` (JAX's default), element ``i`` of
    a draw depends only on the key and ``i``, so the values are flax's bit for bit
    (``tests/test_unet.py`` checks it). Under another PRNG they are i.i.d. draws of the
    same law, not flax's values.
    """
    fan_in = math.prod(shape[:-1])
    # As jax.nn.initializers.variance_scaling computes it, in `dtype` (bit-identical);
    # 0.8796... is the std of N(0, 1) truncated to [-2, 2].
    std = np.sqrt(np.asarray(1.0 / fan_in, dtype)) / np.asarray(0.87962566103423978, dtype)
    n = math.prod(shape)
    flat = _truncated_normal(key, 1 << max(0, (n - 1).bit_length()), jnp.dtype(dtype))
    return (flat[:n] * std).reshape(shape)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _truncated_normal(key, size: int, dtype):
    return jr.truncated_normal(key, -2.0, 2.0, (size,), dtype)


def _check_ints(values, name: str) -> tuple[int, ...]:
    """A sequence of Python ints ``>= 1`` (e.g. ``channel_mult``), as a tuple."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"`{name}` must be a sequence of ints; got {values!r}.")
    return tuple(check_int(v, name) for v in values)


def _conv(cin: int, cout: int, kernel: int, param_dtype, rngs, *, strides=1, zero=False):
    kw = dict(kernel_init=nnx.initializers.zeros_init() if zero else _lecun_normal)
    return nnx.Conv(
        cin,
        cout,
        (kernel, kernel),
        strides=strides,
        padding="SAME",
        param_dtype=param_dtype,
        promote_dtype=cast_to_compute_dtype,
        rngs=rngs,
        **kw,
    )


def _linear(cin: int, cout: int, param_dtype, rngs, *, zero=False):
    kw = dict(kernel_init=nnx.initializers.zeros_init() if zero else _lecun_normal)
    return nnx.Linear(
        cin, cout, param_dtype=param_dtype, promote_dtype=cast_to_compute_dtype, rngs=rngs, **kw
    )


class ResBlock(nnx.Module):
    r"""Residual block with a time/class embedding (DDPM's, without dropout).

    ``h = conv(silu(GN(x))) + W e``, ``out = skip(x) + conv0(silu(GN(h)))`` where ``e``
    is the embedding ``[B, E]``, ``conv0`` is zero-initialised (the block starts as the
    identity/skip map) and ``skip`` is a 1x1 convolution when the channel count changes.
    """

    def __init__(self, cin: int, cout: int, embed_dim: int, groups: int, param_dtype, rngs):
        self.norm1 = _group_norm(cin, groups, param_dtype, rngs)
        self.conv1 = _conv(cin, cout, 3, param_dtype, rngs)
        self.embed = _linear(embed_dim, cout, param_dtype, rngs)
        self.norm2 = _group_norm(cout, groups, param_dtype, rngs)
        self.conv2 = _conv(cout, cout, 3, param_dtype, rngs, zero=True)
        self.skip = None if cin == cout else _conv(cin, cout, 1, param_dtype, rngs)

    def __call__(self, x: Array, emb: Array) -> Array:
        h = self.conv1(nnx.silu(_norm(self.norm1, x)))
        h = h + self.embed(emb)[:, None, None, :]
        h = self.conv2(nnx.silu(_norm(self.norm2, h)))
        return (x if self.skip is None else self.skip(x)) + h


class AttentionBlock(nnx.Module):
    r"""Multi-head self-attention over the ``H * W`` positions, residual.

    ``out = x + proj(attention(q, k, v))`` with ``q, k, v`` linear maps of ``GN(x)``
    (``jax.nn.dot_product_attention``, scale ``1 / sqrt(head_dim)``); ``proj`` is
    zero-initialised.
    """

    def __init__(self, channels: int, heads: int, groups: int, param_dtype, rngs):
        if channels % heads:
            raise ValueError(
                f"`attention_heads` must divide the channel count; got {heads} heads for "
                f"{channels} channels."
            )
        self.heads = heads
        self.norm = _group_norm(channels, groups, param_dtype, rngs)
        self.qkv = _linear(channels, 3 * channels, param_dtype, rngs)
        self.proj = _linear(channels, channels, param_dtype, rngs, zero=True)

    def __call__(self, x: Array) -> Array:
        b, h, w, c = x.shape
        qkv = self.qkv(_norm(self.norm, x)).reshape(b, h * w, 3, self.heads, c // self.heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        with jax.numpy_dtype_promotion("standard"):  # see _norm: promote_types(., float32)
            out = jax.nn.dot_product_attention(q, k, v).astype(x.dtype).reshape(b, h, w, c)
        return x + self.proj(out)


class UNet(nnx.Module):
    r"""A U-Net for images conditioned on time (and optionally a class label).

    Batch-first, channels-last: ``__call__(t[B], x[B, H, W, C], args) -> [B, H, W, C]``.
    The architecture of DDPM (Ho et al. 2020) as used for flow matching on CIFAR-10
    (Lipman et al. 2023), without dropout:

    - time: :func:`jfm.models.sinusoidal_embedding` of ``t`` (``channels`` wide, scaled
      by ``time_scale``), then ``Linear -> silu -> Linear`` to ``E = 4 * channels``; with
      ``num_classes = K`` a learned embedding of the label (``K + 1`` rows, row ``K`` the
      null class for classifier-free guidance) is added to it.
    - a 3x3 input convolution to ``channels``; then one level per entry ``m`` of
      ``channel_mult`` with ``num_res_blocks`` :class:`ResBlock` s of
      ``channels * m`` channels (each followed by self-attention when the level's
      resolution is in ``attention_resolutions``) and a stride-2 convolution
      (all levels but the last); a middle ``ResBlock -> attention -> ResBlock``; the
      mirror path with ``num_res_blocks + 1`` blocks per level on the concatenation
      with the skip activations, nearest-neighbour upsampling and a 3x3 convolution;
      finally ``GroupNorm -> silu -> conv`` (zero-initialised) back to ``C`` channels.

    ``H`` and ``W`` must be divisible by ``2^(len(channel_mult) - 1)``. Residual blocks'
    last convolution and the output convolution start at zero, so the untrained network
    outputs zeros.

    Dtypes: as :class:`jfm.models.MLP`: parameters in ``param_dtype``, computation in
    ``dtype`` or else ``x``'s dtype (no implicit promotion).

    Args:
        in_channels: ``C``, image channels (1 grey, 3 RGB).
        image_size: the (smaller) spatial size of the training images, e.g. 32; level
            ``l`` then works at ``image_size / 2^l``, which decides where attention
            blocks are built. Other image sizes are accepted at call time (attention
            stays at the same levels).
        channels: base width (default 128).
        channel_mult: width multiplier per resolution level (default ``(1, 2, 2, 2)``).
        num_res_blocks: residual blocks per level on the way down (default 2).
        attention_resolutions: resolutions ``image_size / 2^l`` whose levels get
            self-attention after every residual block (default ``(16,)``; ``()`` for
            none); the middle block always has one.
        attention_heads: heads of each attention block (default 1).
        groups: GroupNorm groups (default 32, reduced to ``gcd(groups, width)`` where a
            width is not divisible).
        num_classes: number of classes ``K``, or ``None`` for an unconditional model.
        time_scale: factor on ``t`` in the sinusoidal embedding (default 1000).
        param_dtype: parameter dtype (default float32).
        dtype: computation dtype, or ``None`` for ``x``'s.
        rngs: ``nnx.Rngs`` for initialisation (keyword-only, required).

    Examples:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from jfm.models import UNet
        >>> net = UNet(1, image_size=8, channels=8, channel_mult=(1, 2), num_res_blocks=1,
        ...            attention_resolutions=(4,), groups=4, rngs=nnx.Rngs(0))
        >>> net(jnp.zeros(2), jnp.zeros((2, 8, 8, 1))).shape
        (2, 8, 8, 1)

    References:
        Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020;
        Lipman et al., "Flow Matching for Generative Modeling", ICLR 2023 (appendix E).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        image_size: int,
        channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        attention_heads: int = 1,
        groups: int = 32,
        num_classes: int | None = None,
        time_scale: float = 1000.0,
        param_dtype: Any = jnp.float32,
        dtype: Any = None,
        rngs: nnx.Rngs,
    ):
        self.in_channels = check_int(in_channels, "in_channels")
        image_size = check_int(image_size, "image_size")
        channels = check_even_dim(channels, "channels")
        mults = _check_ints(channel_mult, "channel_mult")
        if not mults:
            raise ValueError("`channel_mult` must hold at least one level; got ().")
        num_res_blocks = check_int(num_res_blocks, "num_res_blocks")
        self.attention_resolutions = _check_ints(attention_resolutions, "attention_resolutions")
        attention_heads = check_int(attention_heads, "attention_heads")
        groups = check_int(groups, "groups")
        self.time_scale = check_network_options(time_scale, param_dtype, dtype, rngs)
        self.channels = channels
        self.levels = len(mults)
        self.num_res_blocks = num_res_blocks
        self.dtype = dtype
        self.num_classes = None if num_classes is None else check_int(num_classes, "num_classes")
        pd = param_dtype
        emb = 4 * channels
        self.time1 = _linear(channels, emb, pd, rngs)
        self.time2 = _linear(emb, emb, pd, rngs)
        self.class_embed = (
            None
            if self.num_classes is None
            else nnx.Embed(self.num_classes + 1, emb, param_dtype=pd, rngs=rngs)
        )
        self.conv_in = _conv(self.in_channels, channels, 3, pd, rngs)

        def attn(c):
            return AttentionBlock(c, attention_heads, groups, pd, rngs)

        # Level l works at resolution image_size / 2^l; attention where that is listed.
        res = [image_size // 2**level for level in range(self.levels)]
        self.attn_levels = tuple(r in self.attention_resolutions for r in res)

        def attn_list(c, n, level):
            return nnx.List([attn(c) for _ in range(n)] if self.attn_levels[level] else [])

        # Down path; `saved` lists the channels of the activations kept for the skips.
        down, down_attn, downsample, saved, cin = [], [], [], [channels], channels
        for level, m in enumerate(mults):
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(cin, channels * m, emb, groups, pd, rngs))
                cin = channels * m
                saved.append(cin)
            down.append(nnx.List(blocks))
            down_attn.append(attn_list(cin, num_res_blocks, level))
            if level < self.levels - 1:
                downsample.append(_conv(cin, cin, 3, pd, rngs, strides=2))
                saved.append(cin)
        self.down = nnx.List(down)
        self.down_attn = nnx.List(down_attn)
        self.downsample = nnx.List(downsample)
        self.mid1 = ResBlock(cin, cin, emb, groups, pd, rngs)
        self.mid_attn = attn(cin)
        self.mid2 = ResBlock(cin, cin, emb, groups, pd, rngs)

        up, up_attn, upsample = [], [], []
        for level in reversed(range(self.levels)):
            m = mults[level]
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResBlock(cin + saved.pop(), channels * m, emb, groups, pd, rngs))
                cin = channels * m
            up.append(nnx.List(blocks))
            up_attn.append(attn_list(cin, num_res_blocks + 1, level))
            if level > 0:
                upsample.append(_conv(cin, cin, 3, pd, rngs))
        self.up = nnx.List(up)
        self.up_attn = nnx.List(up_attn)
        self.upsample = nnx.List(upsample)
        self.norm_out = _group_norm(cin, groups, pd, rngs)
        self.conv_out = _conv(cin, self.in_channels, 3, pd, rngs, zero=True)

    def __call__(
        self,
        t: Float[ArrayLike, "*batch"],
        x: Float[Array, "batch height width channels"],
        args: Any = None,
    ) -> Float[Array, "batch height width channels"]:
        """Evaluate the network on a batch.

        Args:
            t: ``(B,)`` times (a scalar is broadcast).
            x: ``(B, H, W, C)`` images, ``C = in_channels``, ``H, W`` divisible by
                ``2^(len(channel_mult) - 1)``.
            args: ``(B,)`` integer labels in ``{0, ..., num_classes}`` for a
                class-conditional net (``num_classes`` is the null class); ignored
                otherwise.

        Returns:
            ``(B, H, W, C)`` in the computation dtype.

        Raises:
            ValueError/TypeError: bad shapes or dtypes of ``t``, ``x`` or the labels.
        """
        x = check_array(x, "x")
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"`x` must have shape (B, H, W, C={self.in_channels}); got x.shape={x.shape}."
            )
        batch, hh, ww, _ = x.shape
        f = 2 ** (self.levels - 1)
        if hh % f or ww % f:
            raise ValueError(
                f"`x` height and width must be divisible by 2^(levels - 1) = {f}; got "
                f"x.shape={x.shape}."
            )
        t = check_times(t, batch)
        cdtype = x.dtype if self.dtype is None else jnp.dtype(self.dtype)
        x = x.astype(cdtype)
        emb = sinusoidal_embedding(t.astype(cdtype), self.channels, scale=self.time_scale)
        emb = self.time2(nnx.silu(self.time1(emb)))
        if self.class_embed is not None:
            labels = embed_class_labels(self.class_embed, self.num_classes, args, batch)
            emb = emb + labels.astype(cdtype)
        emb = nnx.silu(emb)

        h = self.conv_in(x)
        saved = [h]
        for level in range(self.levels):
            for j, block in enumerate(self.down[level]):
                h = block(h, emb)
                if self.attn_levels[level]:
                    h = self.down_attn[level][j](h)
                saved.append(h)
            if level < self.levels - 1:
                h = self.downsample[level](h)
                saved.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for i, level in enumerate(reversed(range(self.levels))):
            for j, block in enumerate(self.up[i]):
                h = block(jnp.concatenate([h, saved.pop()], axis=-1), emb)
                if self.attn_levels[level]:
                    h = self.up_attn[i][j](h)
            if level > 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
                h = self.upsample[i](h)
        return self.conv_out(nnx.silu(_norm(self.norm_out, h)))


def unet_config(name: str) -> dict[str, Any]:
    """Keyword arguments of a named :class:`UNet` configuration.

    - ``"tiny"``: for 8x8 grey digits on a CPU: ``channels=16``, ``channel_mult=(1, 2)``,
      one residual block per level, attention at 4x4, 8 groups (about 0.18M parameters).
    - ``"cifar10"``: the 32x32 CIFAR-10 network of the flow-matching and DDPM papers:
      ``channels=128``, ``channel_mult=(1, 2, 2, 2)``, two residual blocks per level,
      attention at 16x16, one head, 32 groups (about 35.7M parameters), for accelerators.

    Args:
        name: ``"tiny"`` or ``"cifar10"``.

    Returns:
        A dict to pass as ``UNet(in_channels, image_size=..., **unet_config(name),
        rngs=...)``.

    Raises:
        ValueError: unknown ``name``.

    Examples:
        >>> from jfm.models import unet_config
        >>> unet_config("cifar10")["channel_mult"]
        (1, 2, 2, 2)
    """
    configs = {
        "tiny": dict(
            channels=16,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_resolutions=(4,),
            attention_heads=1,
            groups=8,
        ),
        "cifar10": dict(
            channels=128,
            channel_mult=(1, 2, 2, 2),
            num_res_blocks=2,
            attention_resolutions=(16,),
            attention_heads=1,
            groups=32,
        ),
    }
    return dict(configs[check_name(name, "name", tuple(configs))])


__all__ = ["AttentionBlock", "ResBlock", "UNet", "unet_config"]
