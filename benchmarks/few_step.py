"""Few-step models against their teacher: W2 and energy distance at 1, 2 and 4 NFE.

For each task a teacher flow (CondOT conditional flow matching) is trained, then every
few-step method with the same network width, optimizer and step budget:

* ``teacher``: the teacher itself, Euler with N steps (the baseline every method must beat);
* ``reflow``: 2-rectified flow: ``--pairs`` (100k) pairs ``(x0, Phi(x0))`` from the
  teacher's Dopri5 solve (``jfm.reflow_pairs``), flow matching on them starting from the
  teacher's weights for ``--reflow-factor`` (3) times the step budget (with 1x and 20k
  pairs the 2-RF is under-fitted: its 4-step W2 stays 1.1-1.4x the teacher's Dopri5);
  Euler with N steps;
* ``reflow+distill``: the 2-RF distilled into one step: the same pairs, trained at
  ``t = 0`` only (``jfm.cfm_loss(..., t=0)``: the velocity at the source is regressed on
  ``x1 - x0``, so one Euler step is the map); 1 NFE;
* ``consistency-distill``: continuous-time consistency distillation of the teacher
  (``jfm.continuous_consistency_loss(teacher=...)``, the ``"velocity"`` map
  ``f = x + (1 - t) F``; ``--tangent-normalization c`` for sCM's normalised tangent),
  from the teacher's weights; multistep consistency sampling
  (re-noising by the path: Gaussian sources only);
* ``consistency-train``: the same objective without a teacher (conditional velocity),
  from scratch;
* ``meanflow``: ``jfm.meanflow_loss`` (average velocity ``u(z, r, t)``), from scratch;
* ``shortcut``: ``jfm.shortcut_loss`` (step-conditioned ``s(x, t, d)``), from scratch.

Tasks: N(0, I) -> 8 gaussians, -> moons, -> checkerboard; 8 gaussians -> moons (a
non-Gaussian source); digits (sklearn's 8x8 digits as 64-vectors, N(0, I) source,
the split of ``digits_images.py``: 360 test images).

Metrics: W2 (exact, ``jfm.metrics.w2``) and energy distance of ``--n-eval`` samples to
held-out data, against the noise floor (two held-out draws; for digits the mean W2 of
``n_test`` training images to the test split); the teacher's adaptive Dopri5 solve
(rtol = atol = 1e-5) is the reference. Training cost: optimizer steps and wall seconds,
with the teacher (and reflow pairs) counted for the methods built on it. Reflow reports
the normalized path energy (NPE) and straightness of 100-step Euler trajectories of the
teacher (1-RF) and of 2-RF.

Targets: at 1 NFE the best method within 1.2x of the teacher's Dopri5 W2 and at 2 NFE
within 1.1x (2-D tasks); on digits the best 1-NFE W2(gen, test) within 1.15x of the
floor W2(train, test).

Usage: python benchmarks/few_step.py [--quick] [--tasks moons,digits] [--methods ...]
       [--steps 10000] [--out benchmarks/results/few_step]
"""

import argparse
import os
import sys
import time

# Single-threaded XLA: small solves on a shared 2-core machine run faster and steadier.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import diffrax as dfx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jfm  # noqa: E402
from benchmarks._common import header, write_csv  # noqa: E402

TASKS = ("8gaussians", "moons", "checkerboard", "8gaussians->moons", "digits")
METHODS = (
    "teacher",
    "reflow",
    "reflow+distill",
    "consistency-distill",
    "consistency-train",
    "meanflow",
    "shortcut",
)
NFES = (1, 2, 4)
#: the methods' sampler kinds, and whether they are two-time models
KIND = {
    "teacher": "velocity",
    "reflow": "velocity",
    "reflow+distill": "velocity",
    "consistency-distill": "consistency",
    "consistency-train": "consistency",
    "meanflow": "mean_flow",
    "shortcut": "shortcut",
}
TWO_TIME = ("meanflow", "shortcut")
PATH = jfm.AffinePath(jfm.CondOT())


