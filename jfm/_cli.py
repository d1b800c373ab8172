"""The ``jfm`` command line: ``demo``, ``train`` and ``sample``.

``jfm train --dataset NAME --model {mlp,unet} --steps N --out DIR`` trains a conditional
flow matching model on every visible device (data parallel over a ``jax.sharding`` mesh;
``--devices K`` for the first ``K``, ``--fsdp`` to split the state, ``--distributed`` for
a multi-host start) and checkpoints into ``DIR`` (resuming when ``DIR`` already holds a
checkpoint);
``jfm sample --out DIR --n N --seed S --save FILE.npy`` samples from the latest checkpoint
in ``DIR``, deterministically given the seed, and writes a PNG beside the ``.npy``;
``jfm demo`` does both on a built-in 2-D dataset in well under a minute on a CPU.
"""

import argparse
import json
import math
import os
import sys
import time
from functools import partial
from pathlib import Path

SOLVERS = ("euler", "heun", "midpoint", "ralston", "bosh3", "tsit5", "dopri5", "dopri8")
PATHS = ("condot", "cosine", "polynomial", "vp", "ve")
CONFIG_NAME = "config.json"
CHECKPOINT_SUBDIR = "checkpoints"


def _solver(name: str):
    import diffrax as dfx

    table = {
        "euler": dfx.Euler,
        "heun": dfx.Heun,
        "midpoint": dfx.Midpoint,
        "ralston": dfx.Ralston,
        "bosh3": dfx.Bosh3,
        "tsit5": dfx.Tsit5,
        "dopri5": dfx.Dopri5,
        "dopri8": dfx.Dopri8,
    }
    return table[name]()


def _path(cfg: dict):
    import jfm

    name = cfg["path"]
    if name == "condot":
        sched = jfm.CondOT()
    elif name == "cosine":
        sched = jfm.Cosine()
    elif name == "polynomial":
        sched = jfm.Polynomial(float(cfg.get("poly_n", 2.0)))
    elif name == "vp":
        sched = jfm.VP()
    else:
        sched = jfm.VE()
    return jfm.AffinePath(sched)


def _dataset(name: str):
    """Return (event_shape, batch_fn(key, n), held_out(key, n), num_classes_or_None)."""
    import jax.numpy as jnp
    import jax.random as jr

    import jfm

    if name == "digits":
        images = jnp.asarray(jfm.data.digits(dtype=jnp.float32))

        def batch_fn(key, n):
            idx = jr.randint(key, (n,), 0, images.shape[0])
            return images[idx]

        return images.shape[1:], batch_fn, batch_fn
    if name not in jfm.data.DATASETS:
        valid = ", ".join(sorted(jfm.data.DATASETS) + ["digits"])
        raise SystemExit(f"jfm: unknown --dataset {name!r}; choose one of: {valid}")
    gen = jfm.data.DATASETS[name]

    def batch_fn(key, n):
        return gen(n, key=key, dtype=jnp.float32)

    return (2,), batch_fn, batch_fn


def _build_model(cfg: dict, event_shape, seed: int):
    from flax import nnx

    import jfm

    if cfg.get("model", "mlp") == "unet":
        if len(event_shape) != 3:
            raise SystemExit(
                f"jfm: --model unet needs an image dataset (e.g. --dataset digits); "
                f"{cfg['dataset']!r} has event shape {tuple(event_shape)}."
            )
        model = jfm.models.UNet(
            event_shape[-1],
            image_size=min(event_shape[:2]),
            **jfm.models.unet_config(cfg["unet_config"]),
            rngs=nnx.Rngs(seed),
        )
    else:
        model = jfm.models.MLP(
            math.prod(event_shape),
            hidden_features=cfg["hidden"],
            depth=cfg["depth"],
            rngs=nnx.Rngs(seed),
        )
    return jfm.split_model(model)


