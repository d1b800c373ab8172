"""Data-parallel (and FSDP-style) training and batch-sharded inference with ``jax.sharding``.

One 1-D :class:`jax.sharding.Mesh` over the devices with a ``"data"`` axis. The batch is
split over that axis; parameters and optimizer state are replicated (plain data
parallelism: XLA inserts the gradient all-reduce) or, with ``fsdp=True``, split over the
same axis along one dimension of each large array (XLA all-gathers them where they are
used). :func:`make_sharded_train_step` jits :func:`jfm.make_train_step`'s step with those
in/out shardings; :func:`sharded_batch_fn` makes every device (and every host) draw only
its own slice of each batch, from the same key; :func:`shard_over_batch` runs a sampler
or likelihood (:func:`jfm.sample_ode`, :func:`jfm.log_prob`) on each device's slice of
the batch; :func:`shard_batch` and :func:`replicate` place arrays. Multi-host runs start with
:func:`initialize` (``jax.distributed.initialize``) before any other JAX call.
"""

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxtyping import PRNGKeyArray, PyTree

from ._train import TrainState

__all__ = [
    "batch_sharding",
    "initialize",
    "make_mesh",
    "make_sharded_train_step",
    "replicate",
    "shard_batch",
    "shard_over_batch",
    "sharded_batch_fn",
    "state_sharding",
]

DATA_AXIS = "data"


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    **kwargs: Any,
) -> None:
    """Start a multi-host (multi-process) JAX run: ``jax.distributed.initialize``.

    Call it once per process, before any other JAX call (before even
    ``jax.devices()``). Afterwards ``jax.devices()`` lists the devices of all processes,
    :func:`make_mesh` spans them all, and each process feeds only its own (addressable)
    devices: :func:`sharded_batch_fn` computes just the slices of the batch that live on
    this host, from the key every host shares.

    On Cloud TPU, SLURM and Open MPI clusters every argument is detected from the
    environment (``initialize()`` with no arguments). Elsewhere pass them explicitly,
    the same coordinator (process 0's ``host:port``) on every process, e.g. two CPU
    processes on one machine::

        jfm.initialize("localhost:12345", num_processes=2, process_id=0)  # process 0
        jfm.initialize("localhost:12345", num_processes=2, process_id=1)  # process 1

    The ``jfm train --distributed`` flag calls this (with ``--coordinator``,
    ``--num-processes``, ``--process-id`` when given).

    Args:
        coordinator_address: ``host:port`` of process 0, or ``None`` to detect it.
        num_processes: the number of processes, or ``None`` to detect it.
        process_id: this process's index in ``[0, num_processes)``, or ``None``.
        **kwargs: passed to ``jax.distributed.initialize`` (e.g. ``local_device_ids``).

    Raises:
        ValueError: ``process_id`` outside ``[0, num_processes)``; whatever
            ``jax.distributed.initialize`` raises (e.g. when called twice).
    """
    if num_processes is not None and process_id is not None:
        if not 0 <= process_id < num_processes:
            raise ValueError(
                f"`process_id` must lie in [0, num_processes={num_processes}); got {process_id}."
            )
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        **kwargs,
    )


def make_mesh(devices: int | Sequence[jax.Device] | None = None, *, axis: str = DATA_AXIS) -> Mesh:
    """A 1-D device mesh with one named axis (the data axis).

    Args:
        devices: ``None`` for every device (``jax.devices()``, all hosts), an int ``n``
            for the first ``n`` of them, or an explicit sequence of devices.
        axis: the axis name (default ``"data"``).

    Returns:
        ``Mesh(devices, (axis,))``.

    Raises:
        TypeError: ``devices`` of another type; ``axis`` not a string.
        ValueError: ``n`` outside ``[1, jax.device_count()]``; an empty sequence.

    Examples:
        >>> import jfm
        >>> dict(jfm.make_mesh(1).shape)
        {'data': 1}
    """
    if not isinstance(axis, str) or not axis:
        raise TypeError(f"`axis` must be a non-empty string; got {axis!r}.")
    if devices is None:
        devs = jax.devices()
    elif isinstance(devices, numbers.Integral) and not isinstance(devices, bool):
        available = jax.device_count()
        if not 1 <= devices <= available:
            raise ValueError(
                f"`devices` must lie in [1, {available}] (the visible devices); got {devices}."
            )
        devs = jax.devices()[: int(devices)]
    elif isinstance(devices, Sequence) and not isinstance(devices, str):
        devs = list(devices)
        if not devs:
            raise ValueError("`devices` must hold at least one device; got an empty sequence.")
        if not all(isinstance(d, jax.Device) for d in devs):
            raise TypeError("`devices` must be a sequence of jax.Device (e.g. jax.devices()).")
    else:
        raise TypeError(
            f"`devices` must be None, an int or a sequence of jax devices; got {type(devices)}."
        )
    return Mesh(np.asarray(devs), (axis,))


