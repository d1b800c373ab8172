"""Sample accuracy against NFE: SDE solvers, predictor-corrector and the probability-flow ODE.

Data: a 2-D Gaussian mixture (3 components) whose exact velocity and score jfm knows
(``jfm.GaussianMixture``), so all error is the sampler's. For each method and setting,
``--n`` samples are drawn from the same noise and compared with ``--n`` exact samples by
the energy distance and W2 (exact OT on the empirical sets). The "floor" row compares two
exact sample sets: no sampler can beat it at this ``n``.

Methods (CondOT path unless noted; ``g`` = ``--g``):
  em         jfm.sample_sde, Euler-Maruyama, fixed steps, diffusion g(t) = g (1 - t)
  shark      jfm.sample_sde, dfx.ShARK, adaptive (rtol = atol)
  sra1       jfm.sample_sde, dfx.SRA1, adaptive
  pf-ode     jfm.sample_ode of the probability-flow ODE (= the exact velocity), Heun
  vp-rev-em  reverse-time VP SDE (jfm.DiffusionSDE), Euler-Maruyama
  vp-pc      jfm.sample_pc on the VP SDE, 1 Langevin corrector step (snr 0.1)

Usage: python benchmarks/sde_accuracy.py [--n 1000] [--g 1.0] [--quick]
Writes benchmarks/results/sde_accuracy.md and .png.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import diffrax as dfx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
from _common import write_table  # noqa: E402

import jfm  # noqa: E402


def w2(x, y):
    """W2 between two equal-size empirical sets: jfm.metrics.w2 when present (branch i5),
    else exact assignment by scipy."""
    fn = getattr(jfm.metrics, "w2", None)
    if fn is not None:
        return float(fn(x, y))
    from scipy.optimize import linear_sum_assignment

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    cost = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    r, c = linear_sum_assignment(cost)
    return float(np.sqrt(cost[r, c].mean()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="samples per set")
    ap.add_argument("--g", type=float, default=1.0, help="diffusion scale for em/shark/sra1")
    ap.add_argument("--refs", type=int, default=4, help="exact reference sets to average over")
    ap.add_argument("--quick", action="store_true", help="fewer settings")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    a = ap.parse_args()
    jax.config.update("jax_enable_x64", True)

    gmm = jfm.GaussianMixture.isotropic(
        jnp.array([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]]), jnp.array([0.3, 0.5, 0.4])
    )
    ot = jfm.AffinePath(jfm.CondOT())
    vp = jfm.AffinePath(jfm.VP(0.1, 20.0))
    sde = jfm.DiffusionSDE(vp)
    u, s = gmm.velocity_field(ot), gmm.score_field(ot)
    s_vp = gmm.score_field(vp)
    pf_vp = sde.probability_flow(s_vp)
    x0 = jr.normal(jr.key(0), (a.n, 2))
    refs = [gmm.sample(a.n, key=k) for k in jr.split(jr.key(1), a.refs)]
    g = lambda t: a.g * (1.0 - t)

    steps = [8, 16, 32, 64] if a.quick else [8, 16, 32, 64, 128, 256]
    tols = [1e-1, 1e-2] if a.quick else [1e-1, 3e-2, 1e-2, 3e-3]
    runs = []
    key = jr.key(2)
    for n in steps:
        runs.append(("em", f"steps={n}", lambda n=n: jfm.sample_sde(
            u, s, x0, diffusion=g, key=key, solver=dfx.Euler(), steps=n)))  # fmt: skip
    for name, solver in (("shark", dfx.ShARK()), ("sra1", dfx.SRA1())):
        for r in tols:
            runs.append((name, f"tol={r:g}", lambda r=r, solver=solver: jfm.sample_sde(
                u, s, x0, diffusion=g, key=key, solver=solver, rtol=r, atol=r)))  # fmt: skip
    for n in steps:
        runs.append(("pf-ode", f"steps={n // 2}", lambda n=n: jfm.sample_ode(
            u, x0, solver=dfx.Heun(), steps=n // 2)))  # fmt: skip
    for n in steps:
        runs.append(("vp-rev-em", f"steps={n}", lambda n=n: jfm.sample_sde(
            pf_vp, s_vp, x0, diffusion=sde.diffusion, key=key, solver=dfx.Euler(),
            steps=n)))  # fmt: skip
    for n in steps:
        runs.append(("vp-pc", f"steps={n // 2}", lambda n=n: jfm.sample_pc(
            pf_vp, s_vp, x0, diffusion=sde.diffusion, key=key, steps=n // 2,
            corrector_steps=1, snr=0.1)))  # fmt: skip

    rows, pts = [], {}

    def scores(x):  # mean over the reference sets (the statistic's noise is large at small n)
        ed = np.mean([float(jfm.metrics.energy_distance(x, r)) for r in refs])
        return ed, np.mean([w2(x, r) for r in refs])

    ed_floor, w2_floor = scores(gmm.sample(a.n, key=jr.key(3)))
    rows.append(["floor (exact vs exact)", "-", 0, f"{ed_floor:.4f}", f"{w2_floor:.4f}", "-"])
    for name, setting, fn in runs:
        t = time.perf_counter()
        sol = fn()
        x = jax.block_until_ready(sol.x1)
        dt = time.perf_counter() - t
        nfe = int(sol.nfe)
        ed, w = scores(x)
        rows.append([name, setting, nfe, f"{ed:.4f}", f"{w:.4f}", f"{dt:.2f}"])
        pts.setdefault(name, []).append((nfe, ed))
        print(rows[-1], flush=True)

    os.makedirs(a.out, exist_ok=True)
    notes = (
        f"n = {a.n} samples per set; 2-D mixture of 3 Gaussians; diffusion g(t) = {a.g} (1 - t)"
        " for em/shark/sra1 (CondOT path); VP(0.1, 20) for vp-*. NFE = drift (or score) "
        f"evaluations per example. Energy distance (V-statistic) and W2 are means over {a.refs} "
        "exact reference sets; the energy distance's floor is ~ "
        f"{ed_floor:.4f} at this n. All methods share one noise draw x0 and one key, so the "
        "plateau is that draw's own distance to the mixture. W2: exact assignment. time: wall "
        "seconds of the call "
        "including compilation (noisy; not a speed benchmark)."
    )
    text = write_table(
        os.path.join(a.out, "sde_accuracy.md"),
        "SDE / PC / probability-flow accuracy vs NFE (exact Gaussian mixture)",
        rows,
        ["method", "setting", "NFE", "energy distance", "W2", "time [s]"],
        notes,
    )
    print(text)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, p in pts.items():
        p = np.array(p)
        ax.loglog(p[:, 0], np.maximum(p[:, 1], 1e-5), "o-", label=name)
    ax.axhline(ed_floor, color="k", ls="--", lw=1, label="floor")
    ax.set_xlabel("NFE per example")
    ax.set_ylabel("energy distance to exact samples")
    ax.set_title(f"sampler accuracy vs cost (n = {a.n})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "sde_accuracy.png"), dpi=90)


if __name__ == "__main__":
    main()
