"""The training state: a ``TrainState`` pytree and its constructor."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Int, PyTree

from .._checks import check_bool, check_finite

# _OPTAX_PROMOTION_NOTE: optax's optimizers mix Python floats and int32 counters (e.g.
# Adam's bias correction ``b1 ** count``), which jax_numpy_dtype_promotion="strict"
# rejects. The optimizer's own init/update therefore run under "standard" promotion (a
# local context, the caller's setting is untouched elsewhere); optax keeps the parameter
# dtypes either way, which the tests check.


class TrainState(NamedTuple):
    """Everything that changes during training, as one pytree.

    Being a pytree, it passes through ``jax.jit`` (donate it with ``donate_argnums=0``),
    is sharded with ``jax.device_put``/``NamedSharding`` like any other tree, and is saved
    and restored by orbax as it is.

    Attributes:
        params: the trainable parameters, any pytree of floating arrays (for a Flax NNX
            model, the ``nnx.State`` of ``nnx.split``).
        opt_state: the optax optimizer state, ``optimizer.init(params)``.
        step: ``int32[]``, the number of optimizer steps taken.
        ema_params: an exponential moving average of ``params`` (same structure and
            dtypes), or ``None`` when no average is kept.
    """

    params: PyTree
    opt_state: PyTree
    step: Int[Array, ""]
    ema_params: PyTree = None


def check_train_state(state, name: str = "state") -> TrainState:
    """A :class:`TrainState` (a plain tuple or another pytree is refused)."""
    if not isinstance(state, TrainState):
        raise TypeError(
            f"`{name}` must be a jfm.TrainState (from jfm.init_train_state); got {type(state)}."
        )
    return state


def check_optimizer(optimizer):
    """An optax gradient transformation (anything with callable ``init`` and ``update``)."""
    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise TypeError(
            "`optimizer` must be an optax.GradientTransformation (with `init` and `update`), "
            f"e.g. optax.adam(1e-3); got {type(optimizer)}."
        )
    return optimizer


def _strong_float_leaf(path, x):
    where = jax.tree_util.keystr(path) or "the root"
    if not isinstance(x, (jax.Array, np.ndarray, np.generic, float)) or isinstance(x, bool):
        raise TypeError(f"`params` leaves must be floating arrays; got {type(x)} at {where}.")
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"`params` leaves must have a floating dtype (they are differentiated); got "
            f"{dtype} at {where}. Keep integer state out of the trainable parameters."
        )
    # An explicit dtype drops weak typing, so the first and later jitted steps see the
    # same input types (no recompilation). Arrays already strong are returned as is.
    return jnp.asarray(x, dtype=dtype)


def init_train_state(
    params: PyTree, optimizer: optax.GradientTransformation, *, ema: bool = False
) -> TrainState:
    """Create the initial :class:`TrainState` (``step = 0``).

    Args:
        params: the initial parameters, a pytree of floating arrays of any shapes (for a
            Flax NNX model the ``nnx.State`` from ``nnx.split``). Weak-typed leaves are
            made strong so that later steps do not recompile.
        optimizer: an ``optax.GradientTransformation``; ``opt_state = optimizer.init(params)``.
        ema: keep an exponential moving average of the parameters, initialised to a copy
            of ``params`` (a copy, so that donating the state never donates one buffer
            twice). Use with ``make_train_step(..., ema_decay=...)``.

    Returns:
        ``TrainState(params, opt_state, step=int32[] 0, ema_params or None)``, the leaves
        of ``params`` and ``ema_params`` with the shapes and dtypes of the input.

    Raises:
        TypeError: ``params`` has no leaves or a non-floating leaf; ``optimizer`` is not
            a gradient transformation; ``ema`` is not a bool.
        ValueError: a concrete ``params`` leaf with a NaN or inf entry.

    Examples:
        >>> import jax.numpy as jnp, optax, jfm
        >>> state = jfm.init_train_state({"w": jnp.zeros(3)}, optax.sgd(0.1), ema=True)
        >>> int(state.step), state.ema_params["w"].shape
        (0, (3,))
    """
    check_optimizer(optimizer)
    check_bool(ema, "ema")
    if not jax.tree_util.tree_leaves(params):
        raise TypeError(f"`params` must be a pytree with at least one array leaf; got {params!r}.")
    params = jax.tree_util.tree_map_with_path(_strong_float_leaf, params)
    for kp, leaf in jax.tree_util.tree_leaves_with_path(params):
        check_finite(leaf, "params", f"params{jax.tree_util.keystr(kp)}")  # concrete leaves only
    with jax.numpy_dtype_promotion("standard"):  # see _OPTAX_PROMOTION_NOTE
        opt_state = optimizer.init(params)
    ema_params = jax.tree.map(jnp.copy, params) if ema else None
    return TrainState(params, opt_state, jnp.zeros((), jnp.int32), ema_params)
