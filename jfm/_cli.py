"""The ``jfm`` command line: ``demo``, ``train``, ``sample``, ``likelihood`` and ``bench``.

``jfm train --dataset NAME | --data FILE.npy|FILE.npz --steps N --out DIR`` trains a flow
matching (or score matching) model on every visible device (data parallel over a
``jax.sharding`` mesh; ``--devices K`` for the first ``K``, ``--fsdp`` to split the state,
``--distributed`` for a multi-host start), evaluates it on held-out data, and
checkpoints into ``DIR`` (keeping the latest checkpoints and the best by held-out loss;
never a non-finite one; a checkpoint on SIGTERM/SIGINT); running it again resumes;
``jfm sample --out DIR --n N --seed S --save FILE.npy`` samples from a checkpoint in
``DIR``, deterministically given the seed, and writes a PNG beside the ``.npy``;
``jfm likelihood --out DIR --save LOGP.npy`` writes per-example log-densities;
``jfm bench`` sweeps ODE solvers on an exact problem or a trained field;
``jfm demo`` trains and samples a built-in 2-D dataset in well under a minute on a CPU.

Each subcommand is one ``_add_<name>_parser`` function and one ``cmd_<name>`` function;
the helpers they share (data, model, path, field) come first.
"""

import argparse
import hashlib
import json
import math
import os
import sys
import time
import zipfile
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

SOLVERS = ("euler", "heun", "midpoint", "ralston", "bosh3", "tsit5", "dopri5", "dopri8")
#: jfm's few-NFE solvers for affine paths (fixed steps: --steps N, on the --grid).
FEW_NFE = (
    "ddim",
    "dpmpp-2m",
    "dpmpp-3m",
    "dpmpp-2s",
    "unipc",
    "unipc-3",
    "unipc-bh1",
    "deis-2",
    "deis-3",
    "edm",
)
GRID_KINDS = ("uniform", "edm", "logsnr", "shift", "cosine")
PATHS = ("condot", "cosine", "polynomial", "vp", "ve")
COUPLINGS = ("independent", "exact-ot", "sinkhorn")
LOSSES = ("cfm", "dsm")
PREDS = ("velocity", "x1", "x0", "score")
TIME_SAMPLERS = ("uniform", "logit-normal")
LR_SCHEDULES = ("constant", "cosine")
NAN_POLICIES = ("raise", "skip_step")
CONFIG_NAME = "config.json"
CHECKPOINT_SUBDIR = "checkpoints"
#: The evaluation `jfm train` ranks checkpoints by (the mean loss on held-out data).
EVAL_METRIC = "heldout_loss"
#: Rows of held-out data in that evaluation (at most).
EVAL_ROWS = 1024
#: The fewest rows `--data` may hold (a training and a held-out split of them).
MIN_ROWS = 10
#: How far from t = 0 / t = 1 a solve stops where the model's conversion to a velocity
#: is singular (x0/score predictions at alpha = 0; x1 predictions and VP at sigma = 0).
T_EPS = 1e-3

#: The flags of `jfm train` that define a run, with their defaults (argparse sees None,
#: so that flags given on the command line can be told from the saved ones on resume).
TRAIN_DEFAULTS: dict[str, Any] = dict(
    dataset="moons",
    data=None,
    data_key=None,
    holdout=0.1,
    model="auto",
    unet_config="tiny",
    path="condot",
    poly_n=2.0,
    hidden=256,
    depth=4,
    steps=10000,
    batch=1024,
    lr=1e-3,
    lr_schedule="constant",
    warmup_steps=0,
    clip_grad_norm=None,
    loss="cfm",
    pred=None,
    coupling="independent",
    sinkhorn_epsilon=0.05,
    time_sampler="uniform",
    logit_mean=0.0,
    logit_std=1.0,
    ema_decay=0.0,
    seed=0,
    checkpoint_every=1000,
    eval_every=None,
    keep=3,
    nan_policy="raise",
)
#: Saved flags that may change on resume: they decide when to save and what to do on a
#: non-finite step, not the training itself (``steps`` also, unless the rate follows
#: a cosine over them).
RESUME_MAY_CHANGE = ("steps", "checkpoint_every", "eval_every", "keep", "nan_policy")
#: Keys a saved config may lack (runs written by older versions), with the value that
#: reproduces them.
_OLD_RUN_DEFAULTS: dict[str, Any] = dict(
    model="mlp", data=None, data_key=None, holdout=0.1, lr_schedule="constant",
    warmup_steps=0, clip_grad_norm=None, loss="cfm", pred="velocity", coupling="independent",
    sinkhorn_epsilon=0.05, time_sampler="uniform", logit_mean=0.0, logit_std=1.0,
    eval_every=None, keep=3, nan_policy="raise", unet_config="tiny", poly_n=2.0,
)  # fmt: skip


def _exit(msg: str):
    raise SystemExit(f"jfm: {msg}")


# -- solvers, paths, fields ----------------------------------------------------------------


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


def _time_window(cfg: dict) -> tuple[float, float]:
    """``(t0, t1)`` of a solve with the run's model: ``[0, 1]`` but where the conversion
    of its prediction to a velocity is singular (VP's velocity at ``t = 1`` too)."""
    pred = cfg.get("pred", "velocity")
    t0 = T_EPS if pred in ("x0", "score") else 0.0
    t1 = 1.0 - T_EPS if cfg["path"] == "vp" or pred == "x1" else 1.0
    return t0, t1


def _field(apply, params, cfg: dict, path):
    """The per-example velocity field of a trained model (converted from ``--pred``)."""
    import jfm

    pred = cfg.get("pred", "velocity")
    if pred == "velocity":
        return jfm.field_from_model(apply, params)
    return jfm.field_from_model(apply, params, path=path, kind=pred)


# -- data ----------------------------------------------------------------------------------


class _Data(NamedTuple):
    """A run's data: draws for training, fresh or held-out draws, a fixed eval batch."""

    event_shape: tuple[int, ...]
    batch_fn: Any  # (key, n) -> [n, *event]
    held_out: Any  # (key, n) -> [n, *event]
    eval_rows: Any  # [M, *event], the fixed held-out batch of the evaluation


