"""Minibatch OT speed: exact assignment, Sinkhorn plan and the OT-CFM train step.

Three parts, each timed alternately against its baselines in one process (median of
``--repeat`` rounds, after a warm-up call that compiles; compile times are not counted):

- ``assignment``: :func:`jfm.exact_ot_coupling` (``method="auto"``, jitted, on the device
  arrays ``x0, x1``) against torchcfm's ``OTPlanSampler("exact").sample_plan`` (POT's
  ``emd`` on torch's ``cdist**2``, then a draw from the plan), POT's ``ot.emd`` and scipy's
  ``linear_sum_assignment`` on a precomputed float64 cost (solver only), at each
  ``--sizes`` ``n``, on N(0, I) sources and 8-gaussians data (radius 5, std 1, as in
  torchcfm's 2-D experiments). Every permutation's cost is checked against scipy's optimum.
- ``sinkhorn``: :func:`jfm.sinkhorn_coupling` (plan and draw) against POT's ``ot.sinkhorn``
  (what torchcfm's ``OTPlanSampler("sinkhorn")`` calls) and torchcfm's ``sample_plan``,
  at the same absolute epsilon (``--eps`` times the mean cost) and marginal tolerance; the
  two plans are compared entrywise.
- ``step``: one OT-CFM training step (``jfm.make_train_step`` with ``cfm_loss(coupling=
  jfm.exact_ot_coupling)``) against the same step with the independent coupling, MLP
  4x512, batch ``--step-batch``.

Usage: python benchmarks/ot_assignment.py [--parts assignment sinkhorn step]
       [--sizes 256 512 1024 2048] [--repeat 5] [--out benchmarks/results/ot_assignment.md]
"""

import argparse
import functools
import os
import sys

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import _common  # noqa: E402

import jfm  # noqa: E402


def problem(n: int, seed: int = 0):
    k0, k1 = jr.split(jr.key(seed))
    x0 = jr.normal(k0, (n, 2), jnp.float32)
    x1 = jfm.data.eight_gaussians(n, key=k1, radius=5.0, std=1.0, dtype=jnp.float32)
    return x0, x1


