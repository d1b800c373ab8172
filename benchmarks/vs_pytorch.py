"""Head-to-head speed: jfm against Meta's flow_matching (PyTorch), same field, same work.

Both libraries get the very same network (jfm.models.MLP, its weights copied into an
equal torch module; the two fields are checked to agree to float32 round-off) and the
same hyperparameters. Workloads:

  W1  training: MLP 4x512 SiLU, CondOT CFM loss, batch 4096, Adam(1e-3): steady-state
      steps/s after the first (compiling) step; compile time separately.
  W2  sampling N = 10,000 points: Euler 100 steps; Dopri5 at rtol = atol = 1e-5 (wall
      time and NFE).
  W3  log-likelihood of 2,000 points, Dopri5 1e-5, exact and Hutchinson divergence
      (benchmarks/likelihood.py, the same code).
  W5  small model: MLP 3x64 SELU, batch 256, AdamW(1e-3, weight decay 0.01): steps/s;
      sampling 1,000 points with Dopri5 1e-5.

jfm trains the way users drive it: ``jax.jit(jfm.make_train_step(...),
donate_argnums=0)`` called once per step from a Python loop, and ``jfm.fit`` (one call
per step, and ``steps_per_call=--scan``: that many steps fused into one call by
``jfm.scan_train_step``). flow_matching
trains the way its examples do: eager torch, ``AffineProbPath(CondOTScheduler())`` for
x_t and the target, ``torch.optim``. Sampling: ``jfm.sample_ode`` (one joint solve) vs
``ODESolver.sample`` (torchdiffeq, joint). All figures are medians over alternated
repeats in one process; ratios are jfm speed / anchor speed (> 1: jfm faster). FLOP
rates count the matrix products only and are compared with the rate that bare
``jnp.dot`` reaches on the same shapes, measured in this run.

Usage (full sizes are the defaults; every size is a flag):
  python benchmarks/vs_pytorch.py [--repeat 3] [--workloads W1 W2 W3 W5]
      [--w2-n 10000] [--w3-n 2000] [--train-steps 10] [--fit-steps 300]
"""

import os
import sys

# --single-thread: one thread for XLA and for torch (set before jax is imported). On a
# shared, oversubscribed machine this avoids threads of one process waiting on each other
# (torch's OpenMP barriers suffer most); both libraries get the same.
if "--single-thread" in sys.argv and "intra_op" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    )

import argparse
import functools

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

import jfm

sys.path.insert(0, os.path.dirname(__file__))
from _common import (  # noqa: E402
    CountingVelocity,
    alternate,
    check_same_field,
    first_call,
    gemm_ceiling,
    gemm_products,
    header,
    mlp_flops,
    torch_gemm_rate,
    torch_mlp,
    torch_versions,
    train_flops,
    train_jfm_mlp,
    write_csv,
)
from likelihood import likelihood_rows, write_results  # noqa: E402

EMB = 64
BIG = dict(hidden=512, depth=4, activation="silu")
SMALL = dict(hidden=64, depth=3, activation="selu")


def widths(cfg):
    return [2 + EMB] + [cfg["hidden"]] * cfg["depth"] + [2]


def row(workload, unit, jfm_v, anchor_v, higher_is_better, **extra):
    ratio = jfm_v / anchor_v if higher_is_better else anchor_v / jfm_v
    return dict(workload=workload, unit=unit, jfm=jfm_v, anchor=anchor_v, ratio=ratio, **extra)


# -- training ----------------------------------------------------------------------------


