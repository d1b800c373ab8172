"""Minibatch OT over a batch split across devices: per-device, per-group and global plans.

Runs on ``--devices`` fake CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count``,
set here before JAX starts) unless ``--real`` (use the machine's devices). For each global
batch size ``B`` (``--sizes``; ``B / n`` pairs per device) and each scope of
:func:`jfm.distributed.shard_coupling` (``device``, groups of 2 and 4, ``global``), it
times the jitted coupling of a split N(0, I) -> 8-gaussians batch (median of ``--repeat``
alternated rounds, compile excluded) and reports the transport cost of the pairs, mean
``|x0' - x1|^2``, against the global optimum's (the quality each scope gives up). With
``--step`` it also times one sharded OT-CFM train step (MLP 4x512) per scope against the
independent coupling.

Fake devices share the host's cores: a CPU run measures the extra work and communication
of each scope, not a multi-device speed-up (on real devices the per-device plans run in
parallel, and so do the groups).

Usage: python benchmarks/ot_sharded.py [--devices 8] [--sizes 1024 2048 4096] [--repeat 5]
       [--step] [--out benchmarks/results/ot_sharded.md]
"""

import argparse
import os
import sys


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--real", action="store_true", help="use the real devices")
    p.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    p.add_argument(
        "--method",
        default="hungarian",
        help="exact_ot_coupling method in every scope (host callbacks next to collectives "
        "can deadlock on fake CPU devices: see jfm.distributed.shard_coupling)",
    )
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--step", action="store_true", help="also time sharded OT-CFM train steps")
    p.add_argument("--step-batch", type=int, default=2048)
    p.add_argument("--out", default="benchmarks/results/ot_sharded.md")
    args = p.parse_args(argv)
    if not args.real:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={args.devices}"
        )

    import functools

    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np

    sys.path.insert(0, os.path.dirname(__file__))
    import _common

    import jfm

    mesh = jfm.distributed.data_mesh(args.devices if not args.real else None)
    n_dev = mesh.shape["data"]
    scopes = ["device"] + [k for k in (2, 4) if k < n_dev and n_dev % k == 0] + ["global"]
    print(_common.header(), flush=True)
    rows = []
    for b in args.sizes:
        k0, k1 = jr.split(jr.key(b))
        x0 = jr.normal(k0, (b, 2), jnp.float32)
        x1 = jfm.data.eight_gaussians(b, key=k1, radius=5.0, std=1.0, dtype=jnp.float32)
        s0, s1 = jfm.distributed.shard_batch((x0, x1), mesh)
        fns, quality, first = {}, {}, {}
        ot = functools.partial(jfm.exact_ot_coupling, method=args.method)
        for scope in scopes:
            f = jax.jit(jfm.distributed.shard_coupling(ot, mesh, scope=scope))
            first[scope], out = _common.first_call(lambda f=f: jax.block_until_ready(f(s0, s1)))
            quality[scope] = float(jnp.mean(jnp.sum((out[0] - x1) ** 2, -1)))
            fns[scope] = lambda f=f: jax.block_until_ready(f(s0, s1))
        # The per-device host solve (no collective next to the callback: safe).
        host = jax.jit(jfm.distributed.shard_coupling(jfm.exact_ot_coupling, mesh, scope="device"))
        jax.block_until_ready(host(s0, s1))
        fns["device, auto"] = lambda: jax.block_until_ready(host(s0, s1))
        times = _common.alternate(fns, args.repeat)
        base = float(np.median(times["device"]))
        ms = 1e3 * float(np.median(times["device, auto"]))
        rows.append(
            [
                b,
                b // n_dev,
                "device (auto method)",
                f"{ms:.1f}",
                f"{ms / (1e3 * base):.2f}x",
                f"{quality['device']:.4f}",
                f"{quality['device'] / quality['global']:.3f}",
                "-",
            ]
        )
        for scope in scopes:
            ms = 1e3 * float(np.median(times[scope]))
            group = 1 if scope == "device" else (n_dev if scope == "global" else scope)
            rows.append(
                [
                    b,
                    b // n_dev * group,
                    scope,
                    f"{ms:.1f}",
                    f"{ms / (1e3 * base):.2f}x",
                    f"{quality[scope]:.4f}",
                    f"{quality[scope] / quality['global']:.3f}",
                    f"{first[scope]:.2f}",
                ]
            )
            print(rows[-1], flush=True)
    cols = [
        "B",
        "pairs per plan",
        "scope",
        "ms",
        "time / per-device",
        "mean cost",
        "/ global",
        "first (s)",
    ]
    lines = [
        f"# Minibatch OT over a split batch ({n_dev} {'fake ' if not args.real else ''}devices)",
        "",
        _common.header(),
        "",
        "Command: `python benchmarks/ot_sharded.py " + " ".join(argv or sys.argv[1:]) + "`; "
        f"median of {args.repeat} alternated rounds. jfm.distributed.shard_coupling("
        f"partial(jfm.exact_ot_coupling, method={args.method!r}), mesh, scope=...) on a split "
        "batch ('device (auto method)': the host solver per device); mean cost = mean |x0' - "
        "x1|^2 of the pairs (lower: closer to the OT map), '/ global' its ratio to the "
        "global plan's.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    if args.step:
        import optax
        from flax import nnx

        path = jfm.AffinePath(jfm.CondOT())
        net = jfm.models.MLP(2, hidden_features=512, depth=4, rngs=nnx.Rngs(0))
        apply, params = jfm.split_model(net)
        opt = optax.adam(1e-3)
        state = jfm.init_train_state(params, opt)
        shardings = jfm.distributed.state_sharding(state, mesh)
        x1 = jfm.data.eight_gaussians(
            args.step_batch, key=jr.key(0), radius=5.0, std=1.0, dtype=jnp.float32
        )
        batch = jfm.distributed.shard_batch(x1, mesh)
        fns = {}
        for scope in ["independent"] + scopes:
            coupling = (
                None
                if scope == "independent"
                else jfm.distributed.shard_coupling(
                    functools.partial(jfm.exact_ot_coupling, method=args.method), mesh, scope=scope
                )
            )
            loss = functools.partial(jfm.cfm_loss, path=path, coupling=coupling)
            step = jfm.distributed.make_sharded_train_step(
                jfm.make_train_step(apply, opt, loss), mesh, state, donate=False
            )
            st = jax.device_put(state, shardings)
            jax.block_until_ready(step(st, batch, jr.key(1)))
            fns[scope] = lambda step=step, st=st: jax.block_until_ready(step(st, batch, jr.key(1)))
        times = _common.alternate(fns, args.repeat)
        base = float(np.median(times["independent"]))
        lines += [
            "",
            f"## Sharded OT-CFM train step, MLP 4x512, global batch {args.step_batch}",
            "",
            "| coupling | ms | ratio to independent |",
            "|---|---|---|",
        ]
        for scope, ts in times.items():
            ms = float(np.median(ts))
            lines.append(f"| {scope} | {1e3 * ms:.1f} | {ms / base:.2f}x |")
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