def _read_array(file: str, key: str | None, flag: str = "--data"):
    """The array in ``file`` (``.npy``, or the ``key`` array of an ``.npz``), never
    unpickled."""
    import numpy as np

    import jfm

    p = Path(file)
    if not p.is_file():
        _exit(f"{flag} {file}: no such file.")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        if key is not None:
            _exit(f"--data-key names an array of an .npz archive; {file} is a .npy file.")
        try:
            arr = np.load(p, allow_pickle=False)
        except ValueError as e:
            if "pickle" in str(e):
                _exit(
                    f"{flag} {file} holds Python objects, which would need unpickling "
                    "(refused). Save a numeric array with np.save."
                )
            _exit(f"{flag} {file} could not be read as a .npy array: {e}")
        except OSError as e:
            _exit(f"{flag} {file} could not be read as a .npy array: {e}")
        if not isinstance(arr, np.ndarray):
            _exit(f"{flag} {file} is not a .npy array.")
        return arr
    if suffix != ".npz":
        _exit(f"{flag} must be a .npy or .npz file; got {file}.")
    try:
        with np.load(p, allow_pickle=False) as archive:
            names = list(archive.files)
    except (ValueError, OSError, zipfile.BadZipFile, AttributeError) as e:
        _exit(f"{flag} {file} could not be read as an .npz archive: {e}")
    if key is None:
        if len(names) != 1:
            _exit(
                f"{flag} {file} holds {len(names)} arrays {names}: name the one to use with "
                "--data-key."
            )
        key = names[0]
    if key not in names:
        _exit(f"--data-key {key!r} is not in {file}; it holds {names}.")
    try:
        return jfm.data.load_npz(p, key)
    except (ValueError, TypeError) as e:
        _exit(f"{flag} {file}: {e}")


def _check_rows(arr, file: str, flag: str = "--data", min_rows: int = 1):
    """``arr`` as float32 ``[N, *event]`` (grey images get a channel axis), checked."""
    import numpy as np

    if not np.issubdtype(arr.dtype, np.floating):
        _exit(
            f"{flag} {file}: the array must be floating (float16/32/64); got dtype {arr.dtype}. "
            "Convert it first, e.g. 8-bit images to [-1, 1] with x / 127.5 - 1 "
            "(jfm.data.to_unit_range)."
        )
    if arr.ndim == 3:
        arr = arr[..., None]  # [N, H, W] grey images
    if arr.ndim not in (2, 4):
        _exit(
            f"{flag} {file}: the array must be [N, D] vectors or [N, H, W] / [N, H, W, C] "
            f"images (channels last); got shape {arr.shape}."
        )
    if arr.shape[0] < min_rows:
        _exit(f"{flag} {file}: needs at least {min_rows} rows (examples); got {arr.shape[0]}.")
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(arr.shape[0], -1).any(axis=1))
        _exit(
            f"{flag} {file}: holds {int(bad.sum())} non-finite values (NaN or inf), in "
            f"{rows.size} rows (the first: row {int(rows[0])}). Remove or fix them."
        )
    return arr.astype(np.float32)


def _file_digest(file: str) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _split(n: int, holdout: float, seed: int):
    """Row indices ``(train, held_out)`` of a seeded permutation; at least one of each."""
    import numpy as np

    perm = np.random.default_rng(seed).permutation(n)
    n_held = min(n - 1, max(1, round(holdout * n)))
    return perm[n_held:], perm[:n_held]


def _file_data(cfg: dict) -> _Data:
    import jax.numpy as jnp
    import jax.random as jr

    arr = _check_rows(_read_array(cfg["data"], cfg["data_key"]), cfg["data"], min_rows=MIN_ROWS)
    train_idx, held_idx = _split(arr.shape[0], cfg["holdout"], cfg["seed"])
    train, held = jnp.asarray(arr[train_idx]), jnp.asarray(arr[held_idx])

    def batch_fn(key, n):
        return train[jr.randint(key, (n,), 0, train.shape[0])]

    def held_out(key, n):
        if n >= held.shape[0]:
            return held
        return held[jr.permutation(key, held.shape[0])[:n]]

    return _Data(tuple(arr.shape[1:]), batch_fn, held_out, held[:EVAL_ROWS])


def _dataset(cfg: dict) -> _Data:
    """The run's data: ``--data FILE`` (split into training and held-out rows) or a
    built-in dataset (fresh draws; the held-out ones from their own key)."""
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    import jfm

    if cfg.get("data"):
        return _file_data(cfg)
    name = cfg["dataset"]
    eval_key = jr.fold_in(jr.key(cfg["seed"]), 2**31 - 1)  # apart from the training keys
    if name == "digits":
        images = jnp.asarray(jfm.data.digits(dtype=jnp.float32))

        def batch_fn(key, n):
            idx = jr.randint(key, (n,), 0, images.shape[0])
            return images[idx]

    else:
        if name not in jfm.data.DATASETS:
            valid = ", ".join(sorted(jfm.data.DATASETS) + ["digits"])
            _exit(f"unknown --dataset {name!r}; choose one of: {valid}")
        gen = jfm.data.DATASETS[name]

        def batch_fn(key, n):
            return gen(n, key=key, dtype=jnp.float32)

    eval_rows = jax.jit(batch_fn, static_argnums=1)(eval_key, EVAL_ROWS)  # one compilation
    return _Data(tuple(eval_rows.shape[1:]), batch_fn, batch_fn, eval_rows)


def _event_shape(cfg: dict) -> tuple[int, ...]:
    if cfg.get("event_shape"):
        return tuple(cfg["event_shape"])
    return (8, 8, 1) if cfg["dataset"] == "digits" else (2,)


# -- models, losses, optimizers ----------------------------------------------------------


def _resolve_model(cfg: dict, event_shape) -> str:
    """``--model auto``: the MLP for vectors, the U-Net for images."""
    model = cfg.get("model", "mlp")
    if model == "auto":
        model = "unet" if len(event_shape) == 3 else "mlp"
    if model == "unet":
        if len(event_shape) != 3:
            what = cfg["data"] if cfg.get("data") else repr(cfg["dataset"])
            _exit(
                f"--model unet needs image data (an image dataset such as --dataset digits, "
                f"or [N, H, W, C] arrays); {what} has event shape {tuple(event_shape)}."
            )
        import jfm

        levels = len(jfm.models.unet_config(cfg["unet_config"])["channel_mult"])
        f = 2 ** (levels - 1)
        if event_shape[0] % f or event_shape[1] % f:
            _exit(
                f"--unet-config {cfg['unet_config']} halves the images {levels - 1} time(s): "
                f"height and width must be multiples of {f}; got images of shape "
                f"{tuple(event_shape)}. Pad or crop them."
            )
    return model


def _build_model(cfg: dict, event_shape, seed: int):
    from flax import nnx

    import jfm

    if cfg.get("model", "mlp") == "unet":
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