# -- data ------------------------------------------------------------------------------------


def gaussian(d):
    return lambda n, key: jr.normal(key, (n, d), jnp.float32)


def toy(name):
    gen = {"8gaussians": jfm.data.eight_gaussians, "moons": jfm.data.moons}.get(name)
    gen = gen or getattr(jfm.data, name)
    return lambda n, key: gen(n, key=key, dtype=jnp.float32)


def split_digits(n_test=360):
    x = np.asarray(jfm.data.digits(dtype=jnp.float32)).reshape(-1, 64)
    perm = np.random.default_rng(0).permutation(x.shape[0])
    return x[perm[:-n_test]], x[perm[-n_test:]]


def task_data(task, n_eval, key):
    """``(source(n, key), target(n, key), test, floor_w2, floor_energy, gaussian_source)``."""
    k_test, k_floor = jr.split(key)
    if task == "digits":
        train, test = split_digits()
        train_j = jnp.asarray(train)

        def target(n, key):
            return train_j[jr.randint(key, (n,), 0, train_j.shape[0])]

        rng = np.random.default_rng(1)
        draws = [train[rng.choice(len(train), len(test), replace=False)] for _ in range(5)]
        floor_w2 = float(np.mean([float(jfm.metrics.w2(d, test)) for d in draws]))
        floor_e = float(np.mean([float(jfm.metrics.energy_distance(d, test)) for d in draws]))
        return gaussian(64), target, jnp.asarray(test), floor_w2, floor_e, True
    src_name, _, tgt_name = task.rpartition("->")
    source = toy(src_name) if src_name else gaussian(2)
    target = toy(tgt_name)
    test, other = target(n_eval, k_test), target(n_eval, k_floor)
    floor_w2 = float(jfm.metrics.w2(other, test))
    floor_e = float(jfm.metrics.energy_distance(other, test))
    return source, target, test, floor_w2, floor_e, not src_name


# -- training --------------------------------------------------------------------------------


def make_net(d, a, *, two_time=False, seed=0):
    return jfm.models.MLP(
        d,
        hidden_features=a.hidden_digits if d > 2 else a.hidden,
        depth=a.depth,
        time_scale=a.time_scale,
        extra_time_inputs=int(two_time),
        rngs=nnx.Rngs(seed),
    )


