"""Gaussian (CondOT) vs Poisson flow (PFGM) vs an isotropic CDF path on the same 2-D task.

Each path trains the same MLP (same steps, batch, optimizer, time sampler) on the same
data; then samples from its own prior are transported by the ODE with an adaptive
solver (Dopri5) and with Euler at several step counts. Reported: W2 to held-out data
(exact assignment, scipy.optimize.linear_sum_assignment), energy distance, and NFE.
A second table integrates the EXACT empirical fields of M data points (no network) to
compare the solver cost of the paths themselves.

    python benchmarks/paths_2d.py                    # defaults below, writes the table
    python benchmarks/paths_2d.py --steps 500 --n-eval 500   # quick run
"""

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import diffrax as dfx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402

import jfm  # noqa: E402
from benchmarks._common import write_table  # noqa: E402


def w2(x, y) -> float:
    """Exact W2 between two equal-size point clouds (optimal assignment)."""
    w2_fn = getattr(jfm.metrics, "w2", None)
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if w2_fn is not None:  # branch i5's metric, when merged
        return float(w2_fn(jnp.asarray(x), jnp.asarray(y)))
    cost = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    r, c = linear_sum_assignment(cost)
    return float(np.sqrt(cost[r, c].mean()))


def make_paths(args):
    # tanh(x) = 1 - 2 sigmoid(-2x): the same function, but its autodiff r-derivative does not
    # cancel to 0 at x ~ 9 (float32) as 1 - tanh(x)^2 does (see IsotropicPath, Numerics).
    tanh = lambda tau, r: 1 - 2 * jax.nn.sigmoid(-2 * r / tau)  # noqa: E731
    return {
        "gaussian (CondOT)": (jfm.AffinePath(jfm.CondOT(), event_shape=(2,)), "cfm", "velocity"),
        f"PFGM (D=1, r_max={args.r_max:g})": (
            jfm.PoissonPath(r_max=args.r_max, aug_dim=1, event_shape=(2,)),
            args.pfgm_loss,
            args.pfgm_pred,
        ),
        f"PFGM++ (D={args.aug_dim}, r_max={args.r_max_pp:g})": (
            jfm.PoissonPath(r_max=args.r_max_pp, aug_dim=args.aug_dim, event_shape=(2,)),
            args.pfgm_loss,
            args.pfgm_pred,
        ),
        f"isotropic tanh(r/tau), T={args.T:g}": (
            jfm.IsotropicPath(cdf=tanh, T=args.T, event_shape=(2,)),
            "empirical",
            "velocity",
        ),
    }


class SquashedApply:
    """``apply(params, t, squash(x), args)`` with ``squash(x) = x / sqrt(1 + |x|^2 / R^2)``.

    The same bijective input squashing for every path (R = --squash): heavy-tailed priors
    put some inputs at 100x the data scale, where an MLP only extrapolates linearly.
    """

    def __init__(self, apply, radius):
        self.apply, self.radius = apply, radius

    def __call__(self, params, t, x, args=None):
        sq = jnp.sum(x * x, axis=-1, keepdims=True) / self.radius**2
        return self.apply(params, t, x / jnp.sqrt(1 + sq), args)


def train(path, loss_kind, pred, data_fn, args, key):
    net = jfm.models.MLP(2, hidden_features=args.width, depth=args.depth, rngs=nnx.Rngs(0))
    apply, params = jfm.split_model(net)
    apply = SquashedApply(apply, args.squash)
    opt = optax.adam(args.lr)
    if loss_kind == "cfm":
        loss_fn = functools.partial(jfm.cfm_loss, path=path, kind=pred)
    else:
        loss_fn = functools.partial(jfm.empirical_field_loss, path=path, kind=pred)
    step = jfm.make_train_step(apply, opt, loss_fn, ema_decay=0.999)
    state = jfm.init_train_state(params, opt, ema=True)
    t0 = time.perf_counter()
    state, hist = jfm.fit(
        step, state, jax.jit(data_fn), steps=args.steps, key=key, progress=False, log_every=500
    )
    field = jfm.field_from_model(apply, state.ema_params, path=path, kind=pred)
    return field, time.perf_counter() - t0