def _optimizer(cfg: dict):
    """Adam, at a constant rate (independent of --steps, so a run can be extended) or
    a cosine decay over --steps, after a linear warm-up; gradients clipped if asked."""
    import optax

    lr, warmup = cfg["lr"], cfg.get("warmup_steps", 0)
    if cfg.get("lr_schedule", "constant") == "cosine":
        rate = optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup_steps=warmup, decay_steps=max(cfg["steps"], warmup + 1)
        )
    elif warmup:
        rate = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
        )
    else:
        rate = lr
    opt = optax.adam(rate)
    if cfg.get("clip_grad_norm") is not None:
        opt = optax.chain(optax.clip_by_global_norm(cfg["clip_grad_norm"]), opt)
    return opt


def _loss_fn(cfg: dict, path):
    """The per-example loss of ``--loss``/``--pred``/``--coupling``/``--time-sampler``."""
    import jfm

    time_sampler = jfm.uniform_time
    if cfg.get("time_sampler", "uniform") == "logit-normal":
        time_sampler = partial(jfm.logit_normal_time, mean=cfg["logit_mean"], std=cfg["logit_std"])
    pred = cfg.get("pred", "velocity")
    coupling = cfg.get("coupling", "independent")
    if cfg.get("loss", "cfm") == "dsm":
        return partial(jfm.dsm_loss, path=path, kind=pred, time_sampler=time_sampler)
    pairing = {
        "independent": None,
        "exact-ot": jfm.exact_ot_coupling,
        "sinkhorn": partial(jfm.sinkhorn_coupling, epsilon=cfg.get("sinkhorn_epsilon", 0.05)),
    }[coupling]
    kw = {} if pairing is None else dict(coupling=pairing)
    return partial(jfm.cfm_loss, path=path, kind=pred, time_sampler=time_sampler, **kw)


def _mesh(devices: int | None, n: int | None = None):
    """The data mesh over the first ``devices`` devices (all when None).

    With ``n`` (a batch size) and no explicit ``devices``, the largest device count that
    divides ``n`` is used, so any ``n`` works.
    """
    import jax

    import jfm

    available = jax.device_count()
    if devices is not None and devices > available:
        _exit(f"--devices {devices} but only {available} device(s) are visible.")
    if devices is None and n is not None:
        devices = max(d for d in range(1, available + 1) if n % d == 0)
    return jfm.distributed.data_mesh(devices)


def _batch_of(batch_fn, n, key):
    return batch_fn(key, n)


def _eval_fn(loss_fn, apply, rows, ema: bool, seed: int):
    """``state -> {EVAL_METRIC: mean loss}`` on the fixed held-out ``rows``, fixed key."""
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    key = jr.fold_in(jr.key(seed), 2**31 - 2)

    @jax.jit
    def heldout_loss(params):
        return jnp.mean(loss_fn(apply, params, rows, key=key))

    def eval_fn(state):
        return {EVAL_METRIC: heldout_loss(state.ema_params if ema else state.params)}

    return eval_fn


def _train(cfg: dict, out: Path, *, progress: bool = True, devices=None, fsdp: bool = False):
    """Train per ``cfg`` into ``out``; returns (apply, state, history, data, path)."""
    import signal

    import jax
    import jax.random as jr
    from jax.sharding import NamedSharding, PartitionSpec

    import jfm

    data = _dataset(cfg)
    path = _path(cfg)
    apply, params = _build_model(cfg, data.event_shape, cfg["seed"])
    optimizer = _optimizer(cfg)
    ema = cfg["ema_decay"] > 0
    state = jfm.init_train_state(params, optimizer, ema=ema)
    loss_fn = _loss_fn(cfg, path)
    step = jfm.make_train_step(
        apply, optimizer, loss_fn, ema_decay=cfg["ema_decay"] if ema else None
    )
    mesh = _mesh(devices)
    n_dev = mesh.shape["data"]
    if cfg["batch"] % n_dev:
        _exit(
            f"--batch {cfg['batch']} must be a multiple of the {n_dev} devices in use "
            "(or pass --devices)."
        )
    # Data parallel over the mesh: the state replicated (or split with --fsdp), each
    # device drawing and processing its own slice of every batch.
    state = jax.device_put(state, jfm.distributed.state_sharding(state, mesh, fsdp=fsdp))
    step = jfm.distributed.make_sharded_train_step(step, mesh, state, fsdp=fsdp)
    rows = jax.device_put(data.eval_rows, NamedSharding(mesh, PartitionSpec()))
    key = jr.key(cfg["seed"])
    state, history = jfm.fit(
        step,
        state,
        jfm.distributed.sharded_batch_fn(partial(_batch_of, data.batch_fn, cfg["batch"]), mesh),
        steps=cfg["steps"],
        key=key,
        eval_fn=_eval_fn(loss_fn, apply, rows, ema, cfg["seed"]),
        eval_every=cfg.get("eval_every") or cfg["checkpoint_every"],
        checkpoint_dir=str(out / CHECKPOINT_SUBDIR),
        checkpoint_every=cfg["checkpoint_every"],
        keep=cfg.get("keep", 3),
        progress=progress,
        nan_policy=cfg.get("nan_policy", "raise"),
        best_metric=EVAL_METRIC,
        stop_signals=(signal.SIGTERM, signal.SIGINT),
    )
    return apply, state, history, data, path


def _restore(out: Path, cfg: dict, which: str = "latest"):
    """``(apply, sampling params, state)`` of the ``which`` checkpoint ("latest", "best")."""
    import jfm

    event_shape = _event_shape(cfg)
    apply, params = _build_model(cfg, event_shape, cfg["seed"])
    ema = cfg["ema_decay"] > 0
    like = jfm.init_train_state(params, _optimizer(cfg), ema=ema)
    ckpt = str(out / CHECKPOINT_SUBDIR)
    step = None
    if which == "best":
        step = jfm.best_step(ckpt, EVAL_METRIC)
        if step is None:
            _exit(f"{out} holds no evaluated checkpoint (use --checkpoint latest).")
    if jfm.latest_step(ckpt) is None:
        _exit(f"{out} holds no checkpoint yet: train into it first (jfm train).")
    state = jfm.restore_checkpoint(ckpt, like, step=step)
    return apply, (state.ema_params if ema else state.params), state