def train(apply, params, loss_fn, batch_fn, a, key, steps):
    """Adam (cosine decay to 1% of ``--lr``) with an EMA of the weights (0.999), fused by
    ``jfm.scan_train_step``; ``(ema_params, steps, seconds, final loss)``."""
    opt = optax.adam(optax.cosine_decay_schedule(a.lr, steps, alpha=0.01))
    step = jfm.make_train_step(apply, opt, loss_fn, ema_decay=0.999)
    chunk = min(a.chunk, steps)
    multi = jax.jit(jfm.scan_train_step(step, batch_fn, chunk), donate_argnums=0)
    # A copy: the donated state must not own the caller's arrays (a teacher's weights).
    state = jfm.init_train_state(jax.tree.map(jnp.copy, params), opt, ema=True)
    t0 = time.perf_counter()
    losses = []
    for _ in range(steps // chunk):
        state, metrics = multi(state, key)
        losses.append(float(jnp.mean(metrics["loss"][-100:])))
    jax.block_until_ready(state)
    return state.ema_params, (steps // chunk) * chunk, time.perf_counter() - t0, losses[-1]


def fresh_pairs(source, target, batch):
    def batch_fn(key):
        k0, k1 = jr.split(key)
        return source(batch, k0), target(batch, k1)

    return batch_fn


def fixed_pairs(x0, x1, batch):
    def batch_fn(key):
        idx = jr.randint(key, (batch,), 0, x0.shape[0])
        return x0[idx], x1[idx]

    return batch_fn


def on_pairs(loss, **kw):
    """A ``loss_fn(apply, params, (x0, x1), *, key)`` from a jfm loss taking ``x0=``."""

    def loss_fn(apply, params, batch, *, key):
        x0, x1 = batch
        return loss(apply, params, x1, x0=x0, path=PATH, key=key, **kw)

    return loss_fn


def at_source(apply, params, x1, *, x0, path, key):
    # The velocity at t = 0 regressed on x1 - x0: one Euler step is the distilled map.
    return jfm.cfm_loss(apply, params, x1, x0=x0, path=path, key=key, t=jnp.zeros(x1.shape[0]))


def train_all(task, methods, source, target, a, key):
    """Train the teacher and every method; ``{method: (model_fn, steps, seconds, loss)}``."""
    d = 64 if task == "digits" else 2
    steps = a.digits_steps if task == "digits" else a.steps
    distill_steps = a.distill_steps or steps // 2
    reflow_steps = steps * a.reflow_factor
    keys = dict(zip(METHODS, jr.split(key, len(METHODS))))
    out = {}
    apply, p0 = jfm.split_model(make_net(d, a))
    batch_fn = fresh_pairs(source, target, a.batch)
    tp, ts_, tsec, tl = train(
        apply, p0, on_pairs(jfm.cfm_loss), batch_fn, a, keys["teacher"], steps
    )
    teacher = jfm.field_from_model(apply, tp)
    out["teacher"] = (teacher, ts_, tsec, tl)
    print(f"[{task}] teacher: {ts_} steps, {tsec:.1f} s, loss {tl:.4f}", flush=True)
    cost = {"teacher": (ts_, tsec)}
    if any(m.startswith("reflow") for m in methods):
        t0 = time.perf_counter()
        x0p = source(a.pairs, jr.fold_in(keys["reflow"], 1))
        x0p, x1p = jfm.reflow_pairs(teacher, x0p, solver=dfx.Dopri5(), rtol=1e-5, atol=1e-5)
        x1p = jax.block_until_ready(x1p)
        pair_sec = time.perf_counter() - t0
        print(f"[{task}] reflow pairs: {a.pairs} in {pair_sec:.1f} s", flush=True)
        rb = fixed_pairs(x0p, x1p, a.batch)
        rp, rs, rsec, rl = train(
            apply, tp, on_pairs(jfm.cfm_loss), rb, a, keys["reflow"], reflow_steps
        )
        cost["reflow"] = (ts_ + rs, tsec + pair_sec + rsec)
        out["reflow"] = (jfm.field_from_model(apply, rp), *cost["reflow"], rl)
        if "reflow+distill" in methods:
            dp, ds, dsec, dl = train(
                apply, rp, on_pairs(at_source), rb, a, keys["reflow+distill"], distill_steps
            )
            cost["reflow+distill"] = (cost["reflow"][0] + ds, cost["reflow"][1] + dsec)
            out["reflow+distill"] = (jfm.field_from_model(apply, dp), *cost["reflow+distill"], dl)
    cmap = jfm.consistency_map(apply)
    if "consistency-distill" in methods:
        loss = on_pairs(
            jfm.continuous_consistency_loss,
            teacher=teacher,
            tangent_normalization=a.tangent_normalization,
        )
        cp, cs, csec, cl = train(cmap, tp, loss, batch_fn, a, keys["consistency-distill"], steps)
        out["consistency-distill"] = (jfm.field_from_model(cmap, cp), ts_ + cs, tsec + csec, cl)
    if "consistency-train" in methods:
        _, q0 = jfm.split_model(make_net(d, a, seed=1))
        loss = on_pairs(
            jfm.continuous_consistency_loss, tangent_normalization=a.tangent_normalization
        )
        cp, cs, csec, cl = train(cmap, q0, loss, batch_fn, a, keys["consistency-train"], steps)
        out["consistency-train"] = (jfm.field_from_model(cmap, cp), cs, csec, cl)
    for m, loss in (("meanflow", jfm.meanflow_loss), ("shortcut", jfm.shortcut_loss)):
        if m in methods:
            apply2, q0 = jfm.split_model(make_net(d, a, two_time=True, seed=2))
            mp, ms, msec, ml = train(apply2, q0, on_pairs(loss), batch_fn, a, keys[m], steps)
            out[m] = (jfm.two_time_field(apply2, mp), ms, msec, ml)
    for m in methods:
        if m in out and m != "teacher":
            print(
                f"[{task}] {m}: {out[m][1]} steps, {out[m][2]:.1f} s, loss {out[m][3]:.4f}",
                flush=True,
            )
    return out


# -- evaluation ------------------------------------------------------------------------------


def generate(method, model_fn, x0, nfe, key):
    kind = KIND[method]
    kw = dict(path=PATH, key=key) if kind == "consistency" else {}
    return jfm.sample_few_step(model_fn, x0, kind=kind, steps=nfe, **kw)


def straight_metrics(field, x0, w2_src_sq):
    ts = jnp.linspace(0.0, 1.0, 101, dtype=x0.dtype)
    sol = jfm.sample_ode(field, x0, solver=dfx.Euler(), steps=100, saveat=ts)
    npe = float(jfm.metrics.normalized_path_energy(sol.xs, ts, w2_squared=w2_src_sq))
    return npe, float(jfm.metrics.straightness(sol.xs, ts))


def evaluate(task, models, source, test, floor_w2, floor_e, gaussian_src, a, key):
    n = test.shape[0]
    k_x0, k_gen = jr.split(key)
    x0 = source(n, k_x0)
    teacher = models["teacher"][0]
    ref = jfm.sample_ode(teacher, x0, solver=dfx.Dopri5(), rtol=1e-5, atol=1e-5)
    ref_w2 = float(jfm.metrics.w2(ref.x1, test))
    ref_e = float(jfm.metrics.energy_distance(ref.x1, test))
    rows, samples = [], {"data": np.asarray(test), "dopri5": np.asarray(ref.x1)}
    base = dict(task=task, floor_w2=floor_w2, floor_energy=floor_e, dopri5_w2=ref_w2,
                dopri5_energy=ref_e, dopri5_nfe=int(ref.nfe))  # fmt: skip
    for method, (model_fn, steps, seconds, _) in models.items():
        for nfe in NFES:
            if method == "reflow+distill" and nfe > 1:
                continue
            if KIND[method] == "consistency" and nfe > 1 and not gaussian_src:
                continue  # multistep consistency re-noises with the path's Gaussian source
            sol = generate(method, model_fn, x0, nfe, jr.fold_in(k_gen, nfe))
            assert int(sol.nfe) == nfe, (method, nfe, sol.nfe)
            x = sol.x1
            w2 = float(jfm.metrics.w2(x, test))
            rows.append(dict(base, method=method, nfe=nfe, w2=w2, w2_over_dopri5=w2 / ref_w2,
                             w2_over_floor=w2 / floor_w2,
                             energy=float(jfm.metrics.energy_distance(x, test)),
                             train_steps=steps, train_seconds=round(seconds, 1)))  # fmt: skip
            samples[(method, nfe)] = np.asarray(x)
    straight = {}
    if "reflow" in models:
        w2_src_sq = float(jfm.metrics.w2(x0, ref.x1, squared=True))
        for m in ("teacher", "reflow"):
            straight[m] = straight_metrics(models[m][0], x0, w2_src_sq)
    return rows, samples, straight


# -- report ----------------------------------------------------------------------------------


def best(rows, task, nfe):
    cand = [r for r in rows if r["task"] == task and r["nfe"] == nfe and r["method"] != "teacher"]
    return min(cand, key=lambda r: r["w2"]) if cand else None


def report(rows, straight, a):
    lines = [f"# Few-step models against their teacher ({'quick' if a.quick else 'full'})", ""]
    lines += [header(), "", f"command: `python benchmarks/few_step.py {' '.join(sys.argv[1:])}`"]
    lines += [f"steps per method {a.steps} (digits {a.digits_steps}; distill half unless "
              f"--distill-steps {a.distill_steps}), batch {a.batch}, "
              f"MLP {a.depth}x{a.hidden} (digits {a.depth}x{a.hidden_digits}), time_scale "
              f"{a.time_scale}, lr {a.lr}; n_eval {a.n_eval} (digits: 360 test images); "
              f"reflow pairs {a.pairs}, reflow steps {a.reflow_factor}x; tangent normalization "
              f"{a.tangent_normalization}", ""]  # fmt: skip
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    for task in tasks:
        tr = [r for r in rows if r["task"] == task]
        r0 = tr[0]
        lines += [f"## {task}", "",
                  f"floor W2 {r0['floor_w2']:.4f}, energy {r0['floor_energy']:.5f}; teacher Dopri5 "
                  f"W2 {r0['dopri5_w2']:.4f} ({r0['dopri5_w2'] / r0['floor_w2']:.2f}x floor), "
                  f"energy {r0['dopri5_energy']:.5f}, NFE {r0['dopri5_nfe']}", "",
                  "| method | W2 @1 | W2 @2 | W2 @4 | /Dopri5 @1 | /Dopri5 @2 | energy @1 | "
                  "train steps | train s |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for m in dict.fromkeys(r["method"] for r in tr):
            by = {r["nfe"]: r for r in tr if r["method"] == m}
            cell = lambda k, key, f: f.format(by[k][key]) if k in by else "n/a"  # noqa: E731
            any_r = next(iter(by.values()))
            lines.append(
                f"| {m} | {cell(1, 'w2', '{:.4f}')} | {cell(2, 'w2', '{:.4f}')} | "
                f"{cell(4, 'w2', '{:.4f}')} | {cell(1, 'w2_over_dopri5', '{:.2f}')} | "
                f"{cell(2, 'w2_over_dopri5', '{:.2f}')} | {cell(1, 'energy', '{:.5f}')} | "
                f"{any_r['train_steps']} | {any_r['train_seconds']} |"
            )
        if task in straight:
            s = straight[task]
            lines += ["", "| flow | NPE | straightness |", "|---|---|---|"]
            lines += [f"| {'1-RF (teacher)' if m == 'teacher' else '2-RF'} | {v[0]:.3f} | "
                      f"{v[1]:.4f} |" for m, v in s.items()]  # fmt: skip
            lines += ["", "Tong et al. (TMLR 2024) report 2-RF NPE 0.069-0.149 on their 2-D tasks."]
        lines.append("")
    lines += ["## Targets", ""]
    for task in tasks:
        if task == "digits":
            b1 = best(rows, task, 1)
            if b1:
                ratio = b1["w2_over_floor"]
                verdict = "MET" if ratio <= 1.15 else "MISSED"
                lines.append(f"- digits, best 1-NFE W2 / floor W2(train, test) <= 1.15: "
                             f"{ratio:.3f} ({b1['method']}): {verdict}")  # fmt: skip
            continue
        for nfe, bound in ((1, 1.2), (2, 1.1)):
            b = best(rows, task, nfe)
            if b:
                ratio = b["w2_over_dopri5"]
                verdict = "MET" if ratio <= bound else "MISSED"
                lines.append(f"- {task}, best {nfe}-NFE W2 / teacher Dopri5 W2 <= {bound}: "
                             f"{ratio:.3f} ({b['method']}): {verdict}")  # fmt: skip
    text = "\n".join(lines) + "\n"
    with open(a.out + ".md", "w") as f:
        f.write(text)
    write_csv(a.out + ".csv", rows)
    print(text)


def plot(all_samples, rows, a):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for task, samples in all_samples.items():
        methods = list(dict.fromkeys(m for m, _ in [k for k in samples if isinstance(k, tuple)]))
        rows_, cols = len(methods) + 1, len(NFES)
        fig, axes = plt.subplots(rows_, cols, figsize=(2.2 * cols, 2.2 * rows_), squeeze=False)
        ref = [("data", samples["data"]), ("teacher Dopri5", samples["dopri5"])]
        cells = [[(f"{m} @{n}", samples.get((m, n))) for n in NFES] for m in methods]
        for ax, (title, x) in zip(
            axes.ravel(), ref + [(None, None)] * (len(NFES) - 2) + sum(cells, [])
        ):
            ax.set_xticks([]), ax.set_yticks([])
            if x is None or title is None:
                ax.axis("off")
                continue
            ax.set_title(title, fontsize=7)
            if task == "digits":
                grid = x[:16].reshape(4, 4, 8, 8).transpose(0, 2, 1, 3).reshape(32, 32)
                grid = np.clip(grid, -1, 1)
                ax.imshow(grid, cmap="gray_r", vmin=-1, vmax=1)
            else:
                ax.scatter(x[:1000, 0], x[:1000, 1], s=0.5, c="C0", linewidths=0)
                ax.set_xlim(-5, 5), ax.set_ylim(-5, 5)
        fig.tight_layout()
        fig.savefig(f"{a.out}_{task.replace('->', '_to_')}.png", dpi=60)
        plt.close(fig)
    tasks = list(all_samples)
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        tr = [r for r in rows if r["task"] == task]
        for m in dict.fromkeys(r["method"] for r in tr):
            pts = sorted((r["nfe"], r["w2"]) for r in tr if r["method"] == m)
            ax.plot(*zip(*pts), "o-", ms=3, label=m)
        ax.axhline(tr[0]["dopri5_w2"], color="k", ls="--", lw=1, label="teacher Dopri5")
        ax.axhline(tr[0]["floor_w2"], color="gray", ls=":", lw=1, label="floor")
        ax.set_xscale("log", base=2), ax.set_yscale("log")
        ax.set_xticks(NFES, [str(n) for n in NFES])
        ax.set_title(task, fontsize=9), ax.set_xlabel("NFE")
    axes[0][0].set_ylabel("W2 to held-out data")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(f"{a.out}_w2_vs_nfe.png", dpi=80)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small settings (a smoke run)")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--digits-steps", type=int, default=4000, help="steps per method on digits")
    p.add_argument("--distill-steps", type=int, default=None, help="default: steps / 2")
    p.add_argument("--reflow-factor", type=int, default=3, help="reflow steps = factor x steps")
    p.add_argument("--tangent-normalization", type=float, default=None, help="sCM's c (0.1)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--hidden-digits", type=int, default=256)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--time-scale", type=float, default=100.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--chunk", type=int, default=500)
    p.add_argument("--pairs", type=int, default=100000)
    p.add_argument("--n-eval", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/few_step")
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.pairs, a.n_eval, a.hidden, a.hidden_digits = 600, 2000, 500, 64, 128
        a.chunk, a.digits_steps, a.reflow_factor = 200, 600, 1
    tasks = [t for t in a.tasks.split(",") if t]
    methods = [m for m in a.methods.split(",") if m]
    for name, got, known in (("tasks", tasks, TASKS), ("methods", methods, METHODS)):
        bad = sorted(set(got) - set(known))
        if bad:
            p.error(f"unknown {name} {bad}; known: {', '.join(known)}")
    if "teacher" not in methods:
        methods.insert(0, "teacher")
    print(header(), flush=True)
    rows, all_samples, straight = [], {}, {}
    key = jr.key(a.seed)
    for task in tasks:
        # keys by the task's place in TASKS: a subset of tasks reproduces the full run's rows
        k_data, k_train, k_eval = jr.split(jr.fold_in(key, TASKS.index(task)), 3)
        source, target, test, fw, fe, gauss = task_data(task, a.n_eval, k_data)
        models = train_all(task, methods, source, target, a, k_train)
        r, samples, s = evaluate(task, models, source, test, fw, fe, gauss, a, k_eval)
        rows += r
        all_samples[task] = samples
        if s:
            straight[task] = s
        report(rows, straight, a)  # rewritten after each task: a partial run keeps its rows
    plot(all_samples, rows, a)
    return rows


if __name__ == "__main__":
    main()
