"""Log-likelihood speed: jfm.log_prob against flow_matching's ODESolver.compute_likelihood.

Workload (W3 of vs_pytorch.py): log p(x) of N = 2,000 points (2-D moons) under the
foundation benchmark's MLP (4 hidden layers of 512, SiLU, 64-d sinusoidal time
embedding), trained briefly by jfm and copied weight for weight into torch, so that both
libraries integrate the very same field (checked). Dopri5 at rtol = atol = 1e-5 from t=1
to t=0, exact divergence and Hutchinson (one Rademacher probe per point, fixed along the
trajectory: flow_matching's choice too). Both solve the batch as ONE ODE (jfm
``batch="joint"``: torchdiffeq integrates the batch tensor jointly).

Reported per divergence: median wall time over alternated repeats (after a first,
compiling/warm-up call, reported separately), NFE (jfm: from the tableau and the step
counts; flow_matching: counted calls of the network), time per NFE, the mean
log-likelihood of both, and the ratio of wall times (anchor / jfm: > 1 means jfm is
faster).

Usage: python benchmarks/likelihood.py [--n 2000] [--repeat 3] [--fit-steps 300]
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

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import jfm

sys.path.insert(0, os.path.dirname(__file__))
from _common import (  # noqa: E402
    CountingVelocity,
    alternate,
    check_same_field,
    first_call,
    gemm_ceiling,
    header,
    mlp_flops,
    torch_mlp,
    torch_versions,
    train_jfm_mlp,
    write_csv,
)

HIDDEN, DEPTH, EMB = 512, 4, 64
WIDTHS = [2 + EMB] + [HIDDEN] * DEPTH + [2]


def likelihood_rows(apply, params, net, x, *, tol, repeat, key, ceiling=None):
    """The likelihood workload on points ``x`` ``[N, 2]`` (float32) for the jfm network
    ``(apply, params)`` and its torch copy ``net``. Returns one dict per divergence with
    both libraries' figures and the ratio. ``ceiling``: jnp.dot GFLOP/s on the forward
    products at batch N (measured here when None)."""
    import torch
    from flow_matching.solver import ODESolver

    n, d = x.shape
    path = jfm.AffinePath(jfm.CondOT())
    field = jfm.field_from_model(apply, params)
    xt = torch.from_numpy(np.array(x))
    velocity = CountingVelocity(net)
    solver = ODESolver(velocity_model=velocity)

    def log_p0(z):
        return -0.5 * (z**2).sum(dim=1) - 0.5 * d * float(np.log(2 * np.pi))

    if ceiling is None:
        ceiling = gemm_ceiling(n, WIDTHS, train=False)
    rows = []
    for div in ("exact", "hutchinson"):
        kw = dict(key=key) if div == "hutchinson" else {}

        def run_jfm():
            return jax.block_until_ready(
                jfm.log_prob(
                    field,
                    x,
                    solver=dfx.Dopri5(),
                    rtol=tol,
                    atol=tol,
                    path=path,
                    divergence=div,
                    batch="joint",
                    **kw,
                )
            )

        def run_fm():
            torch.manual_seed(0)
            velocity.nfe = 0
            _, logp = solver.compute_likelihood(
                x_1=xt,
                log_p0=log_p0,
                step_size=None,
                method="dopri5",
                atol=tol,
                rtol=tol,
                exact_divergence=div == "exact",
            )
            return logp, velocity.nfe

        c_j, (lp_j, info) = first_call(run_jfm)
        c_f, (lp_f, nfe_f) = first_call(run_fm)
        times = alternate({"jfm": run_jfm, "fm": run_fm}, repeat)
        tj, tf = float(np.median(times["jfm"])), float(np.median(times["fm"]))
        nfe_j = int(info.nfe)
        lp_j, lp_f = np.asarray(lp_j), lp_f.numpy()
        # Matrix-product work per evaluation: a forward pass plus d (exact) or 1
        # (Hutchinson) tangent/cotangent passes of the same products.
        passes = 1 + (d if div == "exact" else 1)
        work = passes * mlp_flops(n, WIDTHS) / 1e9
        row = dict(
            workload=f"log-likelihood {n} pts, Dopri5 {tol:g}, {div}",
            jfm_s=tj,
            anchor_s=tf,
            speedup=tf / tj,
            jfm_nfe=nfe_j,
            anchor_nfe=nfe_f,
            nfe_rel_diff=(nfe_j - nfe_f) / nfe_f,
            jfm_ms_per_nfe=1e3 * tj / nfe_j,
            anchor_ms_per_nfe=1e3 * tf / nfe_f,
            jfm_gflops=work * nfe_j / tj,
            anchor_gflops=work * nfe_f / tf,
            ceiling_gflops=ceiling,
            jfm_mean_logp=float(lp_j.mean()),
            anchor_mean_logp=float(lp_f.mean()),
            logp_sem=float(lp_j.std(ddof=1) / np.sqrt(n)),
            jfm_compile_s=c_j,
            anchor_first_s=c_f,
        )
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    return rows


def markdown(rows) -> list[str]:
    cols = (
        "| workload | jfm s | flow_matching s | speed ratio (fm/jfm) | NFE jfm / fm | "
        "ms per NFE jfm / fm | GFLOP/s jfm / fm (jnp.dot ceiling) | mean log p jfm / fm "
        "(+- sem) | compile jfm / warm-up fm (s) |"
    )
    out = [cols, "|" + "---|" * cols.count(" | ") + "---|"]
    for r in rows:
        out.append(
            f"| {r['workload']} | {r['jfm_s']:.2f} | {r['anchor_s']:.2f} | "
            f"**{r['speedup']:.2f}x** | {r['jfm_nfe']} / {r['anchor_nfe']} "
            f"({100 * r['nfe_rel_diff']:+.0f}%) | {r['jfm_ms_per_nfe']:.2f} / "
            f"{r['anchor_ms_per_nfe']:.2f} | {r['jfm_gflops']:.0f} / {r['anchor_gflops']:.0f} "
            f"({r['ceiling_gflops']:.0f}) | {r['jfm_mean_logp']:.4f} / "
            f"{r['anchor_mean_logp']:.4f} (+-{r['logp_sem']:.3f}) | {r['jfm_compile_s']:.1f} / "
            f"{r['anchor_first_s']:.1f} |"
        )
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2000, help="points")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--fit-steps", type=int, default=300, help="jfm training before timing")
    p.add_argument("--tol", type=float, default=1e-5)
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
    apply, params = train_jfm_mlp(
        hidden=HIDDEN,
        depth=DEPTH,
        activation="silu",
        steps=a.fit_steps,
        batch=4096,
        lr=2e-3,
        key=jr.fold_in(key, 1),
    )
    net = torch_mlp(params, "silu", time_embed_dim=EMB)
    err = check_same_field(apply, params, net)
    print(f"same field: max |v_jfm - v_torch| = {err:.1e}")
    x = jfm.data.moons(a.n, key=jr.fold_in(key, 2), dtype=jnp.float32)
    rows = likelihood_rows(apply, params, net, x, tol=a.tol, repeat=a.repeat, key=jr.key(3))
    cmd = "python benchmarks/likelihood.py " + " ".join(sys.argv[1:])
    note = (
        f"MLP 4x512 SiLU after {a.fit_steps} jfm training steps on moons, weights copied to "
        f"torch (max |v_jfm - v_torch| = {err:.1e})."
    )
    print(write_results(rows, a.out, a.tag, cmd, a.repeat, note))


def write_results(rows, out, tag, cmd, repeat, note) -> str:
    """Write ``likelihood{tag}.md`` and ``.csv`` under ``out`` (also used by
    vs_pytorch.py for its W3 rows); returns the Markdown."""
    text = "\n".join(
        [
            "# Log-likelihood: jfm.log_prob vs flow_matching ODESolver.compute_likelihood",
            "",
            header(),
            "",
            torch_versions(),
            "",
            f"Command: `{cmd}`. Medians over {repeat} alternated repeats, after one "
            f"compiling (jfm) / warm-up (flow_matching) call. {note} One joint solve of the "
            "batch in both. Speed ratio > 1: jfm faster.",
            "",
            *markdown(rows),
            "",
        ]
    )
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"likelihood{tag}.md"), "w") as f:
        f.write(text)
    write_csv(os.path.join(out, f"likelihood{tag}.csv"), rows)
    return text


if __name__ == "__main__":
    main()