def evaluate(field, path, ref, args, key):
    x0 = path.prior_sample((args.n_eval, 2), key=key, dtype=ref.dtype)
    t1 = 1.0 - args.t_eps
    out = {}
    sol = jfm.sample_ode(
        field,
        x0,
        solver=dfx.Dopri5(),
        rtol=args.tol,
        atol=args.tol,
        t1=t1,
        max_steps=4000,
        throw=False,
    )
    ok = bool(sol.success)
    out["dopri5"] = (
        w2(sol.x1, ref) if ok else float("nan"),
        float(jfm.metrics.energy_distance(sol.x1, ref)) if ok else float("nan"),
        int(sol.nfe) if ok else f"failed ({int(sol.nfe)})",
    )
    for n in args.euler:
        sol = jfm.sample_ode(field, x0, solver=dfx.Euler(), steps=n, t1=t1, throw=False)
        ok = bool(np.all(np.isfinite(np.asarray(sol.x1))))
        out[f"euler{n}"] = w2(sol.x1, ref) if ok else float("nan")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="eight_gaussians", choices=sorted(jfm.data.DATASETS))
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--r-max", type=float, default=10.0)
    p.add_argument("--r-max-pp", type=float, default=10.0)
    p.add_argument("--aug-dim", type=int, default=8)
    p.add_argument("--T", type=float, default=4.0)
    p.add_argument("--pfgm-loss", default="empirical", choices=["empirical", "cfm"])
    p.add_argument("--pfgm-pred", default="x1", choices=["x1", "velocity"])
    p.add_argument("--squash", type=float, default=4.0, help="input squashing radius R")
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--n-exact", type=int, default=256, help="data points of the exact fields")
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--t-eps", type=float, default=1e-3, help="integrate to t1 = 1 - t_eps")
    p.add_argument("--euler", type=int, nargs="+", default=[4, 8, 16, 32, 100])
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    p.add_argument("--x64", action="store_true", help="float64 data, solves and metrics")
    args = p.parse_args(argv)
    if args.x64:
        jax.config.update("jax_enable_x64", True)

    key = jr.key(0)
    k_ref, k_train, k_eval, k_exact = jr.split(key, 4)
    gen = jfm.data.DATASETS[args.data]
    ref = gen(args.n_eval, key=k_ref)
    data_fn = lambda k: gen(args.batch, key=k)  # noqa: E731
    rows, exact_rows = [], []
    exact_data = gen(args.n_exact, key=k_exact)
    for name, (path, loss_kind, pred) in make_paths(args).items():
        field, secs = train(path, loss_kind, pred, data_fn, args, k_train)
        res = evaluate(field, path, ref, args, k_eval)
        w, ed, nfe = res["dopri5"]
        rows.append(
            [name, f"{loss_kind}, {pred}", f"{secs:.0f}", f"{w:.3f}", f"{ed:.4f}", nfe]
            + [f"{res[f'euler{n}']:.3f}" for n in args.euler]
        )
        # Exact empirical field of n_exact points: solver cost of the path itself.
        ef = jfm.empirical_field(path, exact_data)
        x0 = path.prior_sample((args.n_eval, 2), key=k_eval)
        sol = jfm.sample_ode(
            ef,
            x0,
            solver=dfx.Dopri5(),
            rtol=args.tol,
            atol=args.tol,
            t1=1.0 - args.t_eps,
            max_steps=4000,
            throw=False,
        )
        euler = [
            w2(
                jfm.sample_ode(
                    ef, x0, solver=dfx.Euler(), steps=n, t1=1.0 - args.t_eps, throw=False
                ).x1,
                sol.x1,
            )
            for n in args.euler
        ]
        exact_rows.append([name, int(sol.nfe), bool(sol.success)] + [f"{e:.3f}" for e in euler])
        print(rows[-1], exact_rows[-1], flush=True)

    euler_cols = [f"W2 Euler {n}" for n in args.euler]
    cols = [
        "path",
        "loss, pred",
        "train s",
        "W2 (Dopri5)",
        "energy dist.",
        "NFE (Dopri5)",
    ] + euler_cols
    notes = (
        f"Data: {args.data}; MLP width {args.width}, depth {args.depth}; {args.steps} Adam "
        f"steps (lr {args.lr}), batch {args.batch}, EMA 0.999, t ~ U[0, 1); ODE from each "
        f"path's prior to t1 = 1 - {args.t_eps:g}; Dopri5 rtol = atol = {args.tol:g}, joint "
        f"batch; W2 (exact assignment) and energy distance against {args.n_eval} held-out "
        f"points (W2 between two independent data samples of this size: "
        f"{w2(gen(args.n_eval, key=jr.key(7)), ref):.3f}). 'loss' cfm = jfm.cfm_loss "
        "(conditional target), empirical = jfm.empirical_field_loss (the batch's "
        "Green's-function field); pred = what the model predicts (x1: the posterior mean, "
        "converted to the velocity by the path). Same input squashing x / sqrt(1 + |x|^2 / "
        f"{args.squash:g}^2) for all paths. Heavy tails of PFGM's prior dominate W2 (a few "
        "far samples); the energy distance is more robust to them."
    )
    text = write_table(
        os.path.join(args.out, "paths_2d.md"),
        "Probability paths on a 2-D task: trained models",
        rows,
        cols,
        notes,
    )
    text2 = write_table(
        os.path.join(args.out, "paths_2d_exact.md"),
        f"Probability paths on a 2-D task: exact empirical fields of {args.n_exact} points",
        exact_rows,
        ["path", "NFE (Dopri5)", "solve ok"] + [f"W2 Euler {n} vs Dopri5" for n in args.euler],
        f"The marginal field of the empirical distribution of {args.n_exact} data points "
        "(jfm.empirical_field, no network): the ODE each path defines; W2 of Euler's "
        f"samples to the Dopri5 (rtol = atol = {args.tol:g}) samples from the same prior draws.",
    )
    print(text)
    print(text2)


if __name__ == "__main__":
    main()
