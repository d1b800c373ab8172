"""One process of the 2-process test in test_distributed.py (run as a script, not by pytest).

``python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT``: 4 fake CPU devices
per process, gloo CPU collectives, ``jfm.distributed.initialize`` with a coordinator on
localhost, then the sharded OT-CFM train steps of ``train()``; process 0 writes the final
parameters to ``OUT`` (``.npz``). The same ``train()`` runs in the test process on 8 local
devices for the reference.
"""

import functools
import os
import sys


def train(jax, jfm, steps: int = 3):
    """Sharded OT-CFM steps (global-batch exact OT) on the data mesh of every device."""
    import jax.numpy as jnp
    import jax.random as jr
    import optax
    from flax import nnx

    mesh = jfm.distributed.data_mesh()
    net = jfm.models.MLP(
        2, hidden_features=16, depth=2, time_embed_dim=8, param_dtype=jnp.float64, rngs=nnx.Rngs(0)
    )
    apply, params = jfm.split_model(net)
    opt = optax.adam(1e-2)
    # Device-side solver: host callbacks next to collectives are unsafe on CPU meshes.
    ot = functools.partial(jfm.exact_ot_coupling, method="hungarian")
    coupling = jfm.distributed.shard_coupling(ot, mesh, scope="global")
    path = jfm.AffinePath(jfm.CondOT())
    step = jfm.make_train_step(
        apply, opt, functools.partial(jfm.cfm_loss, path=path, coupling=coupling)
    )
    state = jfm.init_train_state(params, opt)
    sharded = jfm.distributed.make_sharded_train_step(step, mesh, state)
    state = jax.device_put(state, jfm.distributed.state_sharding(state, mesh))

    def batch_fn(key):  # elementwise over the batch: each host computes only its rows
        return jfm.data.eight_gaussians(32, key=key, dtype=jnp.float64)

    batches = jfm.distributed.sharded_batch_fn(batch_fn, mesh)
    for i in range(steps):
        key = jr.key(i)
        state, _ = sharded(state, batches(jr.fold_in(key, 1)), key)
    # Replicated leaves: every process holds a full copy.
    return [jax.device_get(x.addressable_shards[0].data) for x in jax.tree.leaves(state.params)]


def main():
    pid, nproc, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import numpy as np

    import jfm

    jfm.distributed.initialize(f"localhost:{port}", num_processes=nproc, process_id=pid)
    assert jax.device_count() == 4 * nproc and jax.local_device_count() == 4
    leaves = train(jax, jfm)
    if pid == 0:
        np.savez(out, *leaves)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