def _check_mesh(mesh, axis: str) -> Mesh:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh (jfm.make_mesh()); got {type(mesh)}.")
    if axis not in mesh.axis_names:
        raise ValueError(f"`axis` {axis!r} is not an axis of the mesh {mesh.axis_names}.")
    return mesh


def batch_sharding(mesh: Mesh, *, axis: str = DATA_AXIS) -> NamedSharding:
    """The sharding of a batch: the leading axis split over ``axis``, the rest whole.

    Args:
        mesh: a mesh with the axis ``axis`` (e.g. :func:`make_mesh`).
        axis: the data axis name (default ``"data"``).

    Returns:
        ``NamedSharding(mesh, PartitionSpec(axis))``; a batch of ``B`` examples on ``n``
        devices puts examples ``[i B / n, (i + 1) B / n)`` on device ``i``.
    """
    return NamedSharding(_check_mesh(mesh, axis), P(axis))


def _leaf_sharding(x, mesh: Mesh, axis: str, fsdp: bool, min_size: int) -> NamedSharding:
    shape = np.shape(x)
    n = mesh.shape[axis]
    if fsdp and math.prod(shape) >= min_size:
        # Split the largest dimension that the device count divides (ties: the last one,
        # usually the output features of a kernel).
        dims = [i for i, s in enumerate(shape) if s % n == 0]
        if dims:
            best = max(dims, key=lambda i: (shape[i], i))
            spec = [None] * len(shape)
            spec[best] = axis
            return NamedSharding(mesh, P(*spec))
    return NamedSharding(mesh, P())


def state_sharding(
    state: PyTree,
    mesh: Mesh,
    *,
    fsdp: bool = False,
    axis: str = DATA_AXIS,
    min_size: int = 1024,
) -> PyTree:
    """Shardings for a training state (or any pytree of arrays): replicated or FSDP.

    Replicated (default): every leaf whole on every device (``PartitionSpec()``), the
    data-parallel layout. ``fsdp=True``: each leaf with at least ``min_size`` elements is
    split over ``axis`` along its largest dimension divisible by the number of devices
    (leaves without one, and small leaves, stay replicated); optimizer moments have the
    parameters' shapes and so get the parameters' layout. Memory per device for the
    split leaves drops by the device count; the step all-gathers each parameter where
    it is used and reduce-scatters its gradient (inserted by XLA).

    Args:
        state: a pytree of arrays (e.g. a :class:`jfm.TrainState`); only shapes are read.
        mesh: the device mesh.
        fsdp: split large leaves (see above) instead of replicating everything.
        axis: the data axis name (default ``"data"``).
        min_size: smallest leaf (in elements) that ``fsdp`` splits.

    Returns:
        A pytree of ``NamedSharding`` with the structure of ``state``.

    Raises:
        TypeError: ``mesh`` not a Mesh, ``fsdp`` not a bool.
        ValueError: ``axis`` not in the mesh; ``min_size < 1``.
    """
    _check_mesh(mesh, axis)
    if not isinstance(fsdp, bool):
        raise TypeError(f"`fsdp` must be a bool; got {fsdp!r}.")
    if isinstance(min_size, bool) or not isinstance(min_size, numbers.Integral) or min_size < 1:
        raise ValueError(f"`min_size` must be a positive int; got {min_size!r}.")
    return jax.tree.map(lambda x: _leaf_sharding(x, mesh, axis, fsdp, int(min_size)), state)