def np_cost(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return ((a[:, None] - b[None]) ** 2).sum(-1)


def median_ms(times):
    return 1e3 * float(np.median(times))


def part_assignment(sizes, repeat, methods):
    import scipy.optimize

    try:
        import ot
    except ImportError:
        ot = None
    try:
        import torch
        from torchcfm.optimal_transport import OTPlanSampler

        sampler = OTPlanSampler("exact")
    except ImportError:
        torch = sampler = None
    rows = []
    for n in sizes:
        x0, x1 = problem(n)
        c = np_cost(x1, x0)  # c[j, i] = |x1_j - x0_i|^2
        r, col = scipy.optimize.linear_sum_assignment(c)
        opt = c[r, col].sum()
        fns, checks = {}, {}
        for m in methods:
            f = jax.jit(functools.partial(jfm.exact_ot_coupling, method=m))
            first, out = _common.first_call(lambda f=f: jax.block_until_ready(f(x0, x1)))
            # the cost of jfm's pairs, against scipy's optimum
            pairs = np_cost(out[0], x1).diagonal().sum()
            checks[f"jfm {m}"] = (pairs - opt, first)
            fns[f"jfm {m}"] = lambda f=f: jax.block_until_ready(f(x0, x1))
        if sampler is not None:
            t0, t1 = torch.from_numpy(np.asarray(x0)), torch.from_numpy(np.asarray(x1))
            fns["torchcfm exact"] = lambda: sampler.sample_plan(t0, t1)
        if ot is not None:
            a = np.full(n, 1.0 / n)
            fns["POT emd"] = lambda: ot.emd(a, a, c)
        fns["scipy LSA"] = lambda: scipy.optimize.linear_sum_assignment(c)
        fns = {k: fns[k] for k in fns if not (k == "scipy LSA" and n > 2048)}
        times = _common.alternate(fns, repeat)
        base = median_ms(times["torchcfm exact"]) if "torchcfm exact" in times else None
        for name, ts in times.items():
            ms = median_ms(ts)
            gap, first = checks.get(name, (None, None))
            rows.append(
                [
                    n,
                    name,
                    f"{ms:.2f}",
                    f"{base / ms:.2f}x" if base else "-",
                    "-" if gap is None else f"{gap:.2g}",
                    "-" if first is None else f"{first:.2f}",
                ]
            )
        print(*rows[-len(times) :], sep="\n", flush=True)
    return rows


def part_sinkhorn(sizes, repeat, eps_rel, tol):
    try:
        import ot
    except ImportError:
        print("POT not installed: sinkhorn part skipped (pip install pot)")
        return []
    try:
        import torch
        from torchcfm.optimal_transport import OTPlanSampler
    except ImportError:
        torch = OTPlanSampler = None
    rows = []
    for n in sizes:
        x0, x1 = problem(n)
        c = np_cost(x0, x1)
        eps = eps_rel * c.mean()
        a = np.full(n, 1.0 / n)
        coupling = jax.jit(
            lambda x0, x1, k: jfm.sinkhorn_coupling(
                x0,
                x1,
                key=k,
                epsilon=eps,
                relative_epsilon=None,
                threshold=tol,
                max_iterations=10_000,
            )
        )
        plan_fn = jax.jit(
            lambda x0, x1: jfm._couplings.sinkhorn_plan(x0, x1, eps, None, tol, 10_000)
        )
        key = jr.key(1)
        first, _ = _common.first_call(lambda: jax.block_until_ready(coupling(x0, x1, key)))
        p_jfm = np.asarray(plan_fn(x0, x1), np.float64)
        p_pot = ot.sinkhorn(a, a, c, reg=eps, stopThr=tol, numItermax=10_000)
        fns = {
            "jfm sinkhorn_coupling": lambda: jax.block_until_ready(coupling(x0, x1, key)),
            "POT sinkhorn": lambda: ot.sinkhorn(a, a, c, reg=eps, stopThr=tol, numItermax=10_000),
        }
        if OTPlanSampler is not None:
            s = OTPlanSampler("sinkhorn", reg=eps)
            t0, t1 = torch.from_numpy(np.asarray(x0)), torch.from_numpy(np.asarray(x1))
            fns["torchcfm sinkhorn"] = lambda: s.sample_plan(t0, t1)
        times = _common.alternate(fns, repeat)
        base = median_ms(times["POT sinkhorn"])
        diff = np.abs(p_jfm - p_pot).max() * n  # in units of the uniform mass 1/n
        marg = (np.abs(p_jfm.sum(1) - 1 / n).sum(), np.abs(p_pot.sum(1) - 1 / n).sum())
        for name, ts in times.items():
            ms = median_ms(ts)
            rows.append(
                [
                    n,
                    name,
                    f"{ms:.2f}",
                    f"{base / ms:.2f}x",
                    f"{diff:.1e}" if name.startswith("jfm") else "-",
                    f"{marg[0]:.1e}"
                    if name.startswith("jfm")
                    else (f"{marg[1]:.1e}" if name.startswith("POT") else "-"),
                    f"{first:.2f}" if name.startswith("jfm") else "-",
                ]
            )
        print(*rows[-len(times) :], sep="\n", flush=True)
    return rows


def part_step(batches, repeat):
    import optax
    from flax import nnx

    path = jfm.AffinePath(jfm.CondOT())
    net = jfm.models.MLP(2, hidden_features=512, depth=4, rngs=nnx.Rngs(0))
    apply, params = jfm.split_model(net)
    opt = optax.adam(1e-3)
    rows = []
    for batch in batches:
        x1 = problem(batch)[1]
        fns = {}
        for name, coupling in (("independent", None), ("exact OT", jfm.exact_ot_coupling)):
            loss = functools.partial(jfm.cfm_loss, path=path, coupling=coupling)
            step = jax.jit(jfm.make_train_step(apply, opt, loss))
            state = jfm.init_train_state(params, opt)
            key = jr.key(0)
            jax.block_until_ready(step(state, x1, key))
            fns[name] = lambda s=step, st=state: jax.block_until_ready(s(st, x1, key))
        times = _common.alternate(fns, repeat)
        base = median_ms(times["independent"])
        for name, ts in times.items():
            ms = median_ms(ts)
            rows.append([batch, name, f"{ms:.2f}", f"{ms / base:.2f}x"])
        print(*rows[-2:], sep="\n", flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", default=["assignment", "sinkhorn", "step"])
    p.add_argument("--sizes", nargs="+", type=int, default=[256, 512, 1024, 2048])
    p.add_argument("--sinkhorn-sizes", nargs="+", type=int, default=[256, 512, 1024])
    p.add_argument("--methods", nargs="+", default=["auto"])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--eps", type=float, default=0.05, help="Sinkhorn epsilon / mean cost")
    p.add_argument("--tol", type=float, default=1e-6, help="Sinkhorn marginal tolerance")
    p.add_argument("--step-batch", nargs="+", type=int, default=[512])
    p.add_argument("--torch-threads", type=int, default=1, help="torch and BLAS threads")
    p.add_argument("--out", default="benchmarks/results/ot_assignment.md")
    args = p.parse_args(argv)
    # The baselines' threads: one (on a shared machine, spinning OpenMP/BLAS threads slow
    # them down; one thread is their best case there).
    try:
        import torch

        torch.set_num_threads(args.torch_threads)
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.torch_threads)
    except ImportError:
        pass
    print(_common.header(), flush=True)
    sections = [f"# Minibatch OT speed\n\n{_common.header()}\n"]
    try:
        import ot
        import torchcfm

        sections.append(
            f"POT {ot.__version__}, torchcfm {torchcfm.__version__}; baselines with "
            f"{args.torch_threads} torch/BLAS thread(s)\n"
        )
    except ImportError as e:
        sections.append(f"baseline missing: {e}\n")
    cmd = "python benchmarks/ot_assignment.py " + " ".join(argv or sys.argv[1:])
    sections.append(f"Command: `{cmd.strip()}`; median of {args.repeat} alternated rounds.\n")

    def table(cols, rows):
        out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
        return "\n".join(out) + "\n"

    if "assignment" in args.parts:
        rows = part_assignment(args.sizes, args.repeat, args.methods)
        sections.append(
            "## Exact assignment\n\nspeed-up = torchcfm time / this time (> 1: faster than "
            "torchcfm); gap = cost of the pairs - scipy's optimum (sum of squared distances); "
            "first = first call (compile) in s.\n\n"
            + table(["n", "solver", "ms", "speed-up vs torchcfm", "gap", "first (s)"], rows)
        )
    if "sinkhorn" in args.parts:
        rows = part_sinkhorn(args.sinkhorn_sizes, args.repeat, args.eps, args.tol)
        sections.append(
            f"## Sinkhorn plan\n\nepsilon = {args.eps} x mean cost (absolute, the same in "
            f"both), marginal tolerance {args.tol:g} (ott-jax: L1 error of the marginal, POT: "
            "L2, checked every 10 iterations); jfm float32, POT float64. speed-up = POT "
            "time / this time; |dP| n = max entrywise plan difference in units of 1/n; "
            "marginal = L1 error of the row marginal.\n\n"
            + table(
                ["n", "solver", "ms", "speed-up vs POT", "|dP| n", "marginal", "first (s)"], rows
            )
        )
    if "step" in args.parts:
        rows = part_step(args.step_batch, args.repeat)
        sections.append(
            "## OT-CFM train step\n\nMLP 4x512, CondOT path, Adam; ratio = step time / "
            "independent-coupling step time.\n\n"
            + table(["batch", "coupling", "ms", "ratio"], rows)
        )
    text = "\n".join(sections)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
