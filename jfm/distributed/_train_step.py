"""A training step jitted with data-parallel (or FSDP) shardings."""

from collections.abc import Callable

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .._checks import check_bool, check_callable
from .._train.state import TrainState, check_train_state
from ._mesh import DATA_AXIS
from ._sharding import batch_sharding, state_sharding


def make_sharded_train_step(
    train_step: Callable,
    mesh: Mesh,
    state: TrainState,
    *,
    fsdp: bool = False,
    min_size: int = 1024,
    axis: str = DATA_AXIS,
    donate: bool = True,
) -> Callable[..., tuple[TrainState, dict]]:
    r"""Jit a training step with data-parallel (or FSDP) shardings on ``mesh``.

    ``jax.jit(train_step, in_shardings=(S, batch_sharding(mesh), R), out_shardings=(S,
    R), donate_argnums=0 if donate)`` with ``S = state_sharding(state, mesh, fsdp=fsdp)``
    and ``R`` replicated. The global batch ``[B, ...]`` is split over the devices; each
    computes its examples' losses and gradients, and the mean over the batch becomes an
    all-reduce (replicated state) or reduce-scatter (FSDP), inserted by XLA, so the step
    computes the same mean-loss gradient as one device on the whole batch
    (:math:`g = \frac1B \sum_b \nabla \ell_b`), equal up to the order of the float
    additions. The outputs keep the shardings ``S`` step after step (so the step
    compiles once), and :func:`jfm.fit` accepts the result as its ``train_step``
    (checkpoints restore into the same shardings).

    Place the state with ``jax.device_put(state, state_sharding(state, mesh, fsdp=...))``
    first (an unplaced state is moved on every call) and draw batches with
    :func:`sharded_batch_fn` (or :func:`shard_batch`).

    Args:
        train_step: ``train_step(state, batch, key) -> (state, metrics)``, e.g.
            :func:`jfm.make_train_step`'s.
        mesh: the device mesh (:func:`data_mesh`).
        state: a :class:`jfm.TrainState` of the right structure and shapes (only they
            are read).
        fsdp: split large state leaves over the data axis (:func:`state_sharding`).
        min_size: smallest leaf (in elements) that ``fsdp`` splits.
        axis: the data axis name.
        donate: donate the input state's buffers to the output (default ``True``).

    Returns:
        The jitted step, called as ``step(state, batch, key)`` with ``batch`` leaves
        ``[B, ...]`` (``B`` divisible by the device count).

    Raises:
        TypeError: ``train_step`` not callable; ``state`` not a ``TrainState``; ``mesh``
            not a Mesh; ``fsdp``/``donate`` not bools.
        ValueError: ``axis`` not in the mesh; ``min_size < 1``.

    Examples:
        >>> import jax, jax.numpy as jnp, optax, jfm
        >>> mesh = jfm.distributed.data_mesh(1)
        >>> apply = lambda p, t, x, args: x * p["w"]
        >>> def loss_fn(apply, params, batch, *, key):
        ...     return jnp.sum((apply(params, None, batch, None) - 1.0) ** 2, axis=-1)
        >>> opt = optax.sgd(0.1)
        >>> state = jfm.init_train_state({"w": jnp.zeros(2)}, opt)
        >>> step = jfm.distributed.make_sharded_train_step(
        ...     jfm.make_train_step(apply, opt, loss_fn), mesh, state)
        >>> state, metrics = step(state, jnp.ones((4, 2)), jax.random.key(0))
        >>> int(state.step)
        1
    """
    check_callable(train_step, "train_step", "(state, batch, key) -> (state, metrics)")
    check_train_state(state)
    check_bool(donate, "donate")
    s_sharding = state_sharding(state, mesh, fsdp=fsdp, axis=axis, min_size=min_size)
    replicated = NamedSharding(mesh, P())
    return jax.jit(
        train_step,
        in_shardings=(s_sharding, batch_sharding(mesh, axis=axis), replicated),
        out_shardings=(s_sharding, replicated),
        donate_argnums=(0,) if donate else (),
    )
