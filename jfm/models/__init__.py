"""Flax NNX networks for jfm (batch-first).

Models take ``(t[B], x[B, *event], args)`` and return ``[B, *event]``; they cross into
jfm's pure functions through :func:`jfm.split_model` and :func:`jfm.field_from_model`.
"""

from ._embed import (
    SinusoidalEmbedding as SinusoidalEmbedding,
    sinusoidal_embedding as sinusoidal_embedding,
)
from ._manifold import ManifoldMLP as ManifoldMLP
from ._mlp import MLP as MLP
from ._tokens import TokenMLP as TokenMLP
from ._unet import (
    AttentionBlock as AttentionBlock,
    ResBlock as ResBlock,
    UNet as UNet,
    unet_config as unet_config,
)
