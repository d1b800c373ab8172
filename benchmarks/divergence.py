"""Cost of one divergence estimate relative to one forward pass of an MLP field.

Workload: a per-example MLP field ``f(t, x, params)`` written in plain JAX (input
``[x, t]``, ``--depth`` hidden layers of width ``--hidden`` with SiLU, linear output of
dimension D), batched with ``jax.vmap`` over ``--batch`` examples, in ``--dtype``.
For each D it times (all jitted, each the whole batch):

- ``forward``: ``vmap(f)``, the baseline;
- ``jvp-Hutchinson``: ``jfm.divergence_hutchinson`` (forward mode, one probe);
- ``vjp-Hutchinson``: the same estimator in reverse mode (``method="vjp"``);
- ``exact (jacfwd)`` and ``exact (jvp, chunk C)``: ``jfm.divergence_exact`` with
  ``method="jacfwd"`` / ``"jvp"``, only up to ``--exact-max-dim`` (they cost about D
  forward passes; jacfwd also holds the D x D Jacobian per example);
- ``guidance``: one evaluation of ``jfm.density_guidance`` (Hutchinson, one probe): the
  field plus the gradient of the divergence estimate.

Protocol (STYLE.md section 9): compile first (timed separately, from
``jax.jit(...).lower(...).compile()``), one warm-up call, then the minimum over R runs
of ``timeit.repeat(lambda: jax.block_until_ready(f(*a)), number=1, repeat=1)``, the
cases of one D timed round-robin (forward, jvp, vjp, ... in every round) so that a
change of machine load hits the forward pass and the estimators alike. The
probes are fixed inputs (drawn outside the timed function), so the timings compare the
derivative passes, not random number generation. A second table compares the two exact
methods across small D, which sets the ``method="auto"`` rule of
``jfm.divergence_exact``.

Usage::

    python benchmarks/divergence.py                       # the default sweep
    python benchmarks/divergence.py --dims 2 64 --repeat 5 --out /tmp/div.md
"""

import argparse
import datetime
import math
import os
import platform
import sys
import timeit

import diffrax
import equinox
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import jfm


