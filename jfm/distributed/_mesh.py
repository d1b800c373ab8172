"""Starting a multi-host run and building the 1-D data mesh."""

import numbers
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

#: The name of the data axis of :func:`data_mesh`, the default everywhere in jfm.distributed.
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
    :func:`data_mesh` spans them all, and each process feeds only its own (addressable)
    devices: :func:`sharded_batch_fn` computes just the slices of the batch that live on
    this host, from the key every host shares.

    On Cloud TPU, SLURM and Open MPI clusters every argument is detected from the
    environment (``initialize()`` with no arguments). Elsewhere pass them explicitly,
    the same coordinator (process 0's ``host:port``) on every process, e.g. two CPU
    processes on one machine::

        jfm.distributed.initialize("localhost:12345", num_processes=2, process_id=0)  # 0
        jfm.distributed.initialize("localhost:12345", num_processes=2, process_id=1)  # 1

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


def check_axis(axis) -> str:
    if not isinstance(axis, str) or not axis:
        raise TypeError(f"`axis` must be a non-empty string; got {axis!r}.")
    return axis


def check_mesh(mesh, axis: str) -> Mesh:
    """A ``Mesh`` with the axis ``axis``."""
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"`mesh` must be a jax.sharding.Mesh (jfm.distributed.data_mesh()); got {type(mesh)}."
        )
    check_axis(axis)
    if axis not in mesh.axis_names:
        raise ValueError(f"`axis` {axis!r} is not an axis of the mesh {mesh.axis_names}.")
    return mesh


def data_mesh(devices: int | Sequence[jax.Device] | None = None, *, axis: str = DATA_AXIS) -> Mesh:
    """A 1-D device mesh with one named axis, the data axis.

    Unlike ``jax.make_mesh(axis_shapes, axis_names)``, which builds meshes of any rank,
    this builds the one layout the rest of :mod:`jfm.distributed` works with: every
    device (or the first ``n``) in a row along ``axis``.

    Args:
        devices: ``None`` for every device (``jax.devices()``, all hosts), an int ``n``
            for the first ``n`` of them, or an explicit sequence of devices.
        axis: the axis name (default ``"data"``).

    Returns:
        ``Mesh(devices, (axis,))``, of shape ``{axis: number of devices}``.

    Raises:
        TypeError: ``devices`` of another type; ``axis`` not a non-empty string.
        ValueError: ``n`` outside ``[1, jax.device_count()]``; an empty sequence.

    Examples:
        >>> import jfm
        >>> dict(jfm.distributed.data_mesh(1).shape)
        {'data': 1}
    """
    check_axis(axis)
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