def _mesh(devices: int | None, n: int | None = None):
    """The data mesh over the first ``devices`` devices (all when None).

    With ``n`` (a batch size) and no explicit ``devices``, the largest device count that
    divides ``n`` is used, so any ``n`` works.
    """
    import jax

    import jfm

    available = jax.device_count()
    if devices is not None and devices > available:
        raise SystemExit(f"jfm: --devices {devices} but only {available} device(s) are visible.")
    if devices is None and n is not None:
        devices = max(d for d in range(1, available + 1) if n % d == 0)
    return jfm.distributed.data_mesh(devices)


def _train(cfg: dict, out: Path, *, progress: bool = True, devices=None, fsdp: bool = False):
    """Train per ``cfg`` into ``out``; returns (apply, state, history, held_out_fn)."""
    import jax
    import jax.random as jr

    import jfm

    event_shape, batch_fn, held_out = _dataset(cfg["dataset"])
    path = _path(cfg)
    apply, params = _build_model(cfg, event_shape, cfg["seed"])
    optimizer = _optimizer(cfg)
    ema = cfg["ema_decay"] > 0
    state = jfm.init_train_state(params, optimizer, ema=ema)
    loss_fn = partial(jfm.cfm_loss, path=path)
    step = jfm.make_train_step(
        apply, optimizer, loss_fn, ema_decay=cfg["ema_decay"] if ema else None
    )
    mesh = _mesh(devices)
    n_dev = mesh.shape["data"]
    if cfg["batch"] % n_dev:
        raise SystemExit(
            f"jfm: --batch {cfg['batch']} must be a multiple of the {n_dev} devices in use "
            "(or pass --devices)."
        )
    # Data parallel over the mesh: the state replicated (or split with --fsdp), each
    # device drawing and processing its own slice of every batch.
    state = jax.device_put(state, jfm.distributed.state_sharding(state, mesh, fsdp=fsdp))
    step = jfm.distributed.make_sharded_train_step(step, mesh, state, fsdp=fsdp)
    key = jr.key(cfg["seed"])
    state, history = jfm.fit(
        step,
        state,
        jfm.distributed.sharded_batch_fn(partial(_batch_of, batch_fn, cfg["batch"]), mesh),
        steps=cfg["steps"],
        key=key,
        checkpoint_dir=str(out / CHECKPOINT_SUBDIR),
        checkpoint_every=cfg["checkpoint_every"],
        keep=3,
        progress=progress,
    )
    return apply, state, history, held_out, event_shape, path


def _optimizer(cfg: dict):
    """Adam at a constant rate: independent of --steps, so a run can be extended."""
    import optax

    return optax.adam(cfg["lr"])


def _batch_of(batch_fn, n, key):
    return batch_fn(key, n)


def _sample(
    apply, params, cfg, n: int, seed: int, solver: str, rtol, atol, steps, saveat=None, mesh=None
):
    import jax.numpy as jnp
    import jax.random as jr

    import jfm

    event_shape, _, _ = _dataset(cfg["dataset"])
    path = _path(cfg)
    field = jfm.field_from_model(apply, params)
    x0 = path.prior_sample((n, *event_shape), key=jr.key(seed), dtype=jnp.float32)
    if mesh is not None:  # split the batch over the devices
        field, x0 = jfm.distributed.replicate(field, mesh), jfm.distributed.shard_batch(x0, mesh)
    t1 = 1.0 - 1e-3 if cfg["path"] == "vp" else 1.0  # VP's velocity is singular at t=1
    kw = dict(steps=steps) if steps else dict(rtol=rtol, atol=atol)
    return jfm.sample_ode(field, x0, solver=_solver(solver), t1=t1, saveat=saveat, **kw)