def _few_nfe_solver(name: str, path, churn: float, steps: int):
    import jfm

    if not isinstance(path, jfm.AffinePath):
        raise SystemExit(f"jfm: --solver {name} needs an affine path (the run's path is not).")
    table = {
        "ddim": lambda: jfm.DPMSolverPP(path, 1),
        "dpmpp-2m": lambda: jfm.DPMSolverPP(path, 2),
        "dpmpp-3m": lambda: jfm.DPMSolverPP(path, 3),
        "dpmpp-2s": lambda: jfm.DPMSolverPP2S(path),
        "unipc": lambda: jfm.UniPC(path, 2),
        "unipc-3": lambda: jfm.UniPC(path, 3),
        "unipc-bh1": lambda: jfm.UniPC(path, 2, variant="bh1"),
        "deis-2": lambda: jfm.DEIS(path, 2),
        "deis-3": lambda: jfm.DEIS(path, 3),
        # EDM's S_churn over N steps: gamma = min(S_churn / N, sqrt(2) - 1) per step.
        "edm": lambda: jfm.EDM(path, gamma=min(churn / steps, 2**0.5 - 1)),
    }
    return table[name]()


def _sample(
    apply,
    params,
    cfg,
    n: int,
    seed: int,
    solver: str,
    rtol,
    atol,
    steps,
    saveat=None,
    mesh=None,
    grid: str = "uniform",
    shift: float = 3.0,
    rho: float = 7.0,
    churn: float = 0.0,
):
    import jax.numpy as jnp
    import jax.random as jr

    import jfm

    event_shape = _event_shape(cfg)
    path = _path(cfg)
    field = _field(apply, params, cfg, path)
    x0 = path.prior_sample((n, *event_shape), key=jr.key(seed), dtype=jnp.float32)
    if mesh is not None:  # split the batch over the devices
        field, x0 = jfm.distributed.replicate(field, mesh), jfm.distributed.shard_batch(x0, mesh)
    t0, t1 = _time_window(cfg)
    if solver in FEW_NFE or grid != "uniform":
        if not steps:
            raise SystemExit(
                f"jfm: --solver {solver} / --grid {grid} take fixed steps: pass --steps N"
            )
        ts = jfm.time_grid(grid, steps, path=path, t0=t0, t1=t1, shift=shift, rho=rho)
        if solver in FEW_NFE:
            sv = _few_nfe_solver(solver, path, churn, steps)
            key = jr.key(seed + 1) if sv.stochastic else None
            return jfm.sample_ode(field, x0, solver=sv, ts=ts, saveat=saveat, key=key)
        return jfm.sample_ode(field, x0, solver=_solver(solver), ts=ts, saveat=saveat)
    kw = dict(steps=steps) if steps else dict(rtol=rtol, atol=atol)
    return jfm.sample_ode(field, x0, solver=_solver(solver), t0=t0, t1=t1, saveat=saveat, **kw)


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
    import numpy as np

    import jfm

    if samples.ndim == 2 and samples.shape[1] == 2:
        fig, ax = plt.subplots(figsize=(4, 4))
        _plot_2d(ax, samples, title)
        fig.tight_layout()
        fig.savefig(png_path, dpi=120)
        plt.close(fig)
    elif samples.ndim == 4:
        scale = max(1, 32 // samples.shape[1])  # 8x8 digits drawn at 32x32
        jfm.data.save_image_grid(samples[:100].clip(-1, 1), str(png_path), scale=scale)
    else:  # vectors of another dimension: the first two coordinates
        fig, ax = plt.subplots(figsize=(4, 4))
        _plot_2d(ax, np.asarray(samples)[:, :2], f"{title} (coordinates 0, 1)")
        fig.tight_layout()
        fig.savefig(png_path, dpi=120)
        plt.close(fig)


def _load_config(out: Path) -> dict:
    f = out / CONFIG_NAME
    if not f.exists():
        _exit(f"{out} holds no {CONFIG_NAME}: train into it first (jfm train).")
    cfg = json.loads(f.read_text())
    for k, v in _OLD_RUN_DEFAULTS.items():
        cfg.setdefault(k, v)
    return cfg


def _run_label(cfg: dict) -> str:
    return Path(cfg["data"]).name if cfg.get("data") else cfg["dataset"]


# -- jfm train -------------------------------------------------------------------------------


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _train_config(a, out: Path) -> tuple[dict, bool]:
    """The run's config: the saved one (resume) with the flags given, else the defaults
    with them; conflicting flags are refused. Returns ``(cfg, resuming)``."""
    given = {k: getattr(a, k) for k in TRAIN_DEFAULTS if getattr(a, k, None) is not None}
    if given.get("data") is not None:
        if "dataset" in given:
            _exit("pass either --dataset (built-in data) or --data FILE, not both.")
        given["data"] = str(Path(given["data"]).resolve())
    elif "data_key" in given:
        _exit("--data-key names an array of the --data FILE.npz; pass --data too.")
    if (out / CONFIG_NAME).exists():
        cfg = _load_config(out)
        may_change = set(RESUME_MAY_CHANGE)
        if cfg.get("lr_schedule") == "cosine":
            may_change.discard("steps")  # the rate follows a cosine over the steps
        if given.get("model") == "auto":
            given.pop("model")  # resolved when the run was made
        if cfg.get("data") and "dataset" in given:  # trained on a file, not a dataset
            given.pop("dataset")
            conflicts = [f"--dataset {a.dataset!r} (saved: --data {cfg['data']})"]
        else:
            conflicts = []
        conflicts += [
            f"{_flag(k)} {v!r} (saved: {cfg.get(k)!r})"
            for k, v in given.items()
            if k not in may_change and cfg.get(k) != v
        ]
        if conflicts:
            _exit(
                f"{out} holds a run with another configuration: {', '.join(conflicts)}. "
                "Resume with the saved flags (or leave them out) or use a new --out."
            )
        cfg.update({k: v for k, v in given.items() if k in may_change})
        if cfg.get("data"):
            digest = _file_digest(cfg["data"]) if Path(cfg["data"]).is_file() else None
            if digest != cfg.get("data_sha256"):
                _exit(
                    f"--data {cfg['data']} is missing or changed since {out} was trained on "
                    "it; restore the file or use a new --out."
                )
        return cfg, True
    cfg = {**TRAIN_DEFAULTS, **given}
    if cfg["pred"] is None:
        cfg["pred"] = "score" if cfg["loss"] == "dsm" else "velocity"
    if cfg["data"] is not None:
        cfg["dataset"] = None
        arr = _check_rows(_read_array(cfg["data"], cfg["data_key"]), cfg["data"], min_rows=MIN_ROWS)
        cfg["event_shape"] = list(arr.shape[1:])
        cfg["data_rows"] = int(arr.shape[0])
        cfg["data_sha256"] = _file_digest(cfg["data"])
    cfg["model"] = _resolve_model(cfg, _event_shape(cfg))
    _check_train_config(cfg)
    return cfg, False


def _check_train_config(cfg: dict):
    if cfg["loss"] == "dsm" and cfg["coupling"] != "independent":
        _exit(
            f"--loss dsm regresses on the score of independent noise; --coupling "
            f"{cfg['coupling']} pairs noise and data (use --loss cfm)."
        )
    if not 0.0 < cfg["holdout"] < 1.0:
        _exit(f"--holdout must lie in (0, 1); got {cfg['holdout']}.")
    if cfg["clip_grad_norm"] is not None and not cfg["clip_grad_norm"] > 0:
        _exit(f"--clip-grad-norm must be positive; got {cfg['clip_grad_norm']}.")
    if cfg["warmup_steps"] < 0:
        _exit(f"--warmup-steps must be >= 0; got {cfg['warmup_steps']}.")
    if not cfg["lr"] > 0:
        _exit(f"--lr must be positive; got {cfg['lr']}.")
    if not 0.0 <= cfg["ema_decay"] < 1.0:
        _exit(f"--ema-decay must lie in [0, 1); got {cfg['ema_decay']}.")
    if not cfg["sinkhorn_epsilon"] > 0:
        _exit(f"--sinkhorn-epsilon must be positive; got {cfg['sinkhorn_epsilon']}.")
    if not cfg["logit_std"] > 0:
        _exit(f"--logit-std must be positive; got {cfg['logit_std']}.")


def cmd_train(a) -> int:
    import signal

    if a.distributed:
        import jfm

        # Must come before any other JAX call; arguments not given are detected from the
        # cluster environment (TPU, SLURM, Open MPI).
        jfm.distributed.initialize(a.coordinator, a.num_processes, a.process_id)
    import jfm

    out = Path(a.out)
    cfg, resuming = _train_config(a, out)
    if resuming:
        print(f"resuming from {out}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_NAME).write_text(json.dumps(cfg, indent=2))
    t = time.perf_counter()
    try:
        _, state, history, *_ = _train(
            cfg, out, progress=not a.no_progress, devices=a.devices, fsdp=a.fsdp
        )
    except jfm.TrainingInterrupted as e:
        name = "a preemption notice" if e.signum is None else signal.Signals(e.signum).name
        print(
            f"jfm: stopped by {name} at step {e.step}; its checkpoint is saved in {out}. Run "
            "the same command to resume.",
            file=sys.stderr,
        )
        return 128 + (e.signum or signal.SIGTERM)
    except jfm.NonFiniteError as e:
        good = (
            f"the last good checkpoint, of step {e.checkpoint_step}, is kept in {out}"
            if e.checkpoint_step is not None
            else "no checkpoint was written"
        )
        _exit(
            f"training diverged: non-finite {e.metric} at step {e.step}; {good}. Lower --lr, "
            "pass --clip-grad-norm, or --nan-policy skip_step (allowed on resume)."
        )
    losses = history.get("loss", [])
    last = f"{losses[-1]:.4f}" if len(losses) else "n/a"
    evals = history.get("eval", [])
    held = f"; held-out loss {evals[-1][EVAL_METRIC]:.4f}" if evals else ""
    skipped = len(history.get("skipped", []))
    skipped = f"; {skipped} non-finite step(s) skipped" if skipped else ""
    print(
        f"trained to step {int(state.step)} in {time.perf_counter() - t:.1f}s; last loss "
        f"{last}{held}{skipped}"
    )
    return 0


# -- jfm sample ------------------------------------------------------------------------------


def cmd_sample(a) -> int:
    import numpy as np

    out = Path(a.out)
    cfg = _load_config(out)
    apply, params, state = _restore(out, cfg, a.checkpoint)
    mesh = _mesh(a.devices, a.n)
    res = _sample(
        apply,
        params,
        cfg,
        a.n,
        a.seed,
        a.solver,
        a.rtol,
        a.atol,
        a.sample_steps,
        mesh=mesh,
        grid=a.grid,
        shift=a.shift,
        rho=a.rho,
        churn=a.churn,
    )
    x = np.asarray(res.x1)
    save = Path(a.save)
    save.parent.mkdir(parents=True, exist_ok=True)
    np.save(save, x)
    png = save.with_suffix(".png")
    _save_samples_png(x, png, f"{_run_label(cfg)}: {a.n} samples (step {int(state.step)})")
    n_dev = mesh.shape["data"]
    print(f"wrote {save} {x.shape} and {png}; NFE {int(res.nfe)}; {n_dev} device(s)")
    return 0


# -- jfm likelihood --------------------------------------------------------------------------


def _likelihood_data(a, cfg: dict):
    """The points to evaluate: ``--data``, or the run's held-out data."""
    import jax.random as jr
    import numpy as np

    if a.data is not None:
        x = _check_rows(_read_array(a.data, a.data_key), a.data)
        if tuple(x.shape[1:]) != _event_shape(cfg):
            _exit(
                f"--data {a.data}: rows of shape {tuple(x.shape[1:])}, but the run was trained "
                f"on rows of shape {_event_shape(cfg)}."
            )
        return x[: a.n] if a.n else x, a.data
    if a.data_key is not None:
        _exit("--data-key names an array of the --data FILE.npz; pass --data too.")
    data = _dataset(cfg)
    n = a.n or 1000
    x = data.held_out(jr.fold_in(jr.key(cfg["seed"]), 2**31 - 3), n)
    what = "held-out rows of the run's data" if cfg.get("data") else f"fresh {cfg['dataset']}"
    return np.asarray(x), what


def cmd_likelihood(a) -> int:
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np
    from tqdm import tqdm

    import jfm

    if a.solver == "euler" and not a.steps:
        _exit("--solver euler has no error estimate: pass --steps N")
    out = Path(a.out)
    cfg = _load_config(out)
    apply, params, state = _restore(out, cfg, a.checkpoint)
    x, what = _likelihood_data(a, cfg)
    path = _path(cfg)
    field = _field(apply, params, cfg, path)
    t0, t1 = _time_window(cfg)
    if a.divergence == "hutchinson":
        divergence = jfm.HutchinsonDivergence(probes=a.probes)
    else:
        divergence = jfm.ExactDivergence()
    control = dict(steps=a.steps) if a.steps else dict(rtol=a.rtol, atol=a.atol)

    def batch_logp(xb, key):  # jfm.log_prob compiles once per batch shape
        if a.divergence == "hutchinson":
            control["key"] = key
        logp, sol = jfm.log_prob(
            field, xb, solver=_solver(a.solver), path=path, divergence=divergence, t0=t0,
            t1=t1, **control,
        )  # fmt: skip
        return logp, sol.nfe

    n, bs = x.shape[0], min(a.batch_size, x.shape[0])
    logps, nfes = [], []
    key = jr.key(a.seed)
    for start in tqdm(range(0, n, bs), disable=a.no_progress, unit="batch", desc="log p"):
        xb = x[start : start + bs]
        pad = bs - xb.shape[0]  # the last batch padded to the same shape (one compilation);
        if pad:  # per-example solves (batch="vmap"): the padding changes no value
            xb = np.concatenate([xb, np.repeat(xb[:1], pad, axis=0)])
        logp, nfe = batch_logp(jnp.asarray(xb), jr.fold_in(key, start))
        logps.append(np.asarray(logp)[: bs - pad])
        nfes.append(np.asarray(nfe)[: bs - pad])
    logp, nfe = np.concatenate(logps), np.concatenate(nfes)
    save = Path(a.save)
    save.parent.mkdir(parents=True, exist_ok=True)
    np.save(save, logp)
    d = math.prod(x.shape[1:])
    mean, se = float(np.mean(logp)), float(np.std(logp, ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    bpd, bpd_se = -mean / (d * math.log(2)), se / (d * math.log(2))
    print(
        f"log p on {n} points ({what}; step {int(state.step)}): {mean:.4f} +- {se:.4f} nats "
        f"(mean +- standard error); {bpd:.4f} +- {bpd_se:.4f} bits/dim (D={d}); mean NFE "
        f"{float(np.mean(nfe)):.0f}; wrote {save}"
    )
    return 0


# -- jfm bench -------------------------------------------------------------------------------


def _bench_problem(a):
    """The problem of ``jfm bench``: a named exact one, or a trained run's field."""
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    import jfm

    key = jr.key(a.seed)
    if a.out is not None:
        out = Path(a.out)
        cfg = _load_config(out)
        apply, params, state = _restore(out, cfg, a.checkpoint)
        params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
        path = _path(cfg)
        field = _field(apply, params, cfg, path)
        t0, t1 = _time_window(cfg)
        x0 = path.prior_sample((a.n, *_event_shape(cfg)), key=key, dtype=jnp.float64)
        ref = jfm.bench.reference_solution(field, x0, rtol=a.ref_tol, atol=a.ref_tol, t0=t0, t1=t1)
        name = f"{_run_label(cfg)} model (step {int(state.step)})"
        return jfm.bench.Problem(name, field, x0, ref, t0, t1)
    path = jfm.AffinePath({"condot": jfm.CondOT(), "cosine": jfm.Cosine(), "vp": jfm.VP()}[a.path])
    t1 = 1.0 - T_EPS if a.path == "vp" else 1.0  # VP's velocity is infinite at t = 1
    kx, kp, km = jr.split(key, 3)
    x0 = jr.normal(kx, (a.n, a.dim), jnp.float64)
    pts = jr.normal(kp, (min(a.n, 32), a.dim), jnp.float64)
    if a.problem == "gaussian":
        mean = jnp.linspace(-1.0, 1.0, a.dim, dtype=jnp.float64)
        cov = jnp.diag(jnp.linspace(0.2, 1.0, a.dim, dtype=jnp.float64))
        return jfm.bench.gaussian_problem(mean, cov, path, x0, t1=t1, logp_points=pts)
    means = 2.0 * jr.normal(km, (4, a.dim), jnp.float64)
    covs = jnp.stack([0.25 * jnp.eye(a.dim, dtype=jnp.float64)] * 4)
    gmm = jfm.GaussianMixture(means, covs, jnp.full((4,), 0.25, jnp.float64))
    return jfm.bench.mixture_problem(
        gmm, path, x0, ref_rtol=a.ref_tol, ref_atol=a.ref_tol, t1=t1, logp_points=pts
    )


def cmd_bench(a) -> int:
    import jax

    # The references are float64 solves; this is a process-level choice of the command.
    jax.config.update("jax_enable_x64", True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import jfm

    solvers = jfm.bench.default_solvers()
    if a.solvers:
        unknown = sorted(set(a.solvers) - set(solvers))
        if unknown:
            _exit(f"unknown --solvers {unknown}; choose from {list(solvers)}.")
        solvers = {k: v for k, v in solvers.items() if k in a.solvers}
    problem = _bench_problem(a)
    records = jfm.bench.solver_sweep(
        problem, solvers, steps=a.steps, tolerances=a.tolerances, repeat=a.repeat
    )
    save = Path(a.save_dir)
    save.mkdir(parents=True, exist_ok=True)
    table = jfm.bench.records_to_markdown(records)
    (save / "bench.md").write_text(f"# {problem.name}\n\n{table}\n")
    jfm.bench.write_csv(records, str(save / "bench.csv"))
    has_logp = any(r.logp_err_rms is not None and math.isfinite(r.logp_err_rms) for r in records)
    fig, axes = plt.subplots(1, 3 if has_logp else 2, figsize=(18 if has_logp else 12, 5))
    jfm.bench.plot_work_precision(records, x="nfe", ax=axes[0])
    jfm.bench.plot_work_precision(records, x="time_s", ax=axes[1])
    if has_logp:
        jfm.bench.plot_work_precision(records, x="logp_nfe", y="logp_err_rms", ax=axes[2])
    fig.tight_layout()
    fig.savefig(save / "bench.png", dpi=110)
    plt.close(fig)
    orders = jfm.bench.convergence_orders(records)
    print(table)
    if orders:
        fitted = ", ".join(f"{solver} {order:.2f}" for _, _, solver, order, _ in orders)
        print(f"fitted orders (fixed steps): {fitted}")
    print(f"wrote {save / 'bench.md'}, {save / 'bench.csv'} and {save / 'bench.png'}")
    return 0


# -- jfm demo --------------------------------------------------------------------------------


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
    cfg = {
        **TRAIN_DEFAULTS,
        **dict(
            dataset=a.dataset,
            model="mlp",
            pred="velocity",
            hidden=a.hidden,
            depth=a.depth,
            steps=a.steps,
            batch=a.batch,
            lr=a.lr,
            seed=a.seed,
            checkpoint_every=a.steps,
        ),
    }
    (out / CONFIG_NAME).write_text(json.dumps(cfg, indent=2))
    print(
        f"jfm demo: CFM on {a.dataset}, MLP {a.depth}x{a.hidden}, {a.steps} steps, "
        f"batch {a.batch}, on {jax.devices()[0].platform}"
    )
    t = time.perf_counter()
    apply, state, history, data, _ = _train(cfg, out, progress=not a.no_progress)
    held_out = data.held_out
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


# -- the parsers -----------------------------------------------------------------------------


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


def _add_demo_parser(sub):
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


def _add_train_parser(sub):
    D = TRAIN_DEFAULTS
    t = sub.add_parser(
        "train",
        help="train a model; resumes when --out holds a checkpoint",
        description="Train a flow matching (or score matching) model (an MLP on vectors, a "
        "U-Net on images) on all visible devices (data parallel; --devices to restrict), "
        "evaluate it on held-out data and checkpoint into --out: the latest --keep "
        "checkpoints and the best by held-out loss, never a non-finite one, and one on "
        "SIGTERM/SIGINT (exit code 128 + signal). Running again with the same --out resumes "
        "from the latest checkpoint, with the saved flags (flags given again must agree, "
        f"except {', '.join(_flag(k) for k in RESUME_MAY_CHANGE)}).",
        allow_abbrev=False,
    )
    g = t.add_argument_group("data")
    g.add_argument("--dataset", help=f"built-in dataset (default: {D['dataset']})")
    g.add_argument(
        "--data",
        metavar="FILE",
        help="train on your own arrays instead: a .npy file, or an .npz archive (never "
        "unpickled); [N, D] vectors or [N, H, W(, C)] images, floating and finite",
    )
    g.add_argument(
        "--data-key", help="the array of the --data .npz to use (needed if it holds several)"
    )
    g.add_argument(
        "--holdout",
        type=float,
        help=f"fraction of --data rows held out for evaluation (default: {D['holdout']})",
    )
    g = t.add_argument_group("model and path")
    g.add_argument(
        "--model",
        choices=("auto", "mlp", "unet"),
        help="network: auto (default: the MLP for vectors, the U-Net for images), mlp, unet",
    )
    g.add_argument(
        "--unet-config",
        choices=("tiny", "cifar10"),
        help="U-Net size: tiny (default; CPU, 8x8 digits) or cifar10 (35.7M parameters)",
    )
    g.add_argument("--hidden", type=int, help=f"MLP width (default: {D['hidden']})")
    g.add_argument("--depth", type=int, help=f"MLP hidden layers (default: {D['depth']})")
    g.add_argument("--path", choices=PATHS, help=f"probability path (default: {D['path']})")
    g.add_argument("--poly-n", type=float, help="exponent for --path polynomial (default: 2)")
    g = t.add_argument_group("objective")
    g.add_argument(
        "--loss",
        choices=LOSSES,
        help="cfm (conditional flow matching, default) or dsm (denoising score matching)",
    )
    g.add_argument(
        "--pred",
        choices=PREDS,
        help="what the network predicts (default: velocity for cfm, score for dsm); "
        "converted to a velocity for sampling",
    )
    g.add_argument(
        "--coupling",
        choices=COUPLINGS,
        help="pairing of noise and data in each batch: independent (default), exact-ot "
        "(OT-CFM), sinkhorn (entropic OT); cfm only",
    )
    g.add_argument(
        "--sinkhorn-epsilon",
        type=float,
        help="entropic regularisation of --coupling sinkhorn, relative to the mean cost "
        f"(default: {D['sinkhorn_epsilon']})",
    )
    g.add_argument(
        "--time-sampler", choices=TIME_SAMPLERS, help="training times (default: uniform)"
    )
    g.add_argument("--logit-mean", type=float, help="mean of --time-sampler logit-normal (0)")
    g.add_argument("--logit-std", type=float, help="std of --time-sampler logit-normal (1)")
    g = t.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, help=f"training steps (default: {D['steps']})")
    g.add_argument("--batch", type=int, help=f"batch size (default: {D['batch']})")
    g.add_argument("--lr", type=float, help=f"Adam learning rate (default: {D['lr']})")
    g.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        help="constant (default) or cosine decay to 0 over --steps (then --steps is fixed)",
    )
    g.add_argument("--warmup-steps", type=int, help="linear warm-up steps from 0 (default: 0)")
    g.add_argument(
        "--clip-grad-norm", type=float, help="clip gradients to this global L2 norm (default: off)"
    )
    g.add_argument("--ema-decay", type=float, help="EMA decay, 0 = off (default)")
    g.add_argument("--seed", type=int, help="PRNG seed (default: 0)")
    g = t.add_argument_group("checkpoints and evaluation")
    g.add_argument("--out", required=True, help="run folder (config + checkpoints)")
    g.add_argument(
        "--checkpoint-every", type=int, help=f"steps between checkpoints ({D['checkpoint_every']})"
    )
    g.add_argument(
        "--eval-every",
        type=int,
        help="steps between held-out evaluations (default: --checkpoint-every)",
    )
    g.add_argument("--keep", type=int, help=f"latest checkpoints kept (default: {D['keep']})")
    g.add_argument(
        "--nan-policy",
        choices=NAN_POLICIES,
        help="on a non-finite loss or state: raise (default: stop, exit 1, keep the last "
        "good checkpoint) or skip_step (discard that update)",
    )
    g = t.add_argument_group("devices")
    g.add_argument(
        "--devices",
        type=int,
        default=None,
        help="use the first N devices (default: all visible, data parallel)",
    )
    g.add_argument(
        "--fsdp", action="store_true", help="split parameters/optimizer state over the devices"
    )
    g.add_argument(
        "--distributed",
        action="store_true",
        help="multi-host start: call jax.distributed.initialize first (arguments below, or "
        "detected on TPU/SLURM/Open MPI clusters)",
    )
    g.add_argument("--coordinator", default=None, help="host:port of process 0 (--distributed)")
    g.add_argument("--num-processes", type=int, default=None, help="processes (--distributed)")
    g.add_argument("--process-id", type=int, default=None, help="this process (--distributed)")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.set_defaults(func=cmd_train)


def _add_sample_parser(sub):
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
    s.add_argument(
        "--solver",
        choices=SOLVERS + FEW_NFE,
        default="dopri5",
        help="a diffrax solver, or one of jfm's few-NFE solvers (fixed steps, e.g. "
        "--solver dpmpp-2m --steps 10 --grid edm)",
    )
    s.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance (adaptive)")
    s.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance (adaptive)")
    s.add_argument(
        "--sample-steps",
        "--steps",
        dest="sample_steps",
        type=int,
        default=None,
        help="fixed steps instead of adaptive stepping",
    )
    s.add_argument(
        "--grid", choices=GRID_KINDS, default="uniform", help="time grid of the fixed steps"
    )
    s.add_argument("--shift", type=float, default=3.0, help="--grid shift: the time shift")
    s.add_argument("--rho", type=float, default=7.0, help="--grid edm: EDM's exponent")
    s.add_argument(
        "--churn", type=float, default=0.0, help="--solver edm: EDM's S_churn (stochastic)"
    )
    s.add_argument(
        "--devices",
        type=int,
        default=None,
        help="split the samples over the first N devices (default: the most devices that "
        "divide --n); results agree across device counts to float round-off",
    )
    _add_checkpoint_flag(s)
    s.set_defaults(func=cmd_sample)


def _add_checkpoint_flag(p):
    p.add_argument(
        "--checkpoint",
        choices=("latest", "best"),
        default="latest",
        help="which checkpoint: latest (default) or best (lowest held-out loss)",
    )


def _add_likelihood_parser(sub):
    p = sub.add_parser(
        "likelihood",
        help="per-example log-density (nats) and bits/dim of a trained run",
        description="Log-density log p(x) of each point under the trained flow (a CNF: "
        "jfm.log_prob, integrated from the data to the noise), on --data or (without it) "
        "on held-out data of the run. Writes the per-example values (nats) to --save and "
        "prints their mean with its standard error and the bits per dimension "
        "-log p / (D log 2) of the continuous density (for 8-bit data dequantized to "
        "[-1, 1], add 7 for discrete bits/dim).",
    )
    p.add_argument("--out", required=True, help="run folder written by jfm train")
    p.add_argument("--data", metavar="FILE", help=".npy or .npz points (default: held-out data)")
    p.add_argument("--data-key", help="the array of the --data .npz to use")
    p.add_argument(
        "--n", type=int, default=None, help="evaluate the first N points (held-out: 1000)"
    )
    p.add_argument("--save", required=True, help="output .npy of per-example log p (nats)")
    p.add_argument(
        "--divergence",
        choices=("exact", "hutchinson"),
        default="exact",
        help="exact trace (default) or Hutchinson's unbiased estimate (faster in high D)",
    )
    p.add_argument("--probes", type=int, default=1, help="Hutchinson probes per point (1)")
    p.add_argument("--solver", choices=SOLVERS, default="dopri5", help="diffrax solver")
    p.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance (adaptive)")
    p.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance (adaptive)")
    p.add_argument("--steps", type=int, default=None, help="fixed steps instead of adaptive")
    p.add_argument("--batch-size", type=int, default=256, help="points per solve (256)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of the Hutchinson probes")
    _add_checkpoint_flag(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_likelihood)


def _add_bench_parser(sub):
    p = sub.add_parser(
        "bench",
        help="solver accuracy sweep (error vs NFE and time) on an exact problem or a run",
        description="Sweep the ODE solvers of jfm.bench over fixed step counts and "
        "tolerances, on a problem with a known answer (--problem: a Gaussian with a closed "
        "form, or a Gaussian mixture with a tight float64 reference; both check the "
        "log-likelihood too) or on the field of a trained run (--out; float64 Dopri8 "
        "reference). Writes bench.md, bench.csv and bench.png (work-precision) to --save-dir.",
    )
    p.add_argument("--problem", choices=("gaussian", "gmm"), default="gmm", help="exact problem")
    p.add_argument("--dim", type=int, default=2, help="dimension of the exact problem (2)")
    p.add_argument("--path", choices=("condot", "cosine", "vp"), default="condot", help="path")
    p.add_argument("--out", default=None, help="a run folder: bench its trained field instead")
    _add_checkpoint_flag(p)
    p.add_argument("--n", type=int, default=64, help="initial points (64)")
    p.add_argument("--solvers", nargs="+", default=None, help="solver names (default: all)")
    p.add_argument(
        "--steps", type=int, nargs="*", default=[4, 8, 16, 32, 64], help="fixed step counts"
    )
    p.add_argument(
        "--tolerances",
        type=float,
        nargs="*",
        default=[1e-3, 1e-5, 1e-7],
        help="rtol = atol of the adaptive solves",
    )
    p.add_argument("--ref-tol", type=float, default=1e-10, help="reference tolerance (1e-10)")
    p.add_argument("--repeat", type=int, default=3, help="timing repeats (3)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of the points")
    p.add_argument("--save-dir", default="jfm-bench", help="output folder (default: jfm-bench)")
    p.set_defaults(func=cmd_bench)


def make_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="jfm",
        description="Flow matching in JAX: train, sample, likelihood, solver benchmarks, "
        "and a one-minute demo.",
    )
    parser.add_argument("--version", action="version", version=f"jfm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo_parser(sub)
    _add_train_parser(sub)
    _add_sample_parser(sub)
    _add_likelihood_parser(sub)
    _add_bench_parser(sub)
    return parser


def _check_args(parser, a):
    for name in ("steps", "batch", "n", "hidden", "depth", "devices", "checkpoint_every"):
        v = getattr(a, name, None)
        if isinstance(v, int) and v <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive; got {v}")
    for name in ("eval_every", "keep", "probes", "batch_size", "repeat", "dim"):
        v = getattr(a, name, None)
        if v is not None and v <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive; got {v}")
    if getattr(a, "command", None) == "sample" and not a.sample_steps:
        if a.solver == "euler":
            parser.error("--solver euler has no error estimate: pass --steps N")
        if a.solver in FEW_NFE or a.grid != "uniform":
            parser.error(f"--solver {a.solver} --grid {a.grid} takes fixed steps: pass --steps N")
    if getattr(a, "command", None) == "bench" and any(n <= 0 for n in a.steps):
        parser.error(f"--steps must be positive; got {a.steps}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jfm`` command."""
    parser = make_parser()
    a = parser.parse_args(argv)
    _check_args(parser, a)
    if getattr(a, "dataset", None) is not None:
        import jfm

        valid = sorted(jfm.data.DATASETS) + ["digits"]
        if a.dataset not in valid:
            _exit(f"unknown --dataset {a.dataset!r}; choose one of: {', '.join(valid)}")
    os.environ.setdefault("MPLBACKEND", "Agg")
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
