"""Solver accuracy and work-precision on fields with known answers.

Fields: the exact marginal velocity of a Gaussian mixture (``jfm.GaussianMixture(...)
.velocity_field(path)``) in 2-D and in D = 64 under the CondOT, cosine and VP paths, and
Gaussian-to-Gaussian flows with a closed-form endpoint (``jfm.bench.gaussian_flow``).
References: per initial point, Dopri8 at rtol = atol = 1e-14 in float64, its own error
estimated by a Dopri8 solve at 1e-16 (``jfm.bench.reference_solution``);
the closed form for the Gaussian flows, where the Dopri8 reference's true error is also
reported (how good the estimate is).

For each diffrax solver (Euler, Heun, Midpoint, Ralston, Bosh3, the classical RK4 of
``jfm.bench``, Dopri5, Tsit5, Dopri8): fixed step counts and tolerances
(``jfm.bench.solver_sweep``): endpoint error (max and RMS over the points), log-likelihood
error (``jfm.log_prob`` with exact divergence vs the exact mixture log-density), NFE,
wall time after compilation (min of ``timeit.repeat``, ``block_until_ready``), plus the
convergence order of every fixed-step solver from a log-log fit. If torchdiffeq is
installed (``pip install -e ".[bench]"``), the same fields (a torch port of the mixture
velocity, checked against jfm to 1e-12) and the same initial points go through its
euler, midpoint, rk4 (fixed grid) and dopri5, dopri8 (adaptive) solvers, on the same
plots.

Outputs in ``benchmarks/results/``: ``solver_accuracy.md`` (tables), ``solver_accuracy.csv``
(every record), ``solver_accuracy_<problem>.png`` (error vs NFE, error vs time, and the
log-likelihood error vs NFE).

Usage::

    python benchmarks/solver_accuracy.py                  # the full sweep (~30 min, 2 cores)
    python benchmarks/solver_accuracy.py --quick          # 2-D only, fewer settings
    python benchmarks/solver_accuracy.py --dims 2 --paths condot --solvers Euler Heun RK4
"""

import argparse
import datetime
import math
import os
import platform
import re
import sys
import timeit

import jax

jax.config.update("jax_enable_x64", True)

import diffrax as dfx  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
import jfm  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
VP_T1 = 0.999  # VP's velocity is singular at t = 1 (sigma' = -inf): stop short of it


def make_path(name):
    return jfm.AffinePath({"condot": jfm.CondOT(), "cosine": jfm.Cosine(), "vp": jfm.VP()}[name])


def random_spd(key, k, d, lo, hi):
    """``k`` random ``d x d`` SPD matrices with eigenvalues in ``[lo^2, hi^2]``."""
    kq, ks = jr.split(key)
    q, _ = jnp.linalg.qr(jr.normal(kq, (k, d, d)))
    s = jr.uniform(ks, (k, d), minval=lo, maxval=hi)
    return jnp.einsum("kij,kj,klj->kil", q, s**2, q)