def _plot_2d(ax, x, title, **kw):
    import numpy as np

    x = np.asarray(x)
    ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5, **kw)
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def _save_samples_png(samples, png_path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import jfm

    if samples.ndim == 2 and samples.shape[1] == 2:
        fig, ax = plt.subplots(figsize=(4, 4))
        _plot_2d(ax, samples, title)
        fig.tight_layout()
        fig.savefig(png_path, dpi=120)
        plt.close(fig)
    else:
        scale = max(1, 32 // samples.shape[1])  # 8x8 digits drawn at 32x32
        jfm.data.save_image_grid(samples[:100].clip(-1, 1), str(png_path), scale=scale)


def _config_from_args(a) -> dict:
    return dict(
        dataset=a.dataset,
        model=a.model,
        unet_config=a.unet_config,
        path=a.path,
        poly_n=a.poly_n,
        hidden=a.hidden,
        depth=a.depth,
        steps=a.steps,
        batch=a.batch,
        lr=a.lr,
        ema_decay=a.ema_decay,
        seed=a.seed,
        checkpoint_every=a.checkpoint_every,
    )


def _load_config(out: Path) -> dict:
    f = out / CONFIG_NAME
    if not f.exists():
        raise SystemExit(f"jfm: {out} holds no {CONFIG_NAME}: train into it first (jfm train).")
    return json.loads(f.read_text())


def cmd_train(a) -> int:
    if a.distributed:
        import jfm

        # Must come before any other JAX call; arguments not given are detected from the
        # cluster environment (TPU, SLURM, Open MPI).
        jfm.distributed.initialize(a.coordinator, a.num_processes, a.process_id)
    out = Path(a.out)
    cfg = _config_from_args(a)
    if (out / CONFIG_NAME).exists():
        old = _load_config(out)
        old.setdefault("model", "mlp")  # runs written before --model existed
        old.setdefault("unet_config", cfg["unet_config"])
        diff = {k: (old.get(k), v) for k, v in cfg.items() if k != "steps" and old.get(k) != v}
        if diff:
            raise SystemExit(
                f"jfm: {out} holds a run with another configuration {diff} (old, new): "
                "resume with the same flags or use a new --out."
            )
        print(f"resuming from {out}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_NAME).write_text(json.dumps(cfg, indent=2))
    t = time.perf_counter()
    _, state, history, *_ = _train(
        cfg, out, progress=not a.no_progress, devices=a.devices, fsdp=a.fsdp
    )
    losses = history.get("loss", [])
    last = f"{losses[-1]:.4f}" if len(losses) else "n/a"
    print(f"trained to step {int(state.step)} in {time.perf_counter() - t:.1f}s; last loss {last}")
    return 0


def _restore(out: Path, cfg: dict):
    import jfm

    event_shape, _, _ = _dataset(cfg["dataset"])
    apply, params = _build_model(cfg, event_shape, cfg["seed"])
    ema = cfg["ema_decay"] > 0
    like = jfm.init_train_state(params, _optimizer(cfg), ema=ema)
    state = jfm.restore_checkpoint(str(out / CHECKPOINT_SUBDIR), like)
    return apply, (state.ema_params if ema else state.params), state


def cmd_sample(a) -> int:
    import numpy as np

    out = Path(a.out)
    cfg = _load_config(out)
    apply, params, state = _restore(out, cfg)
    mesh = _mesh(a.devices, a.n)
    res = _sample(
        apply, params, cfg, a.n, a.seed, a.solver, a.rtol, a.atol, a.sample_steps, mesh=mesh
    )
    x = np.asarray(res.x1)
    save = Path(a.save)
    save.parent.mkdir(parents=True, exist_ok=True)
    np.save(save, x)
    png = save.with_suffix(".png")
    _save_samples_png(x, png, f"{cfg['dataset']}: {a.n} samples (step {int(state.step)})")
    n_dev = mesh.shape["data"]
    print(f"wrote {save} {x.shape} and {png}; NFE {int(res.nfe)}; {n_dev} device(s)")
    return 0


def cmd_demo(a) -> int:
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    import jfm

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(
        dataset=a.dataset,
        model="mlp",
        unet_config="tiny",
        path="condot",
        poly_n=2.0,
        hidden=a.hidden,
        depth=a.depth,
        steps=a.steps,
        batch=a.batch,
        lr=a.lr,
        ema_decay=0.0,
        seed=a.seed,
        checkpoint_every=a.steps,
    )
    (out / CONFIG_NAME).write_text(json.dumps(cfg, indent=2))
    print(
        f"jfm demo: CFM on {a.dataset}, MLP {a.depth}x{a.hidden}, {a.steps} steps, "
        f"batch {a.batch}, on {jax.devices()[0].platform}"
    )
    t = time.perf_counter()
    apply, state, history, held_out, _, _ = _train(cfg, out, progress=not a.no_progress)
    t_train = time.perf_counter() - t
    t = time.perf_counter()
    ts = jnp.linspace(0.0, 1.0, 21)
    res = _sample(apply, state.params, cfg, a.n, a.seed + 1, "dopri5", 1e-5, 1e-5, None, ts)
    x1 = jax.block_until_ready(res.x1)
    t_sample = time.perf_counter() - t
    data = held_out(jr.key(a.seed + 2), a.n)
    ed = float(jfm.metrics.energy_distance(x1, data))
    floor = float(jfm.metrics.energy_distance(held_out(jr.key(a.seed + 3), a.n), data))

    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    _plot_2d(axes[0], data, f"held-out data (n={a.n})")
    _plot_2d(axes[1], x1, f"samples: Dopri5, NFE {int(res.nfe)}", color="C1")
    xs = np.asarray(res.xs)[:, :300]
    for i in range(xs.shape[1]):
        axes[2].plot(xs[:, i, 0], xs[:, i, 1], lw=0.4, color="0.5", alpha=0.6)
    axes[2].scatter(xs[0, :, 0], xs[0, :, 1], s=3, color="C0", label="t=0 (noise)")
    axes[2].scatter(xs[-1, :, 0], xs[-1, :, 1], s=3, color="C1", label="t=1 (samples)")
    axes[2].legend(loc="upper right", fontsize=7)
    axes[2].set_title("trajectories")
    axes[2].set_aspect("equal")
    fig.suptitle(f"jfm demo — energy distance {ed:.4f} (data vs data: {floor:.4f})")
    fig.tight_layout()
    png = out / "demo.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    loss = history["loss"][-1] if len(history.get("loss", [])) else float("nan")
    print(f"train: {t_train:.1f}s (final loss {loss:.4f}); sample {a.n} points: {t_sample:.1f}s")
    print(f"NFE (Dopri5, rtol=atol=1e-5): {int(res.nfe)}")
    print(
        f"energy distance to held-out data: {ed:.5f} (two data sets of the same size: {floor:.5f})"
    )
    print(f"wrote {png}")
    return 0


def _add_model_flags(p, *, hidden, depth, steps, batch):
    p.add_argument("--dataset", default="moons", help="built-in dataset (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=hidden, help="MLP width (default: %(default)s)")
    p.add_argument("--depth", type=int, default=depth, help="hidden layers (default: %(default)s)")
    p.add_argument("--steps", type=int, default=steps, help="training steps (default: %(default)s)")
    p.add_argument("--batch", type=int, default=batch, help="batch size (default: %(default)s)")
    p.add_argument(
        "--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jfm",
        description="Flow matching in JAX: train, sample, and a one-minute demo.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser(
        "demo",
        help="train on a 2-D dataset, sample with Dopri5, plot (about a minute on a CPU)",
        description="Train a CFM model on a built-in 2-D dataset, sample it with an adaptive "
        "Dopri5 solve, write demo.png (data / samples / trajectories) and print NFE and "
        "the energy distance to held-out data.",
    )
    _add_model_flags(d, hidden=128, depth=3, steps=3000, batch=512)
    d.add_argument("--n", type=int, default=2000, help="samples to draw (default: %(default)s)")
    d.add_argument("--out", default="jfm-demo", help="output folder (default: %(default)s)")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser(
        "train",
        help="train a CFM model; resumes when --out holds a checkpoint",
        description="Train a conditional flow matching model (MLP, or U-Net on images) on all "
        "visible devices (data parallel; --devices to restrict) and checkpoint into --out. "
        "Running again with the same --out resumes from the latest checkpoint.",
    )
    _add_model_flags(t, hidden=256, depth=4, steps=10000, batch=1024)
    t.add_argument("--path", choices=PATHS, default="condot", help="probability path")
    t.add_argument("--poly-n", type=float, default=2.0, help="exponent for --path polynomial")
    t.add_argument(
        "--model",
        choices=("mlp", "unet"),
        default="mlp",
        help="network: mlp, or unet for image data (default: mlp)",
    )
    t.add_argument(
        "--unet-config",
        choices=("tiny", "cifar10"),
        default="tiny",
        help="U-Net size: tiny (CPU, 8x8 digits) or cifar10 (35.7M parameters, accelerators)",
    )
    t.add_argument(
        "--devices",
        type=int,
        default=None,
        help="use the first N devices (default: all visible, data parallel)",
    )
    t.add_argument(
        "--fsdp", action="store_true", help="split parameters/optimizer state over the devices"
    )
    t.add_argument(
        "--distributed",
        action="store_true",
        help="multi-host start: call jax.distributed.initialize first (arguments below, or "
        "detected on TPU/SLURM/Open MPI clusters)",
    )
    t.add_argument("--coordinator", default=None, help="host:port of process 0 (--distributed)")
    t.add_argument("--num-processes", type=int, default=None, help="processes (--distributed)")
    t.add_argument("--process-id", type=int, default=None, help="this process (--distributed)")
    t.add_argument("--ema-decay", type=float, default=0.0, help="EMA decay, 0 = off")
    t.add_argument("--checkpoint-every", type=int, default=1000, help="steps between checkpoints")
    t.add_argument("--out", required=True, help="run folder (config + checkpoints)")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser(
        "sample",
        help="sample from the latest checkpoint in --out",
        description="Sample from the latest checkpoint in --out (EMA weights if trained with "
        "them). Deterministic given --seed and the checkpoint. Writes --save (.npy) and a PNG.",
    )
    s.add_argument("--out", required=True, help="run folder written by jfm train")
    s.add_argument("--n", type=int, required=True, help="number of samples")
    s.add_argument("--seed", type=int, default=0, help="PRNG seed for the source noise")
    s.add_argument("--save", required=True, help="output .npy file (a .png is written beside)")
    s.add_argument("--solver", choices=SOLVERS, default="dopri5", help="diffrax solver")
    s.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance (adaptive)")
    s.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance (adaptive)")
    s.add_argument(
        "--sample-steps", type=int, default=None, help="fixed steps instead of adaptive stepping"
    )
    s.add_argument(
        "--devices",
        type=int,
        default=None,
        help="split the samples over the first N devices (default: the most devices that "
        "divide --n); results agree across device counts to float round-off",
    )
    s.set_defaults(func=cmd_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jfm`` command."""
    parser = make_parser()
    a = parser.parse_args(argv)
    for name in ("steps", "batch", "n", "hidden", "depth", "devices"):
        v = getattr(a, name, None)
        if v is not None and v <= 0:
            parser.error(f"--{name} must be positive; got {v}")
    if getattr(a, "command", None) == "sample" and a.solver == "euler" and not a.sample_steps:
        parser.error("--solver euler has no error estimate: pass --sample-steps N")
    if getattr(a, "dataset", None) is not None:
        import jfm

        valid = sorted(jfm.data.DATASETS) + ["digits"]
        if a.dataset not in valid:
            raise SystemExit(
                f"jfm: unknown --dataset {a.dataset!r}; choose one of: {', '.join(valid)}"
            )
    os.environ.setdefault("MPLBACKEND", "Agg")
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