def init_mlp(key, d, hidden, depth, dtype):
    """Weights of the MLP ``[x, t] -> hidden x depth (SiLU) -> d``, LeCun-normal init."""
    sizes = [d + 1] + [hidden] * depth + [d]
    params = []
    for k, (n_in, n_out) in zip(jr.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
        w = jr.normal(k, (n_in, n_out), dtype) / math.sqrt(n_in)
        params.append((w, jnp.zeros((n_out,), dtype)))
    return params


def mlp_field(t, x, params):
    """Per-example field: ``x (D,)`` and scalar ``t`` -> ``(D,)``; params travel in args."""
    h = jnp.concatenate([x, jnp.reshape(t, (1,)).astype(x.dtype)])
    for w, b in params[:-1]:
        h = jax.nn.silu(h @ w + b)
    w, b = params[-1]
    return h @ w + b


def compile_fn(fn, *args):
    """``(compiled, compile seconds)`` of ``jax.jit(fn)`` at ``args``, warmed up once."""
    t0 = timeit.default_timer()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = timeit.default_timer() - t0
    jax.block_until_ready(compiled(*args))  # warm-up
    return compiled, compile_s


def run_once(compiled, args):
    return min(timeit.repeat(lambda: jax.block_until_ready(compiled(*args)), number=1, repeat=1))


def interleaved(cases, repeat):
    """Time several jitted cases round-robin, so that load changes hit all of them alike.

    ``cases``: ``{name: (fn, args, rounds)}``; each case runs in the first ``rounds`` of
    the ``repeat`` rounds. Returns ``{name: (compile seconds, min run seconds)}``.
    """
    compiled = {n: compile_fn(fn, *a) + (a, rounds) for n, (fn, a, rounds) in cases.items()}
    best = {n: math.inf for n in cases}
    for r in range(repeat):
        for n, (c, _, a, rounds) in compiled.items():
            if r < rounds:
                best[n] = min(best[n], run_once(c, a))
    return {n: (compiled[n][1], best[n]) for n in cases}


def bench_dim(d, args, key):
    dtype = jnp.dtype(args.dtype)
    kp, kx, ku = jr.split(key, 3)
    params = init_mlp(kp, d, args.hidden, args.depth, dtype)
    x = jr.normal(kx, (args.batch, d), dtype)
    u = jr.rademacher(ku, (args.batch, 1, d), dtype=dtype)  # one probe per example
    t = jnp.asarray(0.5, dtype)
    f = mlp_field

    def forward(t, x, params):
        return jax.vmap(f, in_axes=(None, 0, None))(t, x, params)

    def hutch(method):
        def run(t, x, u, params):
            one = lambda xi, ui: jfm.divergence_hutchinson(
                f, t, xi, params, probe=ui, method=method
            )
            return jax.vmap(one)(x, u)

        return run

    def exact(method, chunk):
        def run(t, x, params):
            one = lambda xi: jfm.divergence_exact(f, t, xi, params, method=method, chunk=chunk)
            return jax.vmap(one)(x)

        return run

    def guidance(t, x, key, params):
        g = jfm.density_guidance(f, 0.1, key=key)
        return jax.vmap(g, in_axes=(None, 0, None))(t, x, params)

    r = args.repeat
    cases = {
        "forward": (forward, (t, x, params), r),
        "jvp-Hutchinson": (hutch("jvp"), (t, x, u, params), r),
        "vjp-Hutchinson": (hutch("vjp"), (t, x, u, params), r),
        "guidance (Hutchinson)": (guidance, (t, x, jr.key(0), params), r),
    }
    if d <= args.exact_max_dim:
        if d <= args.jacfwd_max_dim:
            cases["exact (jacfwd)"] = (exact("jacfwd", None), (t, x, params), max(1, r // 3))
        cases["exact (jvp, chunked)"] = (
            exact("jvp", min(d, args.chunk)),
            (t, x, params),
            max(1, r // 3),
        )
    rows = interleaved(cases, r)
    return rows


def exact_rule_table(args, key):
    """jacfwd vs chunked jvp for small D: where ``method="auto"`` switches."""
    dtype = jnp.dtype(args.dtype)
    lines = [
        f"| D | jacfwd (ms) | jvp, chunk min(D, {args.chunk}) (ms) | jvp / jacfwd |",
        "|---:|---:|---:|---:|",
    ]
    for d in args.rule_dims:
        kp, kx = jr.split(jr.fold_in(key, d))
        params = init_mlp(kp, d, args.hidden, args.depth, dtype)
        x = jr.normal(kx, (args.batch, d), dtype)
        t = jnp.asarray(0.5, dtype)
        cases = {}
        for method in ("jacfwd", "jvp"):

            def run(t, x, params, method=method):
                chunk = None if method == "jacfwd" else min(d, args.chunk)
                one = lambda xi: jfm.divergence_exact(
                    mlp_field, t, xi, params, method=method, chunk=chunk
                )
                return jax.vmap(one)(x)

            cases[method] = (run, (t, x, params), args.repeat)
        out = interleaved(cases, args.repeat)
        res = [out["jacfwd"][1], out["jvp"][1]]
        lines.append(f"| {d} | {1e3 * res[0]:.2f} | {1e3 * res[1]:.2f} | {res[1] / res[0]:.2f} |")
    return lines


def environment():
    dev = jax.devices()[0]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return [
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- device: {dev.platform} ({dev.device_kind}), {os.cpu_count()} CPU cores visible",
        f"- python {platform.python_version()}, jax {jax.__version__}, "
        f"jaxlib {jax.lib.__version__ if hasattr(jax.lib, '__version__') else '?'}, "
        f"diffrax {diffrax.__version__}, equinox {equinox.__version__}, "
        f"numpy {np.__version__}, jfm {jfm.__version__}",
        f"- load average at start (1, 5, 15 min): {load}",
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dims", type=int, nargs="+", default=[2, 64, 784, 3072])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--repeat", type=int, default=20, help="timeit repeats (min is reported)")
    p.add_argument("--chunk", type=int, default=16, help="chunk of exact jvp")
    p.add_argument(
        "--exact-max-dim",
        type=int,
        default=784,
        help="skip exact divergence above this D (it costs about D forward passes)",
    )
    p.add_argument(
        "--jacfwd-max-dim",
        type=int,
        default=64,
        help="skip exact jacfwd above this D (it holds the D x D Jacobian per example)",
    )
    p.add_argument("--rule-dims", type=int, nargs="*", default=[2, 4, 8, 16, 32, 64])
    p.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "results", "divergence.md")
    )
    args = p.parse_args(argv)
    cli = sys.argv[1:] if argv is None else list(argv)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)

    env = environment()
    print("\n".join(env), flush=True)
    key = jr.key(0)
    names = [
        "jvp-Hutchinson",
        "vjp-Hutchinson",
        "exact (jacfwd)",
        "exact (jvp, chunked)",
        "guidance (Hutchinson)",
    ]
    rule_line = "|---:" * (len(names) + 2) + "|"
    lines = ["| D | forward | " + " | ".join(names) + " |", rule_line]
    compile_lines = ["| D | forward | " + " | ".join(names) + " |", rule_line]
    checks = []
    for d in args.dims:
        rows = bench_dim(d, args, jr.fold_in(key, d))
        ratio = {n: rows[n][1] / rows["forward"][1] for n in rows}
        checks.append(
            f"- D = {d}: jvp-Hutchinson {ratio['jvp-Hutchinson']:.2f}x forward "
            f"({'<=' if ratio['jvp-Hutchinson'] <= 2 else '>'} 2x), "
            f"{'cheaper' if ratio['jvp-Hutchinson'] < ratio['vjp-Hutchinson'] else 'NOT cheaper'}"
            f" than vjp-Hutchinson ({ratio['vjp-Hutchinson']:.2f}x)"
            + (
                f"; exact chunked jvp {ratio['exact (jvp, chunked)'] / d:.2f} forward passes "
                "per dimension"
                if "exact (jvp, chunked)" in ratio
                else ""
            )
        )
        fwd = rows["forward"][1]
        cells = [
            f"{1e3 * rows[n][1]:.2f} ({rows[n][1] / fwd:.2f}x)" if n in rows else "skipped"
            for n in names
        ]
        ccells = [f"{rows[n][0]:.1f}" if n in rows else "-" for n in names]
        line = f"| {d} | {1e3 * fwd:.2f} | " + " | ".join(cells) + " |"
        lines.append(line)
        compile_lines.append(f"| {d} | {rows['forward'][0]:.1f} | " + " | ".join(ccells) + " |")
        print(line, flush=True)
    rule = exact_rule_table(args, key) if args.rule_dims else []

    text = [
        "# Divergence cost relative to one forward pass",
        "",
        f"MLP field in plain JAX: [x, t] -> {args.depth} x {args.hidden} SiLU -> D, "
        f"batch {args.batch} via jax.vmap, {args.dtype}. Times are the minimum over "
        f"{args.repeat} runs (exact jvp: {max(1, args.repeat // 3)}) of the jitted batch, "
        "after compilation and a warm-up call; the ratio is to the forward pass at the "
        f"same D. Exact jvp uses chunks of min(D, {args.chunk}) basis vectors. One "
        "Rademacher probe for Hutchinson (fixed input). `skipped`: exact "
        f"divergence is only run for D <= {args.exact_max_dim} (jacfwd for D <= "
        f"{args.jacfwd_max_dim}): it costs about D forward passes.",
        "",
        *env,
        f"- command: `python benchmarks/divergence.py {' '.join(cli)}`",
        "",
        "## Run time (ms) and ratio to the forward pass",
        "",
        *lines,
        "",
        "## The issue's targets",
        "",
        "jvp-Hutchinson <= 2x a forward pass at D = 3072 and cheaper than vjp-Hutchinson; "
        "exact divergence by chunked jvp no slower than D forward passes (<= 1 per "
        "dimension):",
        "",
        *checks,
        "",
        "## Compile time (s)",
        "",
        *compile_lines,
    ]
    if rule:
        text += [
            "",
            '## Exact divergence: jacfwd vs chunked jvp (the `method="auto"` rule)',
            "",
            *rule,
        ]
        print("\n".join(rule))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write("\n".join(text) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