def train_rows(cfg, *, batch, opt_name, steps, repeat, scan, key, label):
    import torch
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import CondOTScheduler

    lr, wd = 1e-3, 0.01
    apply, params = train_jfm_mlp(**cfg, steps=0, batch=batch, lr=lr, key=key)
    net = torch_mlp(params, cfg["activation"], time_embed_dim=EMB)
    check_same_field(apply, params, net)
    x1 = jfm.data.moons(batch, key=jr.fold_in(key, 7), dtype=jnp.float32)
    x1_t = torch.from_numpy(np.array(x1))

    # jfm
    opt = optax.adam(lr) if opt_name == "adam" else optax.adamw(lr, weight_decay=wd)
    loss_fn = functools.partial(jfm.cfm_loss, path=jfm.AffinePath(jfm.CondOT()))
    train_step = jfm.make_train_step(apply, opt, loss_fn)
    step = jax.jit(train_step, donate_argnums=0)
    box = {"state": jfm.init_train_state(params, opt), "i": 0}

    def run_jfm():
        s = box["state"]
        for _ in range(steps):
            s, _ = step(s, x1, jr.fold_in(key, box["i"]))
            box["i"] += 1
        box["state"] = jax.block_until_ready(s)

    # The library's loop: jfm.fit, one call per step and with `scan` steps fused per call
    # (jfm.scan_train_step; batch_fn traced in). Each timed call continues the run.
    def batch_fn(k):
        return x1  # fixed data, as in the torch loop (which draws x0 and t per step)

    fbox = {}

    def fit_runner(spc):
        fbox[spc] = jfm.init_train_state(params, opt)

        def run():
            s = fbox[spc]
            s, _ = jfm.fit(
                train_step,
                s,
                batch_fn,
                steps=int(s.step) + steps,
                key=key,
                progress=False,
                steps_per_call=spc,
            )
            fbox[spc] = jax.block_until_ready(s)

        return run

    # flow_matching / torch
    fm_path = AffineProbPath(scheduler=CondOTScheduler())
    topt = (
        torch.optim.Adam(net.parameters(), lr=lr)
        if opt_name == "adam"
        else torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=wd)
    )

    def torch_step():
        x0 = torch.randn_like(x1_t)
        t = torch.rand(batch)
        ps = fm_path.sample(t=t, x_0=x0, x_1=x1_t)
        loss = torch.pow(net(ps.x_t, ps.t) - ps.dx_t, 2).mean()
        topt.zero_grad()
        loss.backward()
        topt.step()

    def run_torch():
        for _ in range(steps):
            torch_step()

    # First calls: compile (jfm: one step / one scanned call) and warm up (torch).
    c_j, _ = first_call(lambda: jax.block_until_ready(step(box["state"], x1, key)))
    box["state"] = jfm.init_train_state(params, opt)  # the first call donated it
    c_t, _ = first_call(torch_step)
    # The GEMM ceiling is timed in the same alternation (same machine load): bare jnp.dot
    # on the step's products, `steps` times per round like the steps.
    gemm, gemm_flops = gemm_products(batch, widths(cfg), train=True)

    def run_gemm():
        for _ in range(steps):
            gemm()

    fns = {"jfm": run_jfm, "torch": run_torch, "gemm": run_gemm}
    fns["fit"] = fit_runner(None)
    c_f, _ = first_call(fns["fit"])  # compiles (cached for the later calls)
    if scan > 1:
        fns["fit_scan"] = fit_runner(scan)
        c_s, _ = first_call(fns["fit_scan"])
    times = alternate(fns, repeat)
    rate = {
        "jfm": steps / np.median(times["jfm"]),
        "torch": steps / np.median(times["torch"]),
    }
    flops = train_flops(batch, widths(cfg)) / 1e9
    ceiling = steps * gemm_flops / np.median(times["gemm"]) / 1e9

    def train_row(what, r, notes):
        return row(
            what,
            "steps/s",
            r,
            rate["torch"],
            True,
            jfm_gflops=flops * r,
            anchor_gflops=flops * rate["torch"],
            ceiling_gflops=ceiling,
            jfm_nfe="",
            anchor_nfe="",
            notes=notes,
        )

    name = f"{label} train step (B={batch}, {cfg['depth']}x{cfg['hidden']} {cfg['activation']}"
    rows = [
        train_row(
            f"{name}, {opt_name}), jit per step",
            rate["jfm"],
            f"compile {c_j:.2f}s / torch warm-up {c_t:.2f}s",
        )
    ]
    rate["fit"] = steps / np.median(times["fit"])
    rows.append(
        train_row(
            f"{name}, {opt_name}), jfm.fit one call per step",
            rate["fit"],
            f"first call (compile) {c_f:.2f}s",
        )
    )
    if scan > 1:
        rate["scan"] = steps / np.median(times["fit_scan"])
        rows.append(
            train_row(
                f"{name}, {opt_name}), jfm.fit steps_per_call={scan}",
                rate["scan"],
                f"first call (compile) {c_s:.2f}s",
            )
        )
    for r in rows:
        print(r)
    return rows


# -- sampling ----------------------------------------------------------------------------


