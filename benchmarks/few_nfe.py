"""Few-NFE sampling: every solver x grid at 3-32 evaluations, against exact references.

Three kinds of problem, all sampled from noise (t = 0) to data (t = 1):

(a) **Exact Gaussian-mixture fields** (``jfm.GaussianMixture``) in 2-D and D = 64 on the
    CondOT and VP paths. The endpoint reference is Dopri8 at rtol = atol = 1e-12 on the
    velocity in ``t`` (CondOT), and on VP, whose velocity is infinite at ``t = 1``, Dopri8
    at 1e-12 on the same ODE in EDM's variables (``d(x / alpha) / d rho = eps`` from
    ``rho(0)`` down to ``rho = 0``), an independent route that none of the few-NFE
    solvers takes. Measured: the endpoint RMS error ``sqrt(mean_i |x_i - x_ref_i|^2)``,
    and the energy distance and exact W2 of the samples to as many exact samples of the
    mixture, next to the noise floor (the same metrics between two sets of exact samples).
    Also: diffusers' schedulers (DPM-Solver++ 2M/3M, UniPC bh1/bh2 order 2/3, DEIS 2/3,
    FlowMatchEuler), driven through their own ``step`` with the same exact field on the
    same grids (their default ``lower_order_final=True``), when diffusers is installed.
(b) **Trained models** of ``jfm train`` (the checkerboard MLP and the digits MLP, CondOT,
    velocity): the endpoint RMS distance to the same model's Dopri5 solve at rtol = atol =
    1e-8 from the same noise (the sampler's error, free of the model's), and W2 / energy
    distance of the samples to data, next to the data's own floor.
(c) **Overhead**: wall time of a 10-NFE solve of each sampler with a 4x512 MLP at batch
    10,000 (float32), against 10 evaluations of the network alone (one jitted call each,
    best of several, alternated with the solves).

NFE counts every field evaluation (measured by the solvers' own counters, checked against
the step count). One-evaluation-per-step solvers take ``steps = NFE``; the two-evaluation
ones (DPM-Solver++ 2S, EDM, diffrax's Heun and Midpoint) the most steps whose NFE fits the
budget (2S and EDM spend one evaluation on a step from ``alpha = 0`` or to ``sigma = 0``).

Usage::

    python benchmarks/few_nfe.py                 # everything (about an hour on 2 cores)
    python benchmarks/few_nfe.py --quick         # NFE {4, 8, 10, 16}, 2-D only: minutes
    python benchmarks/few_nfe.py --parts exact   # or trained, overhead (comma-separated)

``--train-dir DIR`` points at run folders ``DIR/checkerboard`` and ``DIR/digits`` of
``jfm train`` (trained here when missing: ``jfm train --dataset checkerboard --steps 4000
--seed 1`` and ``jfm train --dataset digits --model mlp --steps 3000``).

Writes ``benchmarks/results/few_nfe_*.{md,csv,png}``.
"""

import argparse
import csv
import math
import os
import subprocess
import sys
import timeit
from pathlib import Path