def _check_batch_leaves(tree, n: int, name: str):
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        shape = np.shape(x)
        if not shape or shape[0] % n:
            raise ValueError(
                f"`{name}` leaves must have a leading batch axis divisible by the {n} devices "
                f"of the mesh; got shape {shape} at {jax.tree_util.keystr(path) or 'the root'}."
                " Pick a batch size that is a multiple of the device count."
            )


def shard_batch(batch: PyTree, mesh: Mesh, *, axis: str = DATA_AXIS) -> PyTree:
    """Place a batch (a pytree of ``[B, ...]`` arrays) with its leading axis split over ``axis``.

    Jitted functions called on it start from this layout (computation follows data),
    but XLA may still choose to gather the batch inside a solver's loop; to be sure
    that each device works on its own examples, use :func:`shard_over_batch`.

    Args:
        batch: pytree of arrays with a leading batch axis ``B`` (``B`` divisible by the
            number of devices on ``axis``).
        mesh: the device mesh.
        axis: the data axis name.

    Returns:
        The same pytree of ``jax.Array`` s with sharding :func:`batch_sharding`.

    Raises:
        ValueError: a leaf without a leading axis divisible by the device count.
    """
    sharding = batch_sharding(mesh, axis=axis)
    _check_batch_leaves(batch, mesh.shape[axis], "batch")
    return jax.device_put(batch, sharding)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Place every array leaf of ``tree`` whole on every device of ``mesh``.

    For parameters (or a :class:`jfm.ModelField` holding them) used by a batch-sharded
    computation. Non-array leaves are left alone.

    Args:
        tree: any pytree.
        mesh: the device mesh.

    Returns:
        ``tree`` with its array leaves replicated (``PartitionSpec()``).
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh (jfm.make_mesh()); got {type(mesh)}.")
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(
        lambda x: jax.device_put(x, sharding) if isinstance(x, (jax.Array, np.ndarray)) else x,
        tree,
    )


def shard_over_batch(
    fn: Callable[[PyTree, PyTree], PyTree], mesh: Mesh, *, axis: str = DATA_AXIS
) -> Callable[[PyTree, PyTree], PyTree]:
    """Run ``fn(shared, batch)`` with each device working on its own slice of ``batch``.

    ``jax.jit(jax.shard_map(fn, in_specs=(P(), P(axis)), out_specs=P(axis)))``:
    ``shared`` (e.g. a :class:`jfm.ModelField` with its parameters) is replicated, the
    leading axis of every ``batch`` leaf is split over the devices, ``fn`` runs on each
    slice independently (no communication), and its outputs (each with a leading batch
    axis) are concatenated back in order. This is how sampling and likelihoods shard::

        sample = jfm.shard_over_batch(
            lambda field, x0: jfm.sample_ode(field, x0, solver=dfx.Heun(), steps=20).x1, mesh
        )
        x1 = sample(field, x0)  # [B, *event], split over the devices

    The result equals ``fn(shared, batch)`` on one device whenever ``fn`` treats
    examples independently: fixed-step solves, ``batch="vmap"`` solves (own step sizes
    per example) and ``jfm.log_prob`` (``batch="vmap"``, the default). An adaptive
    ``batch="joint"`` solve instead chooses one step size per device slice (from that
    slice's error norm), not one for the whole batch.

    Args:
        fn: ``fn(shared, batch) -> outputs``, a JAX function; every output leaf must
            have the leading batch axis (drop per-solve scalars such as ``nfe``).
        mesh: the device mesh.
        axis: the data axis name.

    Returns:
        The jitted, batch-sharded ``fn``, called as ``fn(shared, batch)``.

    Raises:
        TypeError: ``fn`` not callable. When called: ValueError for a ``batch`` leaf
            whose leading axis the device count does not divide.
    """
    if not callable(fn):
        raise TypeError(f"`fn` must be callable fn(shared, batch); got {type(fn)}.")
    _check_mesh(mesh, axis)
    mapped = jax.jit(
        jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(axis)), out_specs=P(axis), check_vma=False)
    )
    n = mesh.shape[axis]

    def sharded(shared, batch):
        _check_batch_leaves(batch, n, "batch")
        return mapped(shared, batch)

    return sharded


