"""A time-conditioned token model for discrete flow matching (Flax NNX, batch-first)."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, ArrayLike, Float, Int

from .._checks import check_callable, check_int, is_concrete
from ._common import (
    cast_to_compute_dtype,
    check_even_dim,
    check_network_options,
    check_times,
    embed_class_labels,
)
from ._embed import sinusoidal_embedding


class TokenMLP(nnx.Module):
    r"""A multilayer perceptron over a token sequence, returning per-token logits.

    Batch-first: ``__call__(t[B], x[B, L], args) -> logits [B, L, V]``. Each of the ``L``
    tokens (values in ``[0, num_states)``, e.g. ``V + 1`` with a mask token) is embedded
    (``embed_dim``), the embeddings are flattened to ``L * embed_dim`` and concatenated
    with the sinusoidal embedding of ``t`` (:func:`jfm.models.sinusoidal_embedding`) and,
    with ``num_classes``, a learned class embedding; then ``depth`` hidden layers
    ``h <- activation(W h + b)`` of width ``hidden_features`` and a linear layer to
    ``L * V`` logits. The same architecture is easy to write in any framework (the
    discrete benchmark does, in PyTorch).

    Class conditioning works as in :class:`jfm.models.MLP`: ``args`` holds ``(B,)`` labels
    in ``{0, ..., K}``, ``K`` the null class for :func:`jfm.discrete_guidance`.

    Dtypes: parameters in ``param_dtype`` (default float32); the computation runs in
    ``dtype`` (default ``param_dtype``), and so do the logits.

    Args:
        length: ``L``, the sequence length.
        vocab_size: ``V``, the number of output classes per token.
        num_states: the number of input token values (default ``V + 1``: room for a mask).
        embed_dim: token embedding size (default 32).
        hidden_features: hidden width (default 256).
        depth: number of hidden layers (default 3).
        time_embed_dim: size of the sinusoidal time embedding (even, default 64).
        activation: nonlinearity (default ``nnx.gelu``).
        num_classes: ``K`` for class conditioning, or ``None``.
        time_scale: factor on ``t`` in the time embedding (default 1000).
        param_dtype, dtype: parameter and computation dtypes.
        rngs: ``nnx.Rngs`` (keyword-only, required).

    Examples:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from jfm.models import TokenMLP
        >>> net = TokenMLP(2, 8, hidden_features=32, rngs=nnx.Rngs(0))
        >>> net(jnp.zeros(5), jnp.zeros((5, 2), jnp.int32)).shape
        (5, 2, 8)
    """

    def __init__(
        self,
        length: int,
        vocab_size: int,
        *,
        num_states: int | None = None,
        embed_dim: int = 32,
        hidden_features: int = 256,
        depth: int = 3,
        time_embed_dim: int = 64,
        activation: Callable[[Array], Array] = nnx.gelu,
        num_classes: int | None = None,
        time_scale: float = 1000.0,
        param_dtype: Any = jnp.float32,
        dtype: Any = None,
        rngs: nnx.Rngs,
    ):
        self.length = check_int(length, "length")
        self.vocab_size = check_int(vocab_size, "vocab_size", lo=2)
        self.num_states = check_int(
            self.vocab_size + 1 if num_states is None else num_states, "num_states", lo=2
        )
        embed_dim = check_int(embed_dim, "embed_dim")
        hidden_features = check_int(hidden_features, "hidden_features")
        self.depth = check_int(depth, "depth", lo=0)
        self.time_embed_dim = check_even_dim(time_embed_dim, "time_embed_dim")
        self.activation = check_callable(activation, "activation", "(x)")
        self.time_scale = check_network_options(time_scale, param_dtype, dtype, rngs)
        self.dtype = jnp.dtype(param_dtype if dtype is None else dtype)
        self.num_classes = None if num_classes is None else check_int(num_classes, "num_classes")
        self.token_embed = nnx.Embed(self.num_states, embed_dim, param_dtype=param_dtype, rngs=rngs)
        width = self.length * embed_dim + self.time_embed_dim
        if self.num_classes is None:
            self.class_embed = None
        else:
            self.class_embed = nnx.Embed(
                self.num_classes + 1, self.time_embed_dim, param_dtype=param_dtype, rngs=rngs
            )
            width += self.time_embed_dim
        linear = dict(param_dtype=param_dtype, promote_dtype=cast_to_compute_dtype, rngs=rngs)
        layers = []
        for _ in range(self.depth):
            layers.append(nnx.Linear(width, hidden_features, **linear))
            width = hidden_features
        self.hidden = nnx.List(layers)
        self.out = nnx.Linear(width, self.length * self.vocab_size, **linear)

    def __call__(
        self, t: Float[ArrayLike, "*batch"], x: Int[Array, "batch L"], args: Any = None
    ) -> Float[Array, "batch L V"]:
        """Per-token logits of a batch.

        Args:
            t: ``(B,)`` times (a scalar is broadcast).
            x: ``(B, L)`` integer tokens in ``[0, num_states)`` (checked when concrete).
            args: ``(B,)`` integer labels when class-conditional; ignored otherwise.

        Returns:
            ``(B, L, V)`` logits in the computation dtype.
        """
        if isinstance(x, bool) or not isinstance(x, (np.ndarray, jax.Array)):
            raise TypeError(f"`x` must be an integer token array [B, L]; got {type(x)}.")
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise TypeError(f"`x` must have an integer dtype (token ids); got {x.dtype}.")
        if x.ndim != 2 or x.shape[1] != self.length:
            raise ValueError(f"`x` must have shape (B, L) with L={self.length}; got {x.shape}.")
        if x.size and is_concrete(x):
            with jax.ensure_compile_time_eval():  # a constant closed over by a jit trace
                lo, hi = int(x.min()), int(x.max())
            if lo < 0 or hi >= self.num_states:
                raise ValueError(
                    f"`x` must hold tokens in [0, {self.num_states}); got values in [{lo}, {hi}]."
                )
        batch = x.shape[0]
        cdtype = self.dtype
        emb = self.token_embed(x).astype(cdtype).reshape(batch, -1)
        te = sinusoidal_embedding(
            check_times(t, batch).astype(cdtype), self.time_embed_dim, scale=self.time_scale
        )
        feats = [emb, te]
        if self.class_embed is not None:
            labels = embed_class_labels(self.class_embed, self.num_classes, args, batch)
            feats.append(labels.astype(cdtype))
        h = jnp.concatenate(feats, axis=-1)
        for layer in self.hidden:
            h = self.activation(layer(h))
        return self.out(h).reshape(batch, self.length, self.vocab_size)


__all__ = ["TokenMLP"]
