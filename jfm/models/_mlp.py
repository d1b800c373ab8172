"""A time-conditioned multilayer perceptron (Flax NNX, batch-first)."""

import math
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, ArrayLike, Float

from .._checks import check_array, check_callable, check_int
from ._common import (
    cast_to_compute_dtype,
    check_even_dim,
    check_multi_times,
    check_network_options,
    check_times,
    embed_class_labels,
)
from ._embed import sinusoidal_embedding


class MLP(nnx.Module):
    r"""A multilayer perceptron conditioned on time (and optionally a class label).

    Batch-first: ``__call__(t[B], x[B, *event], args) -> [B, *event]``. The event axes of
    ``x`` are flattened (``in_features = prod(event)``) and concatenated with the
    sinusoidal embedding of ``t`` (:func:`jfm.models.sinusoidal_embedding` with
    ``time_scale``) and, when ``num_classes`` is set, a learned class embedding; then
    ``depth`` hidden layers ``h <- activation(W h + b)`` of width ``hidden_features`` and a
    final linear layer back to ``in_features``, reshaped to the event shape.

    Class conditioning (``num_classes = K``): ``args`` is an integer label array of shape
    ``(B,)`` with values in ``{0, ..., K}``; the extra value ``K`` is the *null* class
    used for classifier-free guidance (drop labels to ``K`` during training, evaluate both
    the conditional and the null model at sampling time). The embedding table has
    ``K + 1`` rows. Labels out of range cannot be checked on traced values (Flax's
    ``Embed`` then returns ``nan``); concrete labels are checked. Without
    ``num_classes`` the model ignores ``args``.

    Extra time inputs (``extra_time_inputs = E > 0``), for the few-step models that take
    a second time (MeanFlow's ``r``, a shortcut model's step size ``d``): ``t`` then has
    shape ``(B, 1 + E)``, column 0 the time of ``x`` and columns ``1..E`` the extra
    times, each embedded like the first (same sinusoidal embedding) and concatenated.
    With ``E = 0`` (default) the model, its parameters and its input are unchanged.

    Dtypes: parameters are stored in ``param_dtype`` (default float32). The computation
    runs in ``dtype`` when given, else in ``x``'s dtype: parameters and ``t`` are cast to
    it (no implicit promotion, so the model works under
    ``jax_numpy_dtype_promotion="strict"``), and the output has that dtype. Gradients
    with respect to the parameters come back in ``param_dtype``.

    Args:
        in_features: ``prod(event_shape)``, e.g. ``2`` for 2-d points, ``64`` for 8x8x1.
        hidden_features: width of the hidden layers (default 512).
        depth: number of hidden layers (default 4; ``0`` gives an affine map of the
            concatenated input).
        time_embed_dim: size of the sinusoidal time embedding (even, default 64).
        activation: elementwise nonlinearity (default ``nnx.silu``).
        num_classes: number of classes ``K`` for class conditioning, or ``None``.
        class_embed_dim: size of the learned class embedding (default
            ``time_embed_dim``); only with ``num_classes``.
        time_scale: the factor multiplying ``t`` in the sinusoidal embedding (default
            1000, see :func:`jfm.models.sinusoidal_embedding`).
        extra_time_inputs: number ``E >= 0`` of extra scalar time inputs (default 0).
        param_dtype: dtype of the parameters (default float32).
        dtype: computation dtype, or ``None`` (default) for the dtype of ``x``.
        rngs: ``nnx.Rngs`` for initialisation (keyword-only, required).

    Examples:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from jfm.models import MLP
        >>> net = MLP(2, hidden_features=32, depth=2, rngs=nnx.Rngs(0))
        >>> net(jnp.zeros(5), jnp.zeros((5, 2))).shape
        (5, 2)
    """

    def __init__(
        self,
        in_features: int,
        *,
        hidden_features: int = 512,
        depth: int = 4,
        time_embed_dim: int = 64,
        activation: Callable[[Array], Array] = nnx.silu,
        num_classes: int | None = None,
        class_embed_dim: int | None = None,
        time_scale: float = 1000.0,
        extra_time_inputs: int = 0,
        param_dtype: Any = jnp.float32,
        dtype: Any = None,
        rngs: nnx.Rngs,
    ):
        self.in_features = check_int(in_features, "in_features")
        hidden_features = check_int(hidden_features, "hidden_features")
        self.depth = check_int(depth, "depth", lo=0)
        self.time_embed_dim = check_even_dim(time_embed_dim, "time_embed_dim")
        self.activation = check_callable(activation, "activation", "(x)")
        self.time_scale = check_network_options(time_scale, param_dtype, dtype, rngs)
        self.dtype = dtype
        self.num_classes = None if num_classes is None else check_int(num_classes, "num_classes")
        self.extra_time_inputs = check_int(extra_time_inputs, "extra_time_inputs", lo=0)
        width = self.in_features + (1 + self.extra_time_inputs) * self.time_embed_dim
        if self.num_classes is None:
            if class_embed_dim is not None:
                raise ValueError("`class_embed_dim` is only used with `num_classes`; got both.")
            self.class_embed = None
        else:
            cdim = self.time_embed_dim if class_embed_dim is None else class_embed_dim
            cdim = check_int(cdim, "class_embed_dim")
            self.class_embed = nnx.Embed(
                self.num_classes + 1, cdim, param_dtype=param_dtype, rngs=rngs
            )
            width += cdim
        linear = dict(param_dtype=param_dtype, promote_dtype=cast_to_compute_dtype, rngs=rngs)
        layers = []
        for _ in range(self.depth):
            layers.append(nnx.Linear(width, hidden_features, **linear))
            width = hidden_features
        self.hidden = nnx.List(layers)
        self.out = nnx.Linear(width, self.in_features, **linear)

    def __call__(
        self,
        t: Float[ArrayLike, "*batch"],
        x: Float[Array, " batch *event"],
        args: Any = None,
    ) -> Float[Array, " batch *event"]:
        """Evaluate the network on a batch.

        Args:
            t: ``(B,)`` times (a scalar is broadcast to the batch); with
                ``extra_time_inputs = E > 0``, ``(B, 1 + E)`` (or ``(1 + E,)``, broadcast):
                the time of ``x`` then the extra times.
            x: ``(B, *event)`` states, ``prod(event) == in_features``.
            args: ``(B,)`` integer labels in ``{0, ..., num_classes}`` (a scalar label is
                broadcast) when the model is
                class-conditional (``num_classes`` = null class); ignored otherwise.

        Returns:
            ``(B, *event)`` in the computation dtype (``x``'s unless ``dtype`` was set).

        Raises:
            ValueError/TypeError: bad shapes or dtypes of ``t``, ``x`` or the labels.
        """
        x = check_array(x, "x", min_ndim=1)
        batch, event = x.shape[0], x.shape[1:]
        if math.prod(event) != self.in_features:
            raise ValueError(
                f"`x` must have shape (B, *event) with prod(event) == in_features="
                f"{self.in_features}; got x.shape={x.shape}."
            )
        cdtype = x.dtype if self.dtype is None else jnp.dtype(self.dtype)
        embed = lambda ti: sinusoidal_embedding(  # noqa: E731
            ti.astype(cdtype), self.time_embed_dim, scale=self.time_scale
        )
        feats = [x.reshape(batch, self.in_features).astype(cdtype)]
        if self.extra_time_inputs:
            t = check_multi_times(t, batch, 1 + self.extra_time_inputs)
            feats.extend(embed(t[:, j]) for j in range(t.shape[1]))
        else:
            feats.append(embed(check_times(t, batch)))
        if self.class_embed is not None:
            labels = embed_class_labels(self.class_embed, self.num_classes, args, batch)
            feats.append(labels.astype(cdtype))
        h = jnp.concatenate(feats, axis=-1)
        for layer in self.hidden:
            h = self.activation(layer(h))
        return self.out(h).reshape(batch, *event)


__all__ = ["MLP"]
