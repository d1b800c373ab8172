"""Multi-device training and batch-sharded inference with ``jax.sharding``.

One 1-D :class:`jax.sharding.Mesh` over the devices with a ``"data"`` axis
(:func:`data_mesh`). The batch is split over that axis; parameters and optimizer state
are replicated (plain data parallelism: XLA inserts the gradient all-reduce) or, with
``fsdp=True``, split over the same axis along one dimension of each large array (XLA
all-gathers them where they are used). :func:`make_sharded_train_step` jits
:func:`jfm.make_train_step`'s step with those in/out shardings (:func:`state_sharding`,
:func:`batch_sharding`); :func:`sharded_batch_fn` makes every device (and every host)
draw only its own slice of each batch, from the same key; :func:`shard_over_batch` runs
a sampler or likelihood (:func:`jfm.sample_ode`, :func:`jfm.log_prob`) on each device's
slice of the batch; :func:`shard_coupling` couples a split batch per device, per group of
devices or globally (gather, solve, scatter); :func:`shard_batch` and :func:`replicate`
place arrays. Multi-host
runs start with :func:`initialize` (``jax.distributed.initialize``) before any other JAX
call. This file only re-exports.
"""

from ._coupling import shard_coupling as shard_coupling
from ._map import shard_over_batch as shard_over_batch, sharded_batch_fn as sharded_batch_fn
from ._mesh import data_mesh as data_mesh, initialize as initialize
from ._sharding import (
    batch_sharding as batch_sharding,
    replicate as replicate,
    shard_batch as shard_batch,
    state_sharding as state_sharding,
)
from ._train_step import make_sharded_train_step as make_sharded_train_step

__all__ = [
    "batch_sharding",
    "data_mesh",
    "initialize",
    "make_sharded_train_step",
    "replicate",
    "shard_batch",
    "shard_coupling",
    "shard_over_batch",
    "sharded_batch_fn",
    "state_sharding",
]