def sample_rows(apply, params, net, cfg, *, n, methods, repeat, key, label, ceiling):
    import torch
    from flow_matching.solver import ODESolver

    field = jfm.field_from_model(apply, params)
    x0 = jr.normal(key, (n, 2), jnp.float32)
    x0_t = torch.from_numpy(np.array(x0))
    velocity = CountingVelocity(net)
    solver = ODESolver(velocity_model=velocity)
    rows = []
    for name in methods:
        if name == "euler":
            jkw, tkw, what = dict(solver=dfx.Euler(), steps=100), dict(step_size=0.01), "Euler 100"
        else:
            tol = float(name.split("@")[1])
            jkw = dict(solver=dfx.Dopri5(), rtol=tol, atol=tol)
            tkw = dict(step_size=None, method="dopri5", rtol=tol, atol=tol)
            what = f"Dopri5 {tol:g}"

        def run_jfm():
            return jax.block_until_ready(jfm.sample_ode(field, x0, **jkw))

        def run_fm():
            velocity.nfe = 0
            with torch.no_grad():
                out = solver.sample(x_init=x0_t, **tkw)
            return out, velocity.nfe

        c_j, res = first_call(run_jfm)
        c_f, (xf, nfe_f) = first_call(run_fm)
        times = alternate({"jfm": run_jfm, "fm": run_fm}, repeat)
        tj, tf = float(np.median(times["jfm"])), float(np.median(times["fm"]))
        nfe_j = int(res.nfe)
        work = mlp_flops(n, widths(cfg)) / 1e9
        dx = float(np.max(np.abs(np.asarray(res.x1) - xf.numpy())))
        rows.append(
            row(
                f"{label} sample {n} pts, {what}",
                "s",
                tj,
                tf,
                False,
                jfm_gflops=work * nfe_j / tj,
                anchor_gflops=work * nfe_f / tf,
                ceiling_gflops=ceiling,
                jfm_nfe=nfe_j,
                anchor_nfe=nfe_f,
                notes=f"compile {c_j:.1f}s / warm-up {c_f:.1f}s; max|x_jfm - x_fm| = {dx:.1e}",
            )
        )
        print(rows[-1])
    return rows


