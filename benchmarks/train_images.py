"""U-Net training and sampling throughput: one device against a data-parallel mesh.

For each device count in ``--devices`` the same global batch of ``--batch`` images goes
through ``jfm.distributed.make_sharded_train_step`` (the U-Net, CondOT CFM loss, Adam,
EMA) on a ``jfm.distributed.data_mesh(n)`` mesh (state replicated, or ``--fsdp``), and a
batch of ``--sample-n`` images is sampled with a fixed-step Euler solve sharded over the
batch.
Reported: compile time, best-of-``--repeat`` time of ``--steps`` steps (steps/s,
images/s), sampling images/s, and device memory where the backend reports it.

On a CPU the devices are faked with ``--xla_force_host_platform_device_count`` (set here
when ``--fake-devices`` is given, before JAX starts): they share the machine's cores, so
the "scaling" measures the overhead of the sharded program, not a speed-up. On GPUs/TPUs
run with the real devices (``--fake-devices 0``) and ``--unet-config cifar10 --image-size
32 --channels-in 3``.

Usage:
  python benchmarks/train_images.py --fake-devices 8 --devices 1,8        # CPU, tiny U-Net
  python benchmarks/train_images.py --fake-devices 0 --unet-config cifar10 --image-size 32 \\
      --channels-in 3 --batch 128 --devices 1,all                          # accelerators
"""

import argparse
import math
import os
import sys


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fake-devices", type=int, default=8, help="CPU fake devices (0: real)")
    p.add_argument("--devices", default="1,all", help="comma-separated device counts")
    p.add_argument("--unet-config", default="tiny")
    p.add_argument("--image-size", type=int, default=8)
    p.add_argument("--channels-in", type=int, default=1)
    p.add_argument("--batch", type=int, default=64, help="global batch")
    p.add_argument("--steps", type=int, default=5, help="steps per timed repeat")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--sample-n", type=int, default=64)
    p.add_argument("--sample-steps", type=int, default=10)
    p.add_argument("--fsdp", action="store_true")
    p.add_argument("--out", default=None, help="results table (default benchmarks/results/)")
    return p.parse_args()


def main():
    a = parse()
    if a.fake_devices:
        flag = f"--xla_force_host_platform_device_count={a.fake_devices}"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
    import functools
    import timeit

    import diffrax as dfx
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import optax
    from flax import nnx

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.dirname(here))
    sys.path.insert(0, here)
    from _common import header, write_table

    import jfm

    counts = [jax.device_count() if c == "all" else int(c) for c in a.devices.split(",")]
    net = jfm.models.UNet(
        a.channels_in,
        image_size=a.image_size,
        **jfm.models.unet_config(a.unet_config),
        rngs=nnx.Rngs(0),
    )
    apply, params = jfm.split_model(net)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    opt = optax.adam(1e-4)
    path = jfm.AffinePath(jfm.CondOT())
    step = jfm.make_train_step(
        apply, opt, functools.partial(jfm.cfm_loss, path=path), ema_decay=0.999
    )
    shape = (a.image_size, a.image_size, a.channels_in)

    def batch_fn(key):
        return jr.uniform(key, (a.batch, *shape), jnp.float32, -1, 1)

    rows = []
    base = None
    for n in counts:
        mesh = jfm.distributed.data_mesh(n)
        state = jfm.init_train_state(jax.tree.map(jnp.copy, params), opt, ema=True)
        state = jax.device_put(state, jfm.distributed.state_sharding(state, mesh, fsdp=a.fsdp))
        sharded = jfm.distributed.make_sharded_train_step(step, mesh, state, fsdp=a.fsdp)
        bf = jfm.distributed.sharded_batch_fn(batch_fn, mesh)
        keys = [jr.key(i) for i in range(a.steps)]
        batches = [bf(k) for k in keys]

        def run(state):
            for k, b in zip(keys, batches):
                state, m = sharded(state, b, k)
            return state, m

        t0 = timeit.default_timer()
        state, m = run(state)
        jax.block_until_ready(m)
        compile_s = timeit.default_timer() - t0
        times = []
        for _ in range(a.repeat):
            t0 = timeit.default_timer()
            state, m = run(state)
            jax.block_until_ready(m)
            times.append(timeit.default_timer() - t0)
        step_s = min(times) / a.steps

        field = jfm.field_from_model(apply, state.ema_params)
        x0 = jr.normal(jr.key(1), (a.sample_n * math.prod(shape),), jnp.float32)
        x0 = x0.reshape(a.sample_n, *shape)  # drawn flat: same values, fast compile
        sampler = jfm.distributed.shard_over_batch(
            lambda f, x: jfm.sample_ode(f, x, solver=dfx.Euler(), steps=a.sample_steps).x1, mesh
        )

        def sample():
            return sampler(field, x0)

        jax.block_until_ready(sample())
        sample_s = min(
            timeit.repeat(lambda: jax.block_until_ready(sample()), number=1, repeat=a.repeat)
        )
        stats = jax.devices()[0].memory_stats() or {}
        mem = stats.get("peak_bytes_in_use")
        ips = a.batch / step_s
        base = base or ips
        rows.append(
            [
                n,
                f"{compile_s:.1f}",
                f"{1e3 * step_s:.1f}",
                f"{1 / step_s:.2f}",
                f"{ips:.0f}",
                f"{ips / base:.2f}x",
                f"{a.sample_n / sample_s:.0f}",
                "n/a" if mem is None else f"{mem / 2**30:.2f}",
            ]
        )
        print(rows[-1], flush=True)

    cols = [
        "devices",
        "first call (s)",
        "step (ms)",
        "steps/s",
        "train images/s",
        "vs 1st row",
        f"sample images/s (Euler {a.sample_steps})",
        "peak mem dev0 (GiB)",
    ]
    platform = jax.devices()[0].platform
    notes = (
        f"U-Net `{a.unet_config}` ({n_params / 1e6:.2f}M parameters), images {shape}, global "
        f"batch {a.batch}, {'FSDP' if a.fsdp else 'replicated state'}, Adam + EMA, CondOT "
        f"CFM; best of {a.repeat} x {a.steps} steps. Sampling: {a.sample_n} images, batch "
        "sharded over the mesh."
    )
    if platform == "cpu" and a.fake_devices:
        notes += (
            f" The {a.fake_devices} devices are FAKE CPU devices "
            "(--xla_force_host_platform_device_count) sharing this machine's cores "
            f"({os.cpu_count()} cores, shared with other jobs): the ratio measures the "
            "cost of the sharded program, not a multi-device speed-up. No GPU figures "
            "were measured."
        )
    out = a.out or os.path.join(here, "results", f"train_images_{platform}_{a.unet_config}.md")
    print(write_table(out, "U-Net training/sampling throughput", rows, cols, notes))
    print(header())


if __name__ == "__main__":
    main()
