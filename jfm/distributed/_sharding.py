"""Shardings of batches and training states, and placing arrays with them."""

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxtyping import PyTree

from .._checks import check_bool, check_int
from ._mesh import DATA_AXIS, check_mesh


def check_batch_leaves(tree: PyTree, n: int, name: str) -> PyTree:
    """Every leaf of ``tree`` has a leading axis that ``n`` (the device count) divides."""
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        shape = np.shape(x)
        if not shape or shape[0] % n:
            raise ValueError(
                f"`{name}` leaves must have a leading batch axis divisible by the {n} devices "
                f"of the mesh; got shape {shape} at {jax.tree_util.keystr(path) or 'the root'}."
                " Pick a batch size that is a multiple of the device count."
            )
    return tree


def batch_sharding(mesh: Mesh, *, axis: str = DATA_AXIS) -> NamedSharding:
    """The sharding of a batch: the leading axis split over ``axis``, the rest whole.

    Args:
        mesh: a mesh with the axis ``axis`` (e.g. :func:`data_mesh`).
        axis: the data axis name (default ``"data"``).

    Returns:
        ``NamedSharding(mesh, PartitionSpec(axis))``; a batch ``[B, ...]`` on ``n``
        devices puts examples ``[i B / n, (i + 1) B / n)`` on device ``i``.

    Raises:
        TypeError: ``mesh`` not a Mesh; ``axis`` not a string.
        ValueError: ``axis`` not an axis of ``mesh``.
    """
    return NamedSharding(check_mesh(mesh, axis), P(axis))


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
        state: a pytree of arrays of any shapes (e.g. a :class:`jfm.TrainState`); only
            shapes are read.
        mesh: the device mesh.
        fsdp: split large leaves (see above) instead of replicating everything.
        axis: the data axis name (default ``"data"``).
        min_size: smallest leaf (in elements) that ``fsdp`` splits, a positive int.

    Returns:
        A pytree of ``NamedSharding`` with the structure of ``state``.

    Raises:
        TypeError: ``mesh`` not a Mesh, ``fsdp`` not a bool, ``min_size`` not an int.
        ValueError: ``axis`` not in the mesh; ``min_size < 1``.
    """
    check_mesh(mesh, axis)
    check_bool(fsdp, "fsdp")
    min_size = check_int(min_size, "min_size")
    return jax.tree.map(lambda x: _leaf_sharding(x, mesh, axis, fsdp, min_size), state)


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
        TypeError: ``mesh`` not a Mesh.
        ValueError: a leaf without a leading axis divisible by the device count.
    """
    sharding = batch_sharding(mesh, axis=axis)
    check_batch_leaves(batch, mesh.shape[axis], "batch")
    return jax.device_put(batch, sharding)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Place every array leaf of ``tree`` whole on every device of ``mesh``.

    For parameters (or a :class:`jfm.ModelField` holding them) used by a batch-sharded
    computation. Non-array leaves are left alone.

    Args:
        tree: any pytree.
        mesh: the device mesh.

    Returns:
        ``tree`` with its array leaves (any shapes) replicated (``PartitionSpec()``).

    Raises:
        TypeError: ``mesh`` not a Mesh.
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"`mesh` must be a jax.sharding.Mesh (jfm.distributed.data_mesh()); got {type(mesh)}."
        )
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(
        lambda x: jax.device_put(x, sharding) if isinstance(x, (jax.Array, np.ndarray)) else x,
        tree,
    )