def make_gmm(key, d, k):
    km, kc, kw = jr.split(key, 3)
    means = 2.0 * jr.normal(km, (k, d)) / math.sqrt(max(1, d // 2))
    covs = random_spd(kc, k, d, 0.25, 0.6)
    w = jr.uniform(kw, (k,), minval=0.5, maxval=1.5)
    return jfm.GaussianMixture(means, covs, w / jnp.sum(w))


# -- torch port of the exact mixture velocity --------------------------------------------


def torch_schedule(name, vp=None):
    """``t -> (alpha, sigma, alpha', sigma')`` in torch, the same formulas as jfm's."""
    import torch

    if name == "condot":
        return lambda t: (t, 1 - t, torch.ones_like(t), -torch.ones_like(t))
    if name == "cosine":
        h = 0.5 * math.pi
        return lambda t: (
            torch.sin(h * t),
            torch.cos(h * t),
            h * torch.cos(h * t),
            -h * torch.sin(h * t),
        )
    bmin, bmax = float(vp.beta_min), float(vp.beta_max)

    def f(t):
        s = 1 - t
        a = torch.exp(-0.25 * s**2 * (bmax - bmin) - 0.5 * s * bmin)
        sig = torch.sqrt(-torch.expm1(2 * torch.log(a)))
        da = 0.5 * (bmin + s * (bmax - bmin)) * a
        return a, sig, da, -a * da / sig

    return f


class TorchMixtureVelocity:
    """The marginal velocity of a Gaussian mixture under an affine path, batched, in torch.

    The maths of ``jfm.MixtureField`` (kind="velocity"): responsibilities by Cholesky
    solves and a softmax, ``u = a' E[x1|x] + s' s sum_k r_k C_k^{-1}(x - a mu_k)``.
    Counts its calls (``nfe``) for torchdiffeq, which does not report them.
    """

    def __init__(self, gmm, path_name, path):
        import torch

        self.means = torch.tensor(np.asarray(gmm.means))
        self.covs = torch.tensor(np.asarray(gmm.covs))
        self.logw = torch.log(torch.tensor(np.asarray(gmm.weights)))
        self.sched = torch_schedule(path_name, path.schedule)
        self.nfe = 0

    def __call__(self, t, x):
        import torch

        self.nfe += 1
        a, s, da, ds = self.sched(t)
        k, d = self.means.shape
        eye = torch.eye(d, dtype=x.dtype)
        chol = torch.linalg.cholesky(a**2 * self.covs + s**2 * eye)  # [K, D, D]
        diff = (x[:, None, :] - a * self.means[None]).unsqueeze(-1)  # [B, K, D, 1]
        z = torch.linalg.solve_triangular(chol, diff, upper=False)
        y = torch.linalg.solve_triangular(chol.transpose(-1, -2), z, upper=True)[..., 0]
        logdet = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        logp = self.logw - 0.5 * (z[..., 0] ** 2).sum(-1) - logdet - 0.5 * d * math.log(2 * math.pi)
        r = torch.softmax(logp, dim=1)  # [B, K]
        y_bar = torch.einsum("bk,bkd->bd", r, y)
        x1_hat = torch.einsum(
            "bk,bkd->bd", r, self.means[None] + a * torch.einsum("kij,bkj->bki", self.covs, y)
        )
        return da * x1_hat + (ds * s) * y_bar


def check_torch_port(field_t, problem):
    """Max |u_torch - u_jfm| over a few points and times (must be <= 1e-12)."""
    import torch

    x = problem.x0[:8]
    worst = 0.0
    for t in (0.0, 0.3, 0.7, problem.t1):
        u_j = np.asarray(jax.vmap(problem.field, in_axes=(None, 0, None))(t, x, None))
        u_t = field_t(torch.tensor(t, dtype=torch.float64), torch.tensor(np.asarray(x))).numpy()
        worst = max(worst, float(np.max(np.abs(u_j - u_t)) / max(1.0, np.max(np.abs(u_j)))))
    return worst


def torchdiffeq_sweep(problem, field_t, steps, tols, repeat, fixed, adaptive):
    """The same problem through torchdiffeq: records in jfm.bench.SweepRecord form."""
    import torch
    import torchdiffeq

    x0 = torch.tensor(np.asarray(problem.x0))
    ref = np.asarray(problem.reference.x1)
    records = []
    settings = [(m, "fixed", n, None) for m in fixed for n in steps]
    settings += [(m, "adaptive", None, v) for m in adaptive for v in tols]
    for method, mode, n, tol in settings:
        if mode == "fixed":
            ts = torch.linspace(problem.t0, problem.t1, n + 1, dtype=torch.float64)
            kw = dict(method=method)
        else:
            ts = torch.tensor([problem.t0, problem.t1], dtype=torch.float64)
            # step_t: end the last step exactly at t1. By default torchdiffeq steps past
            # t1 and interpolates back, evaluating the field beyond t1, where VP's is
            # undefined (t > 1).
            opts = dict(max_num_steps=4096, step_t=ts[-1:])
            kw = dict(method=method, rtol=tol, atol=tol, options=opts)

        def run(ts=ts, kw=kw):
            with torch.no_grad():
                return torchdiffeq.odeint(field_t, x0, ts, **kw)[-1]

        field_t.nfe = 0
        try:
            start = timeit.default_timer()
            x1 = run()
            first = timeit.default_timer() - start
            nfe = field_t.nfe
            best = min(timeit.repeat(run, number=1, repeat=repeat))
            e_max, e_rms = jfm.bench.endpoint_errors(x1.numpy(), ref)
        except (AssertionError, RuntimeError) as err:  # max_num_steps, non-finite
            print(f"  torchdiffeq {method} {mode} {n or tol}: failed ({err})")
            nfe, best, first, e_max, e_rms = field_t.nfe, math.nan, math.nan, math.nan, math.nan
        records.append(
            jfm.bench.SweepRecord(
                problem=problem.name,
                library="torchdiffeq",
                solver=method,
                mode=mode,
                steps=n,
                tol=tol,
                nfe=float(nfe),
                err_max=e_max,
                err_rms=e_rms,
                time_s=best,
                compile_s=first,
                ref_error=problem.error_floor,
            )
        )
    return records


# -- main ---------------------------------------------------------------------------------


def slug(name):
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def environment():
    dev = jax.devices()[0]
    lines = [
        f"- date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores visible (shared), "
        f"{platform.platform()}; jax device {dev.platform} ({dev.device_kind})",
        f"- python {platform.python_version()}, jax {jax.__version__}, diffrax "
        f"{dfx.__version__}, equinox {eqx.__version__}, numpy {np.__version__}, jfm "
        f"{jfm.__version__}",
    ]
    try:
        import torch
        import torchdiffeq

        lines.append(
            f"- torch {torch.__version__} ({torch.get_num_threads()} threads), torchdiffeq "
            f"{torchdiffeq.__version__}"
        )
    except ImportError:
        lines.append("- torchdiffeq: not installed (torch runs skipped)")
    lines.append(f"- load average at start: {os.getloadavg()}")
    return lines


def build_problems(args, key):
    problems = []
    for d in args.dims:
        kd = jr.fold_in(key, d)
        gmm = make_gmm(jr.fold_in(kd, 0), d, args.components)
        n = args.points_2d if d <= 2 else args.points_hd
        m = args.logp_points_2d if d <= 2 else args.logp_points_hd
        x0 = jr.normal(jr.fold_in(kd, 1), (n, d))
        if args.gaussian:
            g = make_gmm(jr.fold_in(kd, 3), d, 1)
            path = make_path(args.gaussian_path)
            t1 = VP_T1 if args.gaussian_path == "vp" else 1.0
            pts = g.marginal(path, t1).sample(m, key=jr.fold_in(kd, 4)) if m > 0 else None
            prob = jfm.bench.gaussian_problem(
                g.means[0],
                g.covs[0],
                path,
                x0,
                t1=t1,
                logp_points=pts,
                name=f"Gaussian D={d} {args.gaussian_path}",
            )
            problems.append((prob, ("gauss", g, args.gaussian_path, path)))
        for pname in args.paths:
            path = make_path(pname)
            t1 = VP_T1 if pname == "vp" else 1.0
            pts = gmm.marginal(path, t1).sample(m, key=jr.fold_in(kd, 2)) if m > 0 else None
            prob = jfm.bench.mixture_problem(
                gmm,
                path,
                x0,
                ref_rtol=args.ref_tol,
                ref_atol=args.ref_tol,
                t1=t1,
                logp_points=pts,
                name=f"GMM K={args.components} D={d} {pname}",
            )
            problems.append((prob, ("gmm", gmm, pname, path)))
            print(f"reference of {prob.name}: {prob.reference.method}", flush=True)
    return problems


def write_report(args, cli, env, names, records, ref_lines, port_lines, check_lines, t_start):
    """Write the Markdown and CSV outputs for the problems done so far."""
    jfm.bench.write_csv(records, os.path.join(args.out, f"solver_accuracy{args.tag}.csv"))
    orders = jfm.bench.convergence_orders(records, max_points=args.fit_points)
    order_tab = {}
    for prob_name, lib, solver, order, used in orders:
        order_tab.setdefault((lib, solver), {})[prob_name] = (order, used)
    names = list(names)
    classical = {"Euler": 1, "Heun": 2, "Midpoint": 2, "Ralston": 2, "Bosh3": 3, "RK4": 4}
    classical.update({"Dopri5": 5, "Tsit5": 5, "Dopri8": 8, "euler": 1, "midpoint": 2, "rk4": 4})
    order_lines = [
        "| library | solver | classical | " + " | ".join(names) + " |",
        "|---|---|---:|" + "---:|" * len(names),
    ]
    for (lib, solver), per in order_tab.items():
        cells = [
            "-" if n not in per or not np.isfinite(per[n][0]) else f"{per[n][0]:.2f} ({per[n][1]})"
            for n in names
        ]
        order_lines.append(
            f"| {lib} | {solver} | {classical.get(solver, '?')} | " + " | ".join(cells) + " |"
        )
    print("\n".join(order_lines))

    # work to reach an accuracy: fewest NFE and least time with err_rms <= target
    speed_lines = []
    for target in (1e-3, 1e-6):
        speed_lines += [
            f"**err RMS <= {target:.0e}**: cheapest setting per problem and library "
            "(NFE, time) and the ratio of the best times, torchdiffeq / jfm (> 1: jfm faster)",
            "",
            "| problem | jfm best (NFE, ms) | torchdiffeq best (NFE, ms) | time torch / jfm |",
            "|---|---|---|---:|",
        ]
        for name in names:
            best = {}
            for lib in ("jfm", "torchdiffeq"):
                ok = [
                    r
                    for r in records
                    if r.problem == name and r.library == lib and r.err_rms <= target
                ]
                if ok:
                    r = min(ok, key=lambda r: r.time_s)
                    best[lib] = r
            cell = lambda r: (
                "-" if r is None else f"{r.solver} {r.setting} ({r.nfe:.0f}, {1e3 * r.time_s:.2f})"
            )
            ratio = (
                f"{best['torchdiffeq'].time_s / best['jfm'].time_s:.1f}" if len(best) == 2 else "-"
            )
            speed_lines.append(
                f"| {name} | {cell(best.get('jfm'))} | {cell(best.get('torchdiffeq'))} | {ratio} |"
            )
        speed_lines.append("")

    text = [
        "# Solver accuracy and work-precision on fields with known answers",
        "",
        *env,
        f"- command: `python benchmarks/solver_accuracy.py {' '.join(cli)}`",
        f"- total run time: {timeit.default_timer() - t_start:.0f} s",
        "",
        'All solves in float64. jfm: `jfm.sample_ode(..., batch="joint")` (one solve of the '
        "batch, shared steps) through `jfm.bench.solver_sweep`; adaptive: rtol = atol = tol, "
        "max_steps 4096. Errors per point are Euclidean norms over the event, max and RMS over "
        "the points; times are the minimum of "
        f"{args.repeat} runs after compilation and one warm-up, on a shared 2-core CPU "
        "(ratios within one run are what to read). torchdiffeq: `odeint` on the same batch "
        "(fixed: a grid of N steps; adaptive: rtol = atol = tol, its RMS norm over the batch), "
        "NFE counted by calls of the torch field.",
        "",
        "## References",
        "",
        "| problem | points | time span | reference | its error (max) "
        "| solver reference vs closed form |",
        "|---|---:|---|---|---:|---|",
        *ref_lines,
        "",
        "Is the reference's error below the smallest measured error? (reference error: its "
        "own estimate, max over the points; round-off: 64 eps max|x|; floor = the larger of "
        "the two: errors within 10x of the floor are marked * in the table and left out of "
        "the order fit)",
        "",
        "| problem | reference error | round-off | smallest measured err max "
        "| reference error < smallest | smallest above 10x round-off | reference error < it "
        "| resolved settings (> 10x floor) |",
        "|---|---:|---:|---:|---|---:|---|---:|",
        *check_lines,
        "",
    ]
    if port_lines:
        text += [
            "Torch port of the mixture velocity vs `jfm.MixtureField` (max relative "
            "deviation over 8 points x 4 times):",
            "",
            "| problem | max deviation | <= 1e-12 |",
            "|---|---:|---|",
            *port_lines,
            "",
        ]
    text += [
        "## Measured convergence order",
        "",
        f"Log-log fit of err RMS vs N over the finest {args.fit_points} resolved step "
        "counts (points used in brackets).",
        "",
        *order_lines,
        "",
        "## Work to reach an accuracy",
        "",
        *speed_lines,
        "## All settings",
        "",
        "Per problem; figures: `solver_accuracy_<problem>.png` (error vs NFE, error vs time, "
        "log-likelihood error vs NFE of the likelihood solve).",
        "",
        jfm.bench.records_to_markdown(records),
        "",
    ]
    out = os.path.join(args.out, f"solver_accuracy{args.tag}.md")
    with open(out, "w") as fh:
        fh.write("\n".join(text))
    print(f"wrote {out}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dims", type=int, nargs="+", default=[2, 64])
    p.add_argument("--paths", nargs="*", default=["condot", "cosine", "vp"])
    p.add_argument("--components", type=int, default=4, help="mixture components K")
    p.add_argument("--points-2d", type=int, default=256, help="initial points, D = 2")
    p.add_argument("--points-hd", type=int, default=32, help="initial points, D > 2")
    p.add_argument("--logp-points-2d", type=int, default=32, help="likelihood points, D=2")
    p.add_argument("--logp-points-hd", type=int, default=4, help="likelihood points, D>2")
    p.add_argument("--no-gaussian", dest="gaussian", action="store_false")
    p.add_argument("--gaussian-path", default="cosine", choices=["condot", "cosine", "vp"])
    p.add_argument("--solvers", nargs="+", default=list(jfm.bench.default_solvers()))
    p.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    p.add_argument("--tols", type=float, nargs="+", default=[1e-3, 1e-5, 1e-7, 1e-9])
    p.add_argument("--ref-tol", type=float, default=1e-14)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--torch-threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--torch-repeat", type=int, default=2, help="timing repeats, torch")
    p.add_argument("--fit-points", type=int, default=4, help="finest N used by the order fit")
    p.add_argument("--no-torch", dest="torch", action="store_false")
    p.add_argument("--quick", action="store_true", help="2-D, condot+vp, fewer settings")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--tag", default="", help="suffix of the output files, e.g. _2d")
    args = p.parse_args(argv)
    cli = sys.argv[1:] if argv is None else list(argv)
    if args.quick:
        args.dims, args.paths = [2], ["condot", "vp"]
        args.steps, args.tols = [8, 16, 32, 64], [1e-3, 1e-5, 1e-7]
        args.points_2d, args.logp_points_2d = 64, 8
    all_solvers = jfm.bench.default_solvers()
    unknown = set(args.solvers) - set(all_solvers)
    if unknown:
        p.error(f"unknown solvers {sorted(unknown)}; choose from {list(all_solvers)}")
    solvers = {n: all_solvers[n] for n in args.solvers}
    has_torch = False
    if args.torch:
        try:
            import torch
            import torchdiffeq  # noqa: F401

            has_torch = True
            # One intra-op thread: on a small shared CPU torch's spinning thread pool
            # slows every small op down by an order of magnitude.
            torch.set_num_threads(args.torch_threads)
        except ImportError:
            print("torchdiffeq not importable: skipping the torch runs")

    env = environment()
    print("\n".join(env), flush=True)
    os.makedirs(args.out, exist_ok=True)
    key = jr.key(0)
    t_start = timeit.default_timer()
    problems = build_problems(args, key)
    print(f"references built in {timeit.default_timer() - t_start:.0f} s", flush=True)

    records, ref_lines, port_lines, check_lines = [], [], [], []
    for prob, (kind, mix, pname, path) in problems:
        line = (
            f"| {prob.name} | {prob.x0.shape[0]} | {prob.t0:g} -> {prob.t1:g} | "
            f"{prob.reference.method} | {float(np.max(np.asarray(prob.reference.error))):.1e} |"
        )
        if kind == "gauss":  # how good is the solver reference (and its estimate)?
            sref = jfm.bench.reference_solution(
                prob.field, prob.x0, rtol=args.ref_tol, atol=args.ref_tol, t1=prob.t1
            )
            true_err, _ = jfm.bench.endpoint_errors(sref.x1, prob.reference.x1)
            line += (
                f" Dopri8 at {args.ref_tol:.0e}: true error {true_err:.1e}, own estimate "
                f"{float(np.max(np.asarray(sref.error))):.1e} |"
            )
        else:
            line += " - |"
        ref_lines.append(line)
        print(f"== {prob.name}: floor {prob.error_floor:.1e}", flush=True)
        t0 = timeit.default_timer()
        recs = jfm.bench.solver_sweep(
            prob, solvers, steps=args.steps, tolerances=args.tols, repeat=args.repeat
        )
        print(f"   jfm sweep {timeit.default_timer() - t0:.0f} s", flush=True)
        if has_torch:
            field_t = TorchMixtureVelocity(mix, pname, path)
            dev = check_torch_port(field_t, prob)
            port_lines.append(f"| {prob.name} | {dev:.1e} | {'OK' if dev <= 1e-12 else 'FAIL'} |")
            if dev > 1e-12:
                print(f"   torch port disagrees with jfm by {dev:.1e}: skipping torch runs")
            else:
                t0 = timeit.default_timer()
                recs += torchdiffeq_sweep(
                    prob,
                    field_t,
                    args.steps,
                    args.tols,
                    args.torch_repeat,
                    fixed=["euler", "midpoint", "rk4"],
                    adaptive=["dopri5", "dopri8"],
                )
                print(f"   torchdiffeq sweep {timeit.default_timer() - t0:.0f} s", flush=True)
        finite = [r.err_max for r in recs if np.isfinite(r.err_max)]
        smallest = min(finite) if finite else math.nan
        resolved = sum(r.err_max > 10 * prob.error_floor for r in recs if np.isfinite(r.err_max))
        ref_err = float(np.max(np.asarray(prob.reference.error)))
        x_ref = np.asarray(prob.reference.x1)
        roundoff = 64 * np.finfo(x_ref.dtype).eps * max(1.0, float(np.max(np.abs(x_ref))))
        above = [e for e in finite if e > 10 * roundoff]
        smallest_above = min(above) if above else math.nan
        check_lines.append(
            f"| {prob.name} | {ref_err:.1e} | {roundoff:.1e} | {smallest:.1e} | "
            f"{'yes' if smallest > ref_err else 'NO'} | {smallest_above:.1e} | "
            f"{'yes' if smallest_above > ref_err else 'NO'} | {resolved}/{len(finite)} |"
        )
        records += recs
        # plots: error vs NFE, error vs time, log-likelihood error vs NFE
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
        jfm.bench.plot_work_precision(recs, x="nfe", ax=axes[0], title=f"{prob.name}: error vs NFE")
        jfm.bench.plot_work_precision(recs, x="time_s", ax=axes[1], title="error vs wall time")
        jrecs = [r for r in recs if r.library == "jfm" and np.isfinite(r.logp_err_rms)]
        if jrecs:
            jfm.bench.plot_work_precision(
                jrecs,
                x="logp_nfe",
                y="logp_err_rms",
                ax=axes[2],
                title="log-likelihood error (jfm)",
            )
        else:
            axes[2].set_axis_off()
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, f"solver_accuracy_{slug(prob.name)}.png"), dpi=80)
        plt.close(fig)

        write_report(
            args,
            cli,
            env,
            [pr.name for pr, _ in problems[: len(check_lines)]],
            records,
            ref_lines,
            port_lines,
            check_lines,
            t_start,
        )


if __name__ == "__main__":
    main()