# One XLA thread per process for the accuracy sweeps: on a shared machine its thread pool
# otherwise spins against other processes (30x slower runs of these small solves). The
# overhead part (--parts overhead) keeps XLA's default threading: run it on its own.
if "overhead" not in " ".join(sys.argv):
    os.environ.setdefault(
        "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    )

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import diffrax as dfx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402
from scipy.spatial.distance import cdist  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from _common import header  # noqa: E402

import jfm  # noqa: E402

RESULTS = Path(__file__).parent / "results"
NFES = (3, 4, 5, 6, 8, 10, 12, 16, 24, 32)
QUICK_NFES = (4, 8, 10, 16)
GRIDS = ("uniform", "edm", "logsnr", "shift", "cosine")
CONDOT = jfm.AffinePath(jfm.CondOT())
VP = jfm.AffinePath(jfm.VP())

# name -> (constructor(path), evaluations per step); the names of `jfm sample --solver`.
SOLVERS = {
    "euler": (lambda p: dfx.Euler(), 1),
    "heun": (lambda p: dfx.Heun(), 2),
    "midpoint": (lambda p: dfx.Midpoint(), 2),
    "ddim": (lambda p: jfm.DPMSolverPP(p, 1), 1),
    "dpmpp-2m": (lambda p: jfm.DPMSolverPP(p, 2), 1),
    "dpmpp-3m": (lambda p: jfm.DPMSolverPP(p, 3), 1),
    "dpmpp-2s": (lambda p: jfm.DPMSolverPP2S(p), 2),
    "unipc": (lambda p: jfm.UniPC(p, 2), 1),
    "unipc-3": (lambda p: jfm.UniPC(p, 3), 1),
    "unipc-bh1": (lambda p: jfm.UniPC(p, 2, variant="bh1"), 1),
    "deis-2": (lambda p: jfm.DEIS(p, 2), 1),
    "deis-3": (lambda p: jfm.DEIS(p, 3), 1),
    "edm": (lambda p: jfm.EDM(p), 2),
}
DIFFRAX = ("euler", "heun", "midpoint")


def steps_for(name: str, nfe: int, path) -> int:
    """The most steps whose evaluation count fits ``nfe`` (0 if none does)."""
    per = SOLVERS[name][1]
    if per == 1:
        return nfe
    if name in DIFFRAX:
        return nfe // 2
    # One evaluation on a step to sigma = 0 (both) and, for EDM, on a step from alpha = 0.
    saved = int(float(path.sigma(1.0)) == 0.0)
    if name == "edm":
        saved += int(float(path.alpha(0.0)) == 0.0)
    return max((nfe + saved) // 2, 0)


def rms(x, ref) -> float:
    d = np.asarray(x, np.float64).reshape(len(x), -1) - np.asarray(ref).reshape(len(x), -1)
    return float(np.sqrt(np.mean(np.sum(d * d, axis=1))))


def w2(x, y) -> float:
    """Exact W2 of two equal-size empirical measures (scipy's assignment)."""
    x, y = np.asarray(x).reshape(len(x), -1), np.asarray(y).reshape(len(y), -1)
    c = cdist(x, y, "sqeuclidean")
    r, col = linear_sum_assignment(c)
    return float(np.sqrt(c[r, col].mean()))


def energy(x, y) -> float:
    x, y = np.asarray(x).reshape(len(x), -1), np.asarray(y).reshape(len(y), -1)
    return float(2 * cdist(x, y).mean() - cdist(x, x).mean() - cdist(y, y).mean())


# -- problems ----------------------------------------------------------------------------


def mixture(d: int) -> jfm.GaussianMixture:
    """2-D: eight sharp modes on a ring; D = 64: four well-separated anisotropic modes."""
    if d == 2:
        ang = jnp.arange(8) * (2 * jnp.pi / 8)
        means = 2.0 * jnp.stack([jnp.cos(ang), jnp.sin(ang)], 1)
        return jfm.GaussianMixture.isotropic(means, jnp.full(8, 0.15))
    k1, k2 = jr.split(jr.key(64))
    means = 2.0 * jr.normal(k1, (4, d)) / jnp.sqrt(d) * 3.0
    scales = jnp.exp(0.5 * jr.normal(k2, (4, d)))  # per-axis standard deviations
    return jfm.GaussianMixture(means, jax.vmap(jnp.diag)(0.1 * scales**2), jnp.full(4, 0.25))


def rho_reference(gmm, path, x0, tol: float = 1e-12):
    """Endpoints at t = 1 from Dopri8 (rtol = atol = ``tol``) on the VP ODE in EDM's
    variables, ``d(x / alpha) / d rho = eps(t(rho), x)`` from ``rho(0)`` down to 0."""
    eps = gmm.field(path, "x0")

    def g(r, y, args):
        # rho -> t by jfm's bisection; rho = 0 is t = 1, where sigma = 0.
        t = jnp.where(r > 0, jfm.time_at_log_snr(path, -jnp.log(jnp.maximum(r, 1e-300))), 1.0)
        return eps(t, path.alpha(t) * y, None)

    r0 = float(jnp.exp(-jfm.log_snr(path, 0.0)))
    y0 = x0 / float(path.alpha(0.0))
    sol = jfm.sample_ode(
        g,
        y0,
        solver=dfx.Dopri8(),
        rtol=tol,
        atol=tol,
        t0=r0,
        t1=0.0,
        batch="vmap",
        max_steps=2**16,
    )
    return np.asarray(sol.x1)  # alpha(1) = 1


def cached(path: Path | None, fn):
    """``fn()`` saved to / loaded from ``path`` (``.npy``) when a cache folder is given."""
    if path is not None and path.exists():
        return np.load(path)
    value = np.asarray(fn())
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, value)
    return value


def exact_problems(dims, n_points, cache: Path | None = None):
    out = []
    for d in dims:
        gmm = mixture(d)
        n = n_points[d]
        x0 = jr.normal(jr.key(10 + d), (n, d))
        exact = np.asarray(gmm.sample(n, key=jr.key(20 + d)))
        exact2 = np.asarray(gmm.sample(n, key=jr.key(30 + d)))
        floor = (w2(exact, exact2), energy(exact, exact2))
        for pname, path in (("condot", CONDOT), ("vp", VP)):
            field = gmm.velocity_field(path)
            c = None if cache is None else cache / f"gmm{d}_{pname}_n{n}"
            if pname == "condot":

                def solve(field=field, x0=x0):
                    ref = jfm.bench.reference_solution(field, x0, rtol=1e-12, atol=1e-12)
                    return np.concatenate([ref.x1, ref.error[:, None]], axis=1)

                both = cached(c and c.with_suffix(".ref.npy"), solve)
                ref_x1, ref_err = both[:, :-1], float(np.max(both[:, -1]))
            else:
                # Its error: the distance to the same route at 1e-14.
                ref_x1 = cached(
                    c and c.with_suffix(".ref.npy"), lambda: rho_reference(gmm, path, x0)
                )
                check = cached(
                    c and c.with_suffix(".check.npy"), lambda: rho_reference(gmm, path, x0, 1e-14)
                )
                ref_err = float(np.max(np.linalg.norm(ref_x1 - check, axis=1)))
            out.append(
                dict(
                    name=f"GMM {d}-D {pname}",
                    key=f"gmm{d}_{pname}",
                    path_name=pname,
                    path=path,
                    field=field,
                    gmm=gmm,
                    x0=x0,
                    ref=ref_x1,
                    ref_err=ref_err,
                    data=exact,
                    floor=floor,
                )
            )
            print(
                f"# {out[-1]['name']}: reference error <= {ref_err:.1e}; floor W2 "
                f"{floor[0]:.4f}, energy {floor[1]:.2e}",
                flush=True,
            )
    return out


# -- running one solver ------------------------------------------------------------------


def run_jfm(name, prob, grid, nfe):
    """``(x1, measured nfe)`` or ``(None, 0)`` when the budget holds no step."""
    path = prob["path"]
    steps = steps_for(name, nfe, path)
    if steps < 1:
        return None, 0
    try:
        ts = jfm.time_grid(grid, steps, path=path, dtype=prob["x0"].dtype)
    except ValueError:  # e.g. a shift that pushes points past VP's largest noise level
        return None, 0
    solver = SOLVERS[name][0](path)
    sol = jfm.sample_ode(prob["field"], prob["x0"], solver=solver, ts=ts, throw=False)
    x1 = np.asarray(sol.x1)
    used = int(np.max(sol.nfe))
    if used > nfe:
        raise AssertionError(f"{name} {grid}: {used} evaluations for a budget of {nfe}")
    if not bool(np.all(sol.success)):
        x1 = np.full_like(x1, np.nan)
    return x1, used


def sweep(problems, nfes, solvers, grids, partial: Path | None = None):
    """Every solver x grid x NFE budget on every problem; the rows so far are written to
    ``partial`` (CSV) after each solver, so an interrupted run keeps them."""
    rows = []
    for prob in problems:
        for name in solvers:
            for nfe in nfes:
                for grid in grids:
                    x1, used = run_jfm(name, prob, grid, nfe)
                    if x1 is None:
                        continue
                    rows.append(metrics_row(prob, "jfm", name, grid, nfe, used, x1))
            best = min(
                (r for r in rows if r["problem"] == prob["name"] and r["solver"] == name),
                key=lambda r: (r["nfe_budget"] != 10, r["rms"]),
                default=None,
            )
            if best is not None:
                print(
                    f"  {prob['name']:18s} {name:10s} best at 10 NFE: {best['rms']:.2e} "
                    f"({best['grid']})",
                    flush=True,
                )
            if partial is not None and rows:
                write_csv(rows, partial)
    return rows


def metrics_row(prob, impl, name, grid, nfe, used, x1):
    ok = bool(np.all(np.isfinite(x1)))
    return dict(
        problem=prob["name"],
        impl=impl,
        solver=name,
        grid=grid,
        nfe_budget=nfe,
        nfe=used,
        rms=rms(x1, prob["ref"]) if ok else math.inf,
        w2=w2(x1, prob["data"]) if ok else math.inf,
        energy=energy(x1, prob["data"]) if ok else math.inf,
    )


# -- diffusers on the same field and grids -------------------------------------------------


def diffusers_rows(problems, nfes, grids):
    try:
        import diffusers
        import torch
    except ImportError:
        print("# diffusers / torch not installed: skipping the diffusers comparison")
        return []
    configs = {
        "dpmpp-2m": lambda kw: diffusers.DPMSolverMultistepScheduler(solver_order=2, **kw),
        "dpmpp-3m": lambda kw: diffusers.DPMSolverMultistepScheduler(solver_order=3, **kw),
        "unipc": lambda kw: diffusers.UniPCMultistepScheduler(solver_order=2, **kw),
        "unipc-3": lambda kw: diffusers.UniPCMultistepScheduler(solver_order=3, **kw),
        "unipc-bh1": lambda kw: diffusers.UniPCMultistepScheduler(
            solver_order=2, solver_type="bh1", **kw
        ),
        "deis-2": lambda kw: diffusers.DEISMultistepScheduler(solver_order=2, **kw),
        "deis-3": lambda kw: diffusers.DEISMultistepScheduler(solver_order=3, **kw),
        "flow-euler": None,
    }
    rows = []
    for prob in problems:
        path = prob["path"]
        condot = prob["path_name"] == "condot"
        if condot:
            u = jax.jit(jax.vmap(prob["field"], in_axes=(None, 0, None)))
            model = lambda t, x: -np.asarray(u(jnp.asarray(t), jnp.asarray(x), None))  # noqa
            kw = dict(prediction_type="flow_prediction", use_flow_sigmas=True)
        else:
            e = jax.jit(jax.vmap(prob["gmm"].field(path, "x0"), in_axes=(None, 0, None)))
            model = lambda t, x: np.asarray(e(jnp.asarray(t), jnp.asarray(x), None))  # noqa
            kw = dict(prediction_type="epsilon")
        for name, make in configs.items():
            if name == "flow-euler" and not condot:
                continue
            for nfe in nfes:
                for grid in grids:
                    ts = np.asarray(jfm.time_grid(grid, nfe, path=path))
                    sig = 1 - ts if condot else np.exp(-np.asarray(jfm.log_snr(path, ts)))
                    if not condot and not np.isfinite(sig[0]):
                        continue
                    try:
                        if name == "flow-euler":
                            sched = diffusers.FlowMatchEulerDiscreteScheduler()
                        else:
                            sched = make(dict(kw))
                        sched.set_timesteps(nfe)
                        sched.sigmas = torch.tensor(sig, dtype=torch.float64)
                        x = torch.tensor(np.asarray(prob["x0"]), dtype=torch.float64)
                        with np.errstate(all="ignore"):
                            for i in range(nfe):
                                sched._step_index = i
                                out = torch.tensor(model(ts[i], x.numpy()), dtype=torch.float64)
                                x = sched.step(out, sched.timesteps[i], x).prev_sample
                        x1 = x.double().numpy()
                    except (RuntimeError, ValueError, ZeroDivisionError):
                        x1 = np.full(prob["x0"].shape, np.nan)
                    rows.append(metrics_row(prob, "diffusers", name, grid, nfe, nfe, x1))
    return rows


# -- trained models ----------------------------------------------------------------------


def trained_problems(train_dir: Path, n: int):
    from jfm import _cli

    specs = {
        "checkerboard": ["--dataset", "checkerboard", "--steps", "4000", "--seed", "1"],
        "digits": ["--dataset", "digits", "--model", "mlp", "--steps", "3000", "--seed", "0"],
    }
    out = []
    for name, flags in specs.items():
        run = train_dir / name
        if not (run / "config.json").exists():
            print(f"# training {run} (jfm train {' '.join(flags)})", flush=True)
            subprocess.run(["jfm", "train", *flags, "--out", str(run), "--no-progress"], check=True)
        cfg = _cli._load_config(run)
        apply, params, _ = _cli._restore(run, cfg, "latest")
        path = _cli._path(cfg)
        field = _cli._field(apply, params, cfg, path)
        shape = _cli._event_shape(cfg)
        x0 = jr.normal(jr.key(1), (n, *shape))
        ref = jfm.sample_ode(field, x0, solver=dfx.Dopri5(), rtol=1e-8, atol=1e-8, max_steps=2**14)
        if name == "digits":  # the whole dataset (the built-in run trains on all of it)
            data = np.asarray(jfm.data.digits(dtype=jnp.float64))
            half = len(data) // 2
            perm = np.random.default_rng(0).permutation(len(data))
            a, b = data[perm[:half]], data[perm[half : 2 * half]]
            x0 = x0[:half]
            ref_x1 = np.asarray(ref.x1)[:half]
        else:
            a = np.asarray(jfm.data.checkerboard(n, key=jr.key(101), dtype=jnp.float64))
            b = np.asarray(jfm.data.checkerboard(n, key=jr.key(102), dtype=jnp.float64))
            ref_x1 = np.asarray(ref.x1)
        floor = (w2(a, b), energy(a, b))
        ref_fit = (w2(ref_x1, a), energy(ref_x1, a))
        print(
            f"# {name}: Dopri5 1e-8 ({int(np.max(ref.nfe))} NFE) W2 {ref_fit[0]:.4f}, data "
            f"floor {floor[0]:.4f}",
            flush=True,
        )
        out.append(
            dict(
                name=f"trained {name}",
                key=name,
                path_name="condot",
                path=path,
                field=field,
                x0=x0,
                ref=ref_x1,
                ref_err=0.0,
                data=a,
                floor=floor,
                ref_fit=ref_fit,
            )
        )
    return out


# -- overhead ----------------------------------------------------------------------------


def overhead_rows(solvers, repeat: int, batch: int = 10_000, nfe: int = 10):
    from flax import nnx

    net = jfm.models.MLP(2, hidden_features=512, depth=4, rngs=nnx.Rngs(0))
    apply, params = jfm.split_model(net)
    field = jfm.field_from_model(apply, params)
    x0 = jr.normal(jr.key(0), (batch, 2), jnp.float32)
    once = jax.jit(lambda x: jax.vmap(field, in_axes=(None, 0, None))(jnp.float32(0.5), x, None))
    batched = jax.vmap(field, in_axes=(None, 0, None))

    @jax.jit
    def loop(x):  # the hand-written baseline: 10 Euler steps of the network in one jit
        return jax.lax.fori_loop(
            0, nfe, lambda i, y: y + batched(jnp.float32(i / nfe), y, None) / nfe, x
        )

    fns = {"network x1": lambda: jax.block_until_ready(once(x0))}
    fns["hand loop"] = lambda: jax.block_until_ready(loop(x0))
    for name in solvers:
        steps = steps_for(name, nfe, CONDOT)
        ts = jfm.time_grid(
            "edm" if name == "edm" else "uniform", steps, path=CONDOT, dtype=jnp.float32
        )
        solver = SOLVERS[name][0](CONDOT)
        fns[name] = lambda s=solver, g=ts: jax.block_until_ready(
            jfm.sample_ode(field, x0, solver=s, ts=g).x1
        )
        used = int(jfm.sample_ode(field, x0, solver=solver, ts=ts).nfe)
        fns[name].nfe = used
    best = {k: math.inf for k in fns}
    for _ in range(repeat):  # alternate, so drifts of a shared machine hit all alike
        for k, fn in fns.items():
            t0 = timeit.default_timer()
            fn()
            best[k] = min(best[k], timeit.default_timer() - t0)
    rows = []
    for name in solvers:
        used = fns[name].nfe
        net_time = used * best["network x1"]
        rows.append(
            dict(
                solver=name,
                nfe=used,
                seconds=best[name],
                network=net_time,
                loop=best["hand loop"] * used / nfe,
                overhead=1 - net_time / best[name],
                overhead_loop=1 - best["hand loop"] * used / nfe / best[name],
            )
        )
    return rows, best["network x1"]


# -- reporting ---------------------------------------------------------------------------


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def best_of(rows, problem, impl, nfe, solver=None, grid=None):
    cand = [
        r
        for r in rows
        if r["problem"] == problem
        and r["impl"] == impl
        and r["nfe_budget"] == nfe
        and (solver is None or r["solver"] == solver)
        and (grid is None or r["grid"] == grid)
    ]
    return min(cand, key=lambda r: r["rms"], default=None)


def fmt(v):
    return "fail" if not np.isfinite(v) else f"{v:.2e}"


def problem_tables(rows, prob, nfes, solvers):
    name = prob["name"]
    lines = [f"## {name}", ""]
    if prob.get("ref_err"):
        lines.append(f"Reference error (max per point) <= {prob['ref_err']:.1e}.")
    lines.append(
        f"Noise floor: W2 {prob['floor'][0]:.4f}, energy distance "
        f"{prob['floor'][1]:.2e} (two independent exact/data sets of "
        f"{len(prob['data'])})."
    )
    if "ref_fit" in prob:
        lines.append(
            f"The model's own tight solve (Dopri5 1e-8): W2 {prob['ref_fit'][0]:.4f}, "
            f"energy {prob['ref_fit'][1]:.2e}."
        )
    lines += ["", "Endpoint RMS error, best grid per solver (grid in brackets):", ""]
    lines.append("| solver | " + " | ".join(f"{n}" for n in nfes) + " |")
    lines.append("|---|" + "---|" * len(nfes))
    impls = [("jfm", s) for s in solvers]
    impls += sorted(
        {
            ("diffusers", r["solver"])
            for r in rows
            if r["impl"] == "diffusers" and r["problem"] == name
        }
    )
    for impl, s in impls:
        cells = []
        for n in nfes:
            b = best_of(rows, name, impl, n, s)
            cells.append("" if b is None else f"{fmt(b['rms'])} ({b['grid']})")
        label = s if impl == "jfm" else f"diffusers {s}"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    n10 = 10 if 10 in nfes else nfes[len(nfes) // 2]
    lines += ["", f"At {n10} NFE: endpoint RMS / W2 / energy distance per solver and grid:", ""]
    grids = sorted({r["grid"] for r in rows if r["problem"] == name}, key=GRIDS.index)
    lines.append("| solver | " + " | ".join(grids) + " |")
    lines.append("|---|" + "---|" * len(grids))
    for impl, s in impls:
        cells = []
        for g in grids:
            b = best_of(rows, name, impl, n10, s, g)
            cells.append(
                "" if b is None else f"{fmt(b['rms'])} / {b['w2']:.3f} / {b['energy']:.1e}"
            )
        label = s if impl == "jfm" else f"diffusers {s}"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def plot(rows, prob, solvers, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    name = prob["name"]
    for s in solvers:
        pts = [
            (r["nfe"], r["rms"])
            for r in rows
            if r["problem"] == name and r["impl"] == "jfm" and r["solver"] == s
        ]
        if not pts:
            continue
        # best grid at 10 NFE (or the middle budget) for this solver, whole curve on it
        b = best_of(rows, name, "jfm", 10, s)
        b = b or best_of(rows, name, "jfm", rows[0]["nfe_budget"], s)
        pts = sorted(
            (r["nfe"], r["rms"])
            for r in rows
            if r["problem"] == name
            and r["impl"] == "jfm"
            and r["solver"] == s
            and r["grid"] == b["grid"]
            and np.isfinite(r["rms"])
        )
        if pts:
            ax.loglog(
                *zip(*pts),
                marker="o",
                ms=3,
                ls="--" if s in DIFFRAX else "-",
                label=f"{s} ({b['grid']})",
            )
    ax.set_xlabel("NFE")
    ax.set_ylabel("endpoint RMS error")
    ax.set_title(f"{name}: error vs NFE (each solver on its best grid at 10 NFE)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def recommendations(rows, problems, nfes):
    """Per path: the jfm solver+grid with the smallest geometric-mean RMS over 4-16 NFE."""
    lines = []
    window = [n for n in nfes if 4 <= n <= 16]
    for pname in sorted({p["path_name"] for p in problems}):
        names = [p["name"] for p in problems if p["path_name"] == pname]
        score = {}
        for r in rows:
            if r["impl"] != "jfm" or r["problem"] not in names or r["nfe_budget"] not in window:
                continue
            score.setdefault((r["solver"], r["grid"]), []).append(max(r["rms"], 1e-300))
        full = {k: v for k, v in score.items() if len(v) == len(names) * len(window)}
        if not full:
            continue
        k = min(full, key=lambda k: np.mean(np.log(full[k])))
        lines.append(
            f"- **{pname}** ({', '.join(names)}): `--solver {k[0]} --grid {k[1]}` "
            f"(geometric-mean endpoint RMS over {window[0]}-{window[-1]} NFE "
            f"{math.exp(np.mean(np.log(full[k]))):.2e})."
        )
    return lines


def targets_exact(rows, problems):
    lines = []
    for p in problems:
        n = p["name"]
        best = best_of(rows, n, "jfm", 10)
        euler = best_of(rows, n, "jfm", 10, "euler", "uniform")
        dif = best_of(rows, n, "diffusers", 10)
        if best is None or euler is None:
            continue
        ratio = best["rms"] / euler["rms"]
        s = (
            f"- {n}: best {best['solver']} on {best['grid']} {best['rms']:.2e}; Euler "
            f"(uniform) {euler['rms']:.2e}; ratio 1/{1 / ratio:.0f} "
            f"({'met' if ratio <= 1 / 20 else 'missed'}: <= 1/20)"
        )
        if dif is not None:
            s += (
                f"; diffusers' best {dif['solver']} on {dif['grid']} {dif['rms']:.2e} "
                f"({'met' if best['rms'] <= dif['rms'] * (1 + 1e-9) else 'missed'}: <=)"
            )
        lines.append(s + ".")
    return lines


def targets_trained(rows, problems, nfe=8):
    lines = []
    for p in problems:
        n = p["name"]
        best = best_of(rows, n, "jfm", nfe)
        base = [best_of(rows, n, "jfm", nfe, s, "uniform") for s in DIFFRAX]
        base = min((b for b in base if b is not None), key=lambda r: r["rms"], default=None)
        if best is None or base is None:
            continue
        ratio = best["rms"] / base["rms"]
        lines.append(
            f"- {n} at {nfe} NFE: best {best['solver']} on {best['grid']} {best['rms']:.2e} vs "
            f"best diffrax fixed-step on the uniform grid ({base['solver']}) "
            f"{base['rms']:.2e}: ratio {ratio:.3f} ({'met' if ratio <= 1 / 3 else 'missed'}: "
            "<= 1/3)."
        )
    return lines


def write_report(lines, rows, probs, nfes, solvers, kind: str, tag: str) -> None:
    """Per-problem tables and plots after ``lines``; ``few_nfe_{kind}{tag}.md`` and
    ``.csv`` in results (the partial CSV of the sweep removed), and the text printed."""
    name = f"few_nfe_{kind}{tag}"
    write_csv(rows, RESULTS / f"{name}.csv")
    (RESULTS / f"{name}.partial.csv").unlink(missing_ok=True)
    for p in probs:
        lines += problem_tables(rows, p, nfes, solvers) + [""]
        png = RESULTS / f"few_nfe_{p['key']}{tag}.png"
        plot(rows, p, solvers, png)
        lines += [f"![{p['name']}]({png.name})", ""]
    text = "\n".join(lines) + "\n"
    (RESULTS / f"{name}.md").write_text(text)
    print(text, flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="NFE {4, 8, 10, 16}, 2-D only")
    ap.add_argument("--parts", default="exact,trained,overhead")
    ap.add_argument("--train-dir", default="/tmp/jfm_few_nfe_runs")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dims", default=None, help="exact part: comma-separated, e.g. 2,64")
    ap.add_argument("--nfes", default=None, help="comma-separated NFE budgets (default: all)")
    ap.add_argument("--tag", default=None, help="suffix of the output files")
    ap.add_argument("--cache", default=None, help="folder to keep the references in")
    a = ap.parse_args(argv)
    parts = set(a.parts.split(","))
    nfes = QUICK_NFES if a.quick else NFES
    if a.nfes:
        nfes = tuple(int(n) for n in a.nfes.split(","))
    solvers = list(SOLVERS)
    tag = "_quick" if a.quick else ""
    if a.tag:
        tag += "_" + a.tag
    cache = Path(a.cache) if a.cache else None
    RESULTS.mkdir(exist_ok=True)
    cmd = "python benchmarks/few_nfe.py " + " ".join(sys.argv[1:] if argv is None else argv)
    head = [header(), "", f"Command: `{cmd}` (parts: {a.parts}).", ""]
    print(head[0], flush=True)

    if "exact" in parts:
        dims = (2,) if a.quick else (2, 64)
        if a.dims:
            dims = tuple(int(d) for d in a.dims.split(","))
        probs = exact_problems(dims, {2: 1024, 64: 256}, cache)
        rows = sweep(probs, nfes, solvers, GRIDS, RESULTS / f"few_nfe_exact{tag}.partial.csv")
        rows += diffusers_rows(probs, nfes, GRIDS)
        lines = ["# Few-NFE sampling on exact Gaussian-mixture fields", "", *head]
        lines += ["## Targets at 10 NFE", "", *targets_exact(rows, probs), ""]
        lines += ["## Recommendation per path", "", *recommendations(rows, probs, nfes), ""]
        write_report(lines, rows, probs, nfes, solvers, "exact", tag)

    if "trained" in parts:
        probs = trained_problems(Path(a.train_dir), 2000)
        rows = sweep(probs, nfes, solvers, GRIDS, RESULTS / f"few_nfe_trained{tag}.partial.csv")
        lines = [
            "# Few-NFE sampling of trained models (distance to the model's own tight solve)",
            "",
            *head,
            "## Target at 8 NFE",
            "",
            *targets_trained(rows, probs),
            "",
            "W2 and energy distance mostly measure the model, not the sampler: rank "
            "samplers by the endpoint RMS.",
            "",
        ]
        write_report(lines, rows, probs, nfes, solvers, "trained", tag)

    if "overhead" in parts:
        rows, net = overhead_rows(solvers, a.repeat)
        lines = [
            "# Few-NFE sampling: overhead beyond the network",
            "",
            *head,
            f"4x512 MLP (jfm.models.MLP, float32), batch 10,000, 2-D, 10 NFE budget; "
            f"one network evaluation {net * 1e3:.1f} ms (one jitted call, best of {a.repeat}); "
            "the hand loop is 10 Euler steps of the network in one jitted fori_loop (scaled "
            "to the solver's NFE). Overhead = 1 - baseline / solve; the target is judged on "
            "the hand loop (the network's evaluations with no solver around them).",
            "",
            "| solver | NFE | solve (ms) | NFE x network (ms) | hand loop (ms) | overhead vs "
            "network | overhead vs hand loop | target <= 5% |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['solver']} | {r['nfe']} | {r['seconds'] * 1e3:.1f} | "
                f"{r['network'] * 1e3:.1f} | {r['loop'] * 1e3:.1f} | "
                f"{100 * r['overhead']:.1f}% | {100 * r['overhead_loop']:.1f}% | "
                f"{'met' if r['overhead_loop'] <= 0.05 else 'missed'} |"
            )
        text = "\n".join(lines) + "\n"
        (RESULTS / f"few_nfe_overhead{tag}.md").write_text(text)
        print(text, flush=True)


if __name__ == "__main__":
    main()