def sharded_batch_fn(
    batch_fn: Callable[[PRNGKeyArray], PyTree], mesh: Mesh, *, axis: str = DATA_AXIS
) -> Callable[[PRNGKeyArray], PyTree]:
    """Jit ``batch_fn(key) -> batch`` so that each device computes only its own slice.

    ``jax.jit(batch_fn, out_shardings=batch_sharding(mesh))``: XLA partitions the batch
    computation over the data axis, so device ``i`` (on whichever host it lives)
    computes examples ``[i B / n, (i + 1) B / n)`` and nothing else, with no
    communication, provided ``batch_fn`` is elementwise over the batch (random indices
    into a replicated table of images, per-example noise, ...). JAX's random numbers
    are partitionable (``jax_threefry_partitionable``, the default): the values are the
    same whatever the number of devices, so the global batch of a key is the one the
    unsharded ``batch_fn`` gives, and every host that holds the same key computes
    disjoint parts of it (no duplicated data loading).

    Args:
        batch_fn: a pure JAX function of a PRNG key returning a pytree of ``[B, ...]``
            arrays (``B`` divisible by the number of devices).
        mesh: the device mesh.
        axis: the data axis name.

    Returns:
        ``batch_fn`` jitted with batch-sharded outputs.

    Raises:
        TypeError: ``batch_fn`` not callable. When called: ValueError for leaves whose
            leading axis the device count does not divide.
    """
    if not callable(batch_fn):
        raise TypeError(
            f"`batch_fn` must be callable batch_fn(key) -> batch; got {type(batch_fn)}."
        )
    sharding = batch_sharding(mesh, axis=axis)
    jitted = jax.jit(batch_fn, out_shardings=sharding)
    n = mesh.shape[axis]

    checked = []  # shapes are checked on the first call (one abstract trace), not per step

    def sharded(key):
        if not checked:
            _check_batch_leaves(jax.eval_shape(batch_fn, key), n, "batch_fn output")
            checked.append(True)
        return jitted(key)

    return sharded


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
        mesh: the device mesh (:func:`make_mesh`).
        state: a :class:`jfm.TrainState` of the right structure and shapes (only they
            are read).
        fsdp: split large state leaves over the data axis (:func:`state_sharding`).
        min_size: smallest leaf (in elements) that ``fsdp`` splits.
        axis: the data axis name.
        donate: donate the input state's buffers to the output (default ``True``).

    Returns:
        The jitted step, called as ``step(state, batch, key)``.

    Raises:
        TypeError: ``train_step`` not callable; ``state`` not a ``TrainState``.

    Examples:
        >>> import jax, jax.numpy as jnp, optax, jfm
        >>> mesh = jfm.make_mesh(1)
        >>> apply = lambda p, t, x, args: x * p["w"]
        >>> def loss_fn(apply, params, batch, *, key):
        ...     return jnp.sum((apply(params, None, batch, None) - 1.0) ** 2, axis=-1)
        >>> opt = optax.sgd(0.1)
        >>> state = jfm.init_train_state({"w": jnp.zeros(2)}, opt)
        >>> step = jfm.make_sharded_train_step(jfm.make_train_step(apply, opt, loss_fn),
        ...                                    mesh, state)
        >>> state, metrics = step(state, jnp.ones((4, 2)), jax.random.key(0))
        >>> int(state.step)
        1
    """
    if not callable(train_step):
        raise TypeError(f"`train_step` must be callable; got {type(train_step)}.")
    if not isinstance(state, TrainState):
        raise TypeError(f"`state` must be a jfm.TrainState; got {type(state)}.")
    s_sharding = state_sharding(state, mesh, fsdp=fsdp, axis=axis, min_size=min_size)
    replicated = NamedSharding(mesh, P())
    return jax.jit(
        train_step,
        in_shardings=(s_sharding, batch_sharding(mesh, axis=axis), replicated),
        out_shardings=(s_sharding, replicated),
        donate_argnums=(0,) if donate else (),
    )