def fmt(v, unit):
    if isinstance(v, str):
        return v
    return f"{v:.3f}" if unit == "s" else f"{v:.2f}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workloads", nargs="+", default=["W1", "W2", "W3", "W5"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=10, help="W1 steps per timed call")
    p.add_argument("--w5-steps", type=int, default=200, help="W5 steps per timed call")
    p.add_argument("--scan", type=int, default=50, help="W5: steps per lax.scan call")
    p.add_argument("--fit-steps", type=int, default=300, help="training before W2/W3")
    p.add_argument("--w5-fit-steps", type=int, default=1000, help="training before W5 sampling")
    p.add_argument("--w2-n", type=int, default=10_000)
    p.add_argument("--w2-methods", nargs="+", default=["euler", "dopri5@1e-5"])
    p.add_argument("--w3-n", type=int, default=2000)
    p.add_argument("--w5-n", type=int, default=1000)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    p.add_argument("--tag", default="", help="suffix of the result files")
    p.add_argument("--single-thread", action="store_true", help="1 thread for XLA and torch")
    a = p.parse_args()
    if a.single_thread:
        import torch

        torch.set_num_threads(1)
    print(header())
    print(torch_versions())
    key = jr.key(0)
    big, small = widths(BIG), widths(SMALL)
    rows, ceil_lines = [], []

    def ceiling(batch, w, train, name):
        c = gemm_ceiling(batch, w, train=train)
        extra = ""
        if not train:
            extra = f"; torch.mm on the same forward products {torch_gemm_rate(batch, w):.0f}"
        ceil_lines.append(
            f"- {name}: jnp.dot {c:.0f} GFLOP/s ({'train' if train else 'forward'} products, "
            f"B={batch}){extra}"
        )
        print(ceil_lines[-1])
        return c

    if "W1" in a.workloads:
        rows += train_rows(
            BIG,
            batch=4096,
            opt_name="adam",
            steps=a.train_steps,
            repeat=a.repeat,
            scan=1,
            key=jr.fold_in(key, 1),
            label="W1",
        )
    if "W2" in a.workloads or "W3" in a.workloads:
        apply, params = train_jfm_mlp(
            **BIG, steps=a.fit_steps, batch=4096, lr=2e-3, key=jr.fold_in(key, 2)
        )
        net = torch_mlp(params, "silu", time_embed_dim=EMB)
        err = check_same_field(apply, params, net)
        print(f"W2/W3 field: {a.fit_steps} jfm steps; max |v_jfm - v_torch| = {err:.1e}")
    if "W2" in a.workloads:
        c = ceiling(a.w2_n, big, False, f"W2 ({a.w2_n} x [66, 512x4, 2])")
        rows += sample_rows(
            apply,
            params,
            net,
            BIG,
            n=a.w2_n,
            methods=a.w2_methods,
            repeat=a.repeat,
            key=jr.fold_in(key, 3),
            label="W2",
            ceiling=c,
        )
    if "W3" in a.workloads:
        c = ceiling(a.w3_n, big, False, f"W3 ({a.w3_n} x [66, 512x4, 2])")
        x = jfm.data.moons(a.w3_n, key=jr.fold_in(key, 4), dtype=jnp.float32)
        lrows = likelihood_rows(
            apply, params, net, x, tol=1e-5, repeat=a.repeat, key=jr.fold_in(key, 5), ceiling=c
        )
        cmd = "python benchmarks/vs_pytorch.py " + " ".join(sys.argv[1:])
        note = (
            f"W3 of vs_pytorch.py: MLP 4x512 SiLU after {a.fit_steps} jfm training steps on "
            f"moons, weights copied to torch (max |v_jfm - v_torch| = {err:.1e})."
        )
        write_results(lrows, a.out, a.tag, cmd, a.repeat, note)
        for r in lrows:
            rows.append(
                row(
                    "W3 " + r["workload"],
                    "s",
                    r["jfm_s"],
                    r["anchor_s"],
                    False,
                    jfm_gflops=r["jfm_gflops"],
                    anchor_gflops=r["anchor_gflops"],
                    ceiling_gflops=c,
                    jfm_nfe=r["jfm_nfe"],
                    anchor_nfe=r["anchor_nfe"],
                    notes=f"mean log p {r['jfm_mean_logp']:.4f} / {r['anchor_mean_logp']:.4f}"
                    f" (sem {r['logp_sem']:.3f}); compile {r['jfm_compile_s']:.1f}s",
                )
            )
    if "W5" in a.workloads:
        rows += train_rows(
            SMALL,
            batch=256,
            opt_name="adamw",
            steps=a.w5_steps,
            repeat=a.repeat,
            scan=a.scan,
            key=jr.fold_in(key, 6),
            label="W5",
        )
        sapply, sparams = train_jfm_mlp(
            **SMALL, steps=a.w5_fit_steps, batch=256, lr=1e-3, key=jr.fold_in(key, 7)
        )
        snet = torch_mlp(sparams, "selu", time_embed_dim=EMB)
        check_same_field(sapply, sparams, snet)
        c = ceiling(a.w5_n, small, False, f"W5 sample ({a.w5_n} x [66, 64x3, 2])")
        rows += sample_rows(
            sapply,
            sparams,
            snet,
            SMALL,
            n=a.w5_n,
            methods=["dopri5@1e-5"],
            repeat=a.repeat,
            key=jr.fold_in(key, 8),
            label="W5",
            ceiling=c,
        )

    cmd = "python benchmarks/vs_pytorch.py " + " ".join(sys.argv[1:])
    lines = [
        "# jfm vs flow_matching (PyTorch): same field, same work",
        "",
        header(),
        "",
        torch_versions(),
        "",
        f"Command: `{cmd}`. Medians over {a.repeat} alternated repeats in one process, "
        "after a first compiling (jfm) / warm-up (torch) call. **ratio = jfm speed / "
        "flow_matching speed** (> 1: jfm faster). GFLOP/s count the matrix products "
        "only (training: forward + both backward products; sampling: NFE x forward; "
        "likelihood: NFE x (1 + D or 1) passes) and are compared with bare jnp.dot on the "
        "same shapes (column 'ceiling').",
        "",
        "| workload | unit | jfm | flow_matching | ratio | NFE jfm / fm | GFLOP/s jfm / fm "
        "| jnp.dot ceiling GFLOP/s | jfm % of ceiling | notes |",
        "|---|---|---:|---:|---:|---|---|---:|---:|---|",
    ]
    for r in rows:
        nfe = f"{r['jfm_nfe']} / {r['anchor_nfe']}" if r["jfm_nfe"] != "" else ""
        lines.append(
            f"| {r['workload']} | {r['unit']} | {fmt(r['jfm'], r['unit'])} | "
            f"{fmt(r['anchor'], r['unit'])} | **{r['ratio']:.2f}x** | {nfe} | "
            f"{r['jfm_gflops']:.1f} / {r['anchor_gflops']:.1f} | {r['ceiling_gflops']:.0f} | "
            f"{100 * r['jfm_gflops'] / r['ceiling_gflops']:.0f}% | {r['notes']} |"
        )
    for r in rows:
        if "train step" in r["workload"] and r["workload"].endswith("jit per step"):
            ceil_lines.append(
                f"- {r['workload'].split(' train')[0]} train products: jnp.dot "
                f"{r['ceiling_gflops']:.0f} GFLOP/s (timed alternated with the train steps)"
            )
    lines += ["", "GEMM ceilings measured in this run:", "", *ceil_lines, ""]
    text = "\n".join(lines)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, f"vs_pytorch{a.tag}.md"), "w") as f:
        f.write(text)
    write_csv(os.path.join(a.out, f"vs_pytorch{a.tag}.csv"), rows)
    print(text)


if __name__ == "__main__":
    main()
