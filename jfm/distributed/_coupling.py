"""Minibatch couplings of a batch that is split over the devices: per device, per group, global."""

import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from .._checks import check_callable
from ._mesh import DATA_AXIS, check_mesh
from ._sharding import check_batch_leaves

_SCOPES: tuple[str, ...] = ("device", "global")


def _check_scope(scope, n_dev: int) -> int:
    if isinstance(scope, str):
        if scope not in _SCOPES:
            raise ValueError(
                f"`scope` must be 'device', 'global' or an int group size; got {scope!r}."
            )
        return 1 if scope == "device" else n_dev
    if isinstance(scope, numbers.Integral) and not isinstance(scope, bool):
        if not 1 <= scope <= n_dev or n_dev % scope:
            raise ValueError(
                f"`scope` as a group size must divide the {n_dev} devices of the mesh; got {scope}."
            )
        return int(scope)
    raise TypeError(f"`scope` must be 'device', 'global' or an int group size; got {type(scope)}.")


def shard_coupling(
    coupling: Callable,
    mesh: Mesh,
    *,
    scope: str | int = "global",
    axis: str = DATA_AXIS,
) -> Callable:
    r"""A coupling of a batch split over ``mesh``: one plan per device, per group, or global.

    Returns ``coupling'(x0, x1, *, key) -> (x0', x1')``, the coupling protocol, for global
    batches ``[B, *event]`` whose leading axis is split over ``axis`` (as in a step of
    :func:`make_sharded_train_step`; call it inside the jitted loss, e.g.
    ``jfm.cfm_loss(..., coupling=shard_coupling(jfm.exact_ot_coupling, mesh))``). The
    devices form groups of ``k`` consecutive devices (``k`` = 1 for ``scope="device"``,
    all ``n`` for ``"global"``, or the int ``scope``); each group couples the ``k B / n``
    pairs it holds, with no pair crossing groups:

    - ``"device"`` (``k = 1``): every device couples its own slice. No communication; the
      plan is the one of ``B / n`` pairs (an OT plan over a smaller batch: further from the
      population OT map, as with a smaller batch on one device).
    - ``"global"`` (``k = n``): gather, solve, scatter. The slices are all-gathered, the
      first device of the group computes ``coupling(x0, x1, key=key)`` on the whole batch
      (the others wait), and a reduce-scatter returns each device its slice of the result:
      bitwise the single-device coupling of the concatenated batch, with the same key.
      Communication: two collectives of ``B x D`` values; compute: the coupling of ``B``
      pairs on one device (``O(B^3)`` worst case for exact OT).
    - an int ``k`` dividing ``n``: the middle ground. Each group of ``k`` devices does the
      same as ``"global"`` on its ``k B / n`` pairs, all groups at once: an OT plan over
      ``k`` times the per-device batch for about ``k^2 ... k^3`` times the per-device cost
      (quadratic to cubic in the size), with collectives only inside groups (e.g. the
      devices of one host, ``k`` = local device count, which keeps the gather off the
      network).

    The group index ``g`` is folded into the key (``jr.fold_in(key, g)``) except for
    ``"global"``, so random couplings (Sinkhorn) draw independently per group and
    ``"global"`` draws exactly what one device would.

    Host callbacks: ``jfm.exact_ot_coupling``'s ``"scipy"`` method (the default on a CPU
    backend above 32 pairs) solves on the host through :func:`jax.pure_callback`. With
    several CPU devices in one process (``--xla_force_host_platform_device_count``), a host
    callback next to the collectives of a group or the global scope has been seen to
    deadlock (jax 0.10: a device never reaches the collective); per-device scope has no
    collective and is safe. On such a mesh pass a device-side method,
    ``functools.partial(jfm.exact_ot_coupling, method="hungarian")`` (or ``"auction"``).

    Args:
        coupling: a coupling ``(x0, x1, *, key) -> (x0', x1')`` (``jfm.exact_ot_coupling``,
            ``functools.partial(jfm.sinkhorn_coupling, epsilon=...)``, ...), returning
            arrays of the input shapes.
        mesh: the device mesh.
        scope: ``"global"`` (default), ``"device"`` or an int group size dividing the
            device count.
        axis: the data axis name.

    Returns:
        The coupling, called as ``coupling'(x0, x1, *, key=None)`` on ``[B, *event]``
        batches (``B`` divisible by the device count); outputs split over the devices.

    Raises:
        TypeError: ``coupling`` not callable; ``mesh`` not a Mesh; ``scope`` of another
            type. When called: TypeError for a ``key`` that is not a PRNG key where the
            coupling needs one.
        ValueError: unknown ``scope`` or a group size that does not divide the devices;
            ``axis`` not in the mesh. When called: a batch the device count does not
            divide.
    """
    check_callable(coupling, "coupling", "(x0, x1, *, key)")
    check_mesh(mesh, axis)
    n_dev = mesh.shape[axis]
    k = _check_scope(scope, n_dev)
    is_global = k == n_dev
    # Groups of k consecutive devices along the axis (collectives run within each).
    groups = None if is_global else np.arange(n_dev).reshape(n_dev // k, k).tolist()
    spec = P(axis)

    def local(x0, x1, key):
        index = jax.lax.axis_index(axis)
        if key is not None and not is_global:
            key = jr.fold_in(key, index // k)
        if k == 1:
            return coupling(x0, x1, key=key)
        g0 = jax.lax.all_gather(x0, axis, tiled=True, axis_index_groups=groups)
        g1 = jax.lax.all_gather(x1, axis, tiled=True, axis_index_groups=groups)

        def solve(g0, g1):
            c0, c1 = coupling(g0, g1, key=key)
            return jnp.asarray(c0, g0.dtype), jnp.asarray(c1, g1.dtype)

        def idle(g0, g1):
            return jnp.zeros_like(g0), jnp.zeros_like(g1)

        c0, c1 = jax.lax.cond(index % k == 0, solve, idle, g0, g1)
        # Only the first member holds non-zeros: the sum is its result, scattered in order.
        return (
            jax.lax.psum_scatter(c0, axis, tiled=True, axis_index_groups=groups),
            jax.lax.psum_scatter(c1, axis, tiled=True, axis_index_groups=groups),
        )

    def sharded(x0, x1, *, key=None):
        check_batch_leaves((x0, x1), n_dev, "x0, x1")
        x0, x1 = jnp.asarray(x0), jnp.asarray(x1)
        if key is None:
            fn = jax.shard_map(
                lambda a, b: local(a, b, None),
                mesh=mesh,
                in_specs=(spec, spec),
                out_specs=(spec, spec),
                check_vma=False,
            )
            return fn(x0, x1)
        fn = jax.shard_map(
            local, mesh=mesh, in_specs=(spec, spec, P()), out_specs=(spec, spec), check_vma=False
        )
        return fn(x0, x1, key)

    return sharded
