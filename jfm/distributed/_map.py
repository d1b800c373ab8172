"""Batch-sharded computation: functions that run on each device's slice of a batch."""

from collections.abc import Callable

import jax
from jax.sharding import Mesh, PartitionSpec as P
from jaxtyping import PRNGKeyArray, PyTree

from .._checks import check_callable
from ._mesh import DATA_AXIS, check_mesh
from ._sharding import batch_sharding, check_batch_leaves


def shard_over_batch(
    fn: Callable[[PyTree, PyTree], PyTree], mesh: Mesh, *, axis: str = DATA_AXIS
) -> Callable[[PyTree, PyTree], PyTree]:
    """Run ``fn(shared, batch)`` with each device working on its own slice of ``batch``.

    ``jax.jit(jax.shard_map(fn, in_specs=(P(), P(axis)), out_specs=P(axis)))``:
    ``shared`` (e.g. a :class:`jfm.ModelField` with its parameters) is replicated, the
    leading axis of every ``batch`` leaf is split over the devices, ``fn`` runs on each
    slice independently (no communication), and its outputs (each with a leading batch
    axis) are concatenated back in order. This is how sampling and likelihoods shard::

        sample = jfm.distributed.shard_over_batch(
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
        The jitted, batch-sharded ``fn``, called as ``fn(shared, batch)`` with ``batch``
        leaves ``[B, ...]``; outputs ``[B, ...]``, split over the devices.

    Raises:
        TypeError: ``fn`` not callable; ``mesh`` not a Mesh. When called (at trace
            time): ValueError for a ``batch`` leaf whose leading axis the device count
            does not divide.
    """
    check_callable(fn, "fn", "(shared, batch)")
    check_mesh(mesh, axis)
    n = mesh.shape[axis]
    mapped = jax.shard_map(
        fn, mesh=mesh, in_specs=(P(), P(axis)), out_specs=P(axis), check_vma=False
    )

    @jax.jit
    def sharded(shared, batch):
        return mapped(shared, check_batch_leaves(batch, n, "batch"))

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
        TypeError: ``batch_fn`` not callable; ``mesh`` not a Mesh. When called (at
            trace time): ValueError for leaves whose leading axis the device count does
            not divide.
    """
    check_callable(batch_fn, "batch_fn", "(key) -> batch")
    sharding = batch_sharding(mesh, axis=axis)
    n = mesh.shape[axis]

    def checked(key):
        return check_batch_leaves(batch_fn(key), n, "batch_fn output")

    return jax.jit(checked, out_shardings=sharding)
