"""Discrete flow matching: jfm against Meta's flow_matching on the same model and sampler.

Two tasks with exact ground truth (``jfm.DiscreteMixture``, ``jfm.MarkovChain``):

(a) **Checkerboard**: the discrete 2-d checkerboard on a 16 x 16 grid (128 points, 4 x 4
    cells), sequences of length 2. Measured: TV and KL of the empirical pmf of the samples
    to the truth, next to the noise floor (the same statistics of as many exact samples).
(b) **Markov chain**: sequences of length 32 over 16 tokens from a fixed random chain
    (Dirichlet(0.3) rows, started in its stationary law). Measured: the true NLL per token
    ``-log q(x) / L`` of the generated sequences, against the chain's entropy per token
    ``H(X_0..X_{L-1}) / L`` (the NLL of exact samples in expectation); generated sequences
    with a token left masked count as failures.

Both libraries train the same network (jfm.models.TokenMLP; the torch copy starts from the
same weights), on the same data batches, with the same loss (cross-entropy on the masked
CondOT mixture path), Adam, batch and steps, and sample with the same step (jfm's
``method="exponential"`` is flow_matching's ``MixtureDiscreteEulerSolver`` step, in closed
form) and the same number of steps. One XLA thread and one torch thread. Timings: training
steps/s over the run after a warm-up; sampling the best of 3 (jfm's compile reported
separately). jfm computes the sampling probabilities in float64 (x64 on; flow_matching's
categorical draws use float32 by default, run here with float64 too); the float32 row
shows the difference on the Markov task.

Usage::

    python benchmarks/discrete.py            # full settings (about 5 minutes on 2 cores)
    python benchmarks/discrete.py --quick    # small settings: about a minute

Writes ``benchmarks/results/discrete.{md,csv}`` and ``discrete_checkerboard.png``.
"""

import argparse
import math
import os
import sys
import timeit
from pathlib import Path

os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from _common import header, torch_versions, write_csv, write_table  # noqa: E402

import jfm  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def markov_task(v: int, seed: int = 0) -> jfm.MarkovChain:
    rng = np.random.default_rng(seed)
    trans = rng.dirichlet(np.full(v, 0.3), size=v)
    trans = np.maximum(trans, 1e-6)
    trans /= trans.sum(-1, keepdims=True)
    chain = jfm.MarkovChain(jnp.full(v, 1.0 / v), jnp.asarray(trans))
    return jfm.MarkovChain(chain.stationary(), jnp.asarray(trans))


# -- the torch copy of jfm.models.TokenMLP -------------------------------------------------


def torch_token_mlp(params, *, length, vocab, time_embed_dim, time_scale=1000.0):
    import torch
    from torch import nn

    emb = np.asarray(params["token_embed"]["embedding"][...])
    hidden = [
        (
            np.asarray(params["hidden"][i]["kernel"][...]),
            np.asarray(params["hidden"][i]["bias"][...]),
        )
        for i in sorted(params["hidden"].keys())
    ]
    out = (np.asarray(params["out"]["kernel"][...]), np.asarray(params["out"]["bias"][...]))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(*emb.shape)
            with torch.no_grad():
                self.embed.weight.copy_(torch.from_numpy(emb.copy()))
            lins = []
            for w, b in [*hidden, out]:
                lin = nn.Linear(w.shape[0], w.shape[1])
                with torch.no_grad():
                    lin.weight.copy_(torch.from_numpy(w.T.copy()))
                    lin.bias.copy_(torch.from_numpy(b.copy()))
                lins.append(lin)
            self.lins = nn.ModuleList(lins)
            self.act = nn.GELU(approximate="tanh")  # nnx.gelu is the tanh approximation
            half = time_embed_dim // 2
            freqs = torch.exp(-math.log(10000.0) / half * torch.arange(half, dtype=torch.float32))
            self.register_buffer("freqs", freqs)

        def forward(self, x, t):
            t = torch.as_tensor(t, dtype=torch.float32).reshape(-1).expand(x.shape[0])
            ang = (time_scale * t)[:, None] * self.freqs[None, :]
            h = torch.cat([self.embed(x).flatten(1), torch.sin(ang), torch.cos(ang)], dim=-1)
            for lin in self.lins[:-1]:
                h = self.act(lin(h))
            return self.lins[-1](h).view(x.shape[0], length, vocab)

    return Net()


# -- training --------------------------------------------------------------------------


def train_jfm(apply, params, path, pool, *, steps, lr, key):
    loss_fn = lambda a, p, b, *, key: jfm.dfm_loss(a, p, b, path=path, key=key, dtype=jnp.float32)  # noqa: E731
    opt = optax.adam(lr)
    step = jax.jit(jfm.make_train_step(apply, opt, loss_fn), donate_argnums=0)
    state = jfm.init_train_state(params, opt)
    batches = jnp.asarray(pool)
    t0 = timeit.default_timer()
    state, m = step(state, batches[0], jr.fold_in(key, 0))
    jax.block_until_ready(m)
    compile_s = timeit.default_timer() - t0
    warm = min(20, steps // 10)
    for i in range(1, warm):
        state, m = step(state, batches[i % len(batches)], jr.fold_in(key, i))
    jax.block_until_ready(m)
    t0 = timeit.default_timer()
    for i in range(warm, steps):
        state, m = step(state, batches[i % len(batches)], jr.fold_in(key, i))
    jax.block_until_ready(m)
    rate = (steps - warm) / (timeit.default_timer() - t0)
    return state.params, rate, compile_s, float(m["loss"])


def train_fm(net, pool, *, vocab, steps, lr, seed):
    import torch
    from flow_matching.path import MixtureDiscreteProbPath
    from flow_matching.path.scheduler import PolynomialConvexScheduler

    torch.manual_seed(seed)
    path = MixtureDiscreteProbPath(PolynomialConvexScheduler(n=1.0))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    batches = torch.from_numpy(np.asarray(pool).astype(np.int64))
    mask = vocab

    def step(x1):
        t = torch.rand(x1.shape[0])
        x0 = torch.full_like(x1, mask)
        xt = path.sample(t=t, x_0=x0, x_1=x1).x_t
        logits = net(xt, t)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x1.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    warm = min(20, steps // 10)
    for i in range(warm):
        step(batches[i % len(batches)])
    t0 = timeit.default_timer()
    for i in range(warm, steps):
        loss = step(batches[i % len(batches)])
    rate = (steps - warm) / (timeit.default_timer() - t0)
    return rate, float(loss)


# -- sampling --------------------------------------------------------------------------


def sample_jfm(apply, params, path, n, length, steps, *, key, dtype=None, repeat=3):
    den = jfm.denoiser_from_model(apply, params)
    x0 = path.sample_source((n, length), key=jr.fold_in(key, 1))

    def run(k):
        return jfm.sample_discrete(
            den, x0, path=path, steps=steps, key=k, method="exponential", dtype=dtype
        ).x1.block_until_ready()

    t0 = timeit.default_timer()
    x = run(key)
    first = timeit.default_timer() - t0
    times = [timeit.timeit(lambda: run(jr.fold_in(key, 7)), number=1) for _ in range(repeat - 1)]
    return np.asarray(x), min(times) if times else first, first


def sample_fm(net, n, length, vocab, steps, *, seed, dtype="float64", repeat=3):
    import torch
    from flow_matching.path import MixtureDiscreteProbPath
    from flow_matching.path.scheduler import PolynomialConvexScheduler
    from flow_matching.solver import MixtureDiscreteEulerSolver
    from flow_matching.utils import ModelWrapper

    class Probs(ModelWrapper):
        def forward(self, x, t, **extras):
            return torch.softmax(self.model(x, t).double(), dim=-1)

    solver = MixtureDiscreteEulerSolver(
        Probs(net), MixtureDiscreteProbPath(PolynomialConvexScheduler(n=1.0)), vocab + 1
    )
    # vocab + 1 classes: the solver one-hots the current state, which may be the mask
    torch.manual_seed(seed)
    x0 = torch.full((n, length), vocab, dtype=torch.long)
    cat = getattr(torch, dtype)

    def run():
        with torch.no_grad():
            return solver.sample(
                x_init=x0.clone(), step_size=None, dtype_categorical=cat,
                time_grid=torch.linspace(0.0, 1.0, steps + 1),
            )  # fmt: skip

    times, x = [], None
    for _ in range(repeat):
        t0 = timeit.default_timer()
        x = run()
        times.append(timeit.default_timer() - t0)
    return x.numpy(), min(times)


def board_metrics(q, x, *, key):
    hist = np.asarray(q.histogram(jnp.asarray(x)))
    w = np.asarray(q.weights)
    tv = 0.5 * np.abs(hist[:-1] - w).sum() + 0.5 * hist[-1]
    on = hist[:-1] > 0
    kl = float(np.sum(hist[:-1][on] * np.log(hist[:-1][on] / w[on])))
    return tv, kl, float(hist[-1])


def board_floor(q, n, *, key, repeats=64):
    tvs, kls = [], []
    rng = np.random.default_rng(int(jr.randint(key, (), 0, 2**31 - 1)))
    w = np.asarray(q.weights)
    for _ in range(repeats):
        h = rng.multinomial(n, w) / n
        tvs.append(0.5 * np.abs(h - w).sum())
        on = h > 0
        kls.append(np.sum(h[on] * np.log(h[on] / w[on])))
    return float(np.mean(tvs)), float(np.mean(kls))


def nll_per_token(chain, x):
    lp = np.asarray(chain.log_prob_batch(jnp.asarray(x)))
    ok = np.isfinite(lp)
    return float(-lp[ok].mean() / x.shape[1]), float(1 - ok.mean())


def figure(q, samples_by_steps, v, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 1 + len(samples_by_steps)
    fig, axes = plt.subplots(1, cols, figsize=(2.2 * cols, 2.4))
    truth = np.zeros((v, v))
    s = np.asarray(q.support)
    truth[s[:, 0], s[:, 1]] = np.asarray(q.weights)
    axes[0].imshow(truth.T, origin="lower", cmap="magma")
    axes[0].set_title("pmf", fontsize=9)
    for ax, (steps, x) in zip(axes[1:], samples_by_steps.items()):
        h = np.zeros((v, v))
        ok = (x < v).all(-1)
        np.add.at(h, (x[ok, 0], x[ok, 1]), 1.0 / len(x))
        ax.imshow(h.T, origin="lower", cmap="magma", vmin=0, vmax=truth.max() * 1.5)
        ax.set_title(f"jfm, {steps} steps", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small settings (about a minute)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    quick = args.quick
    key = jr.key(args.seed)
    RESULTS.mkdir(exist_ok=True)
    rows, csv_rows = [], []
    lr, batch = 1e-3, 256
    print(header())
    print(torch_versions())

    # (a) checkerboard -----------------------------------------------------------------
    v, length = 16, 2
    q = jfm.DiscreteMixture.checkerboard(v, cells=4)
    path = jfm.MixtureDiscretePath(jfm.CondOT(), v, "mask")
    train_steps = 1500 if quick else 6000
    n = 10000 if quick else 40000
    sample_steps = 64
    net = jfm.models.TokenMLP(length, v, hidden_features=128, depth=3, rngs=nnx.Rngs(args.seed))
    apply, params0 = jfm.split_model(net)
    tnet = torch_token_mlp(params0, length=length, vocab=v, time_embed_dim=64)
    pool = np.asarray(q.sample(batch * 200, key=jr.fold_in(key, 11))).reshape(200, batch, length)
    params, jrate, jcompile, jloss = train_jfm(
        apply, params0, path, pool, steps=train_steps, lr=lr, key=jr.fold_in(key, 12)
    )
    frate, floss = train_fm(tnet, pool, vocab=v, steps=train_steps, lr=lr, seed=args.seed)
    tv_floor, kl_floor = board_floor(q, n, key=jr.fold_in(key, 13))
    by_steps = {}
    for s in (4, 16, sample_steps):
        x, _, _ = sample_jfm(apply, params, path, n, length, s, key=jr.fold_in(key, 14), repeat=1)
        by_steps[s] = x
    xj, jtime, jfirst = sample_jfm(
        apply, params, path, n, length, sample_steps, key=jr.fold_in(key, 15)
    )
    xf, ftime = sample_fm(tnet, n, length, v, sample_steps, seed=args.seed)
    for name, x in (("jfm", xj), ("flow_matching", xf)):
        tv, kl, off = board_metrics(q, x, key=key)
        csv_rows.append(dict(task="checkerboard", library=name, tv=tv, tv_floor=tv_floor,
                             kl=kl, kl_floor=kl_floor, off_support=off))  # fmt: skip
        rows.append(["checkerboard", name, f"{tv:.4f} ({tv / tv_floor:.2f}x floor {tv_floor:.4f})",
                     f"{kl:.4f} (floor {kl_floor:.4f})", f"{off:.4f}", "", ""])  # fmt: skip
    speed = [["checkerboard", f"{jrate:.0f}", f"{frate:.0f}", f"{jrate / frate:.2f}",
              f"{jtime:.3f}", f"{ftime:.3f}", f"{ftime / jtime:.2f}", f"{jcompile:.1f} / {jfirst:.1f}"]]  # fmt: skip
    figure(q, by_steps, v, RESULTS / "discrete_checkerboard.png")
    print(f"checkerboard: losses jfm {jloss:.4f}, fm {floss:.4f}")

    # (b) Markov chain -----------------------------------------------------------------
    v, length = 16, 32
    chain = markov_task(v, seed=args.seed)
    h_tok = float(chain.entropy(length)) / length
    path = jfm.MixtureDiscretePath(jfm.CondOT(), v, "mask")
    train_steps = 1500 if quick else 6000
    n = 2000 if quick else 10000
    sample_steps = 128
    net = jfm.models.TokenMLP(length, v, hidden_features=512, depth=3, rngs=nnx.Rngs(args.seed + 1))
    apply, params0 = jfm.split_model(net)
    tnet = torch_token_mlp(params0, length=length, vocab=v, time_embed_dim=64)
    pool = np.asarray(chain.sample(batch * 200, length, key=jr.fold_in(key, 21)))
    pool = pool.reshape(200, batch, length)
    params, jrate, jcompile, jloss = train_jfm(
        apply, params0, path, pool, steps=train_steps, lr=lr, key=jr.fold_in(key, 22)
    )
    frate, floss = train_fm(tnet, pool, vocab=v, steps=train_steps, lr=lr, seed=args.seed)
    exact = np.asarray(chain.sample(n, length, key=jr.fold_in(key, 23)))
    nll_exact, _ = nll_per_token(chain, exact)
    xj, jtime, jfirst = sample_jfm(
        apply, params, path, n, length, sample_steps, key=jr.fold_in(key, 24)
    )
    xj32, _, _ = sample_jfm(apply, params, path, n, length, sample_steps, key=jr.fold_in(key, 24),
                            dtype=jnp.float32, repeat=1)  # fmt: skip
    xf, ftime = sample_fm(tnet, n, length, v, sample_steps, seed=args.seed)
    for name, x in (
        ("jfm", xj),
        ("jfm float32", xj32),
        ("flow_matching", xf),
        ("exact samples", exact),
    ):
        nll, fail = nll_per_token(chain, x)
        gap = nll / h_tok - 1
        csv_rows.append(dict(task="markov", library=name, nll_per_token=nll,
                             entropy_per_token=h_tok, rel_gap=gap, failed=fail))  # fmt: skip
        rows.append([f"markov L={length} V={v}", name, "", "",
                     f"{fail:.4f}", f"{nll:.4f} vs H {h_tok:.4f}", f"{100 * gap:+.2f}%"])  # fmt: skip
    speed.append([f"markov L={length}", f"{jrate:.0f}", f"{frate:.0f}", f"{jrate / frate:.2f}",
                  f"{jtime:.3f}", f"{ftime:.3f}", f"{ftime / jtime:.2f}", f"{jcompile:.1f} / {jfirst:.1f}"])  # fmt: skip
    print(f"markov: losses jfm {jloss:.4f}, fm {floss:.4f}; exact-sample NLL {nll_exact:.4f}")

    notes = (
        f"{'quick' if quick else 'full'} settings; {torch_versions()}. TV/KL: empirical pmf "
        "of the samples vs the truth (KL over the points hit; off-support mass reported "
        "apart); floor = the same statistics of as many exact samples (mean of 64). NLL: "
        "-log q(x) / L of the generated sequences under the true chain vs its exact "
        "entropy per token; 'failed' = sequences off the support or left masked."
    )
    text = write_table(
        RESULTS / "discrete.md", "Discrete flow matching: jfm vs flow_matching", rows,
        ["task", "sampler", "TV", "KL", "off support / failed", "NLL per token", "NLL gap"],
        notes,
    )  # fmt: skip
    text2 = write_table(
        RESULTS / "discrete_speed.md", "Discrete flow matching: speed, jfm vs flow_matching",
        speed,
        ["task", "jfm train steps/s", "fm train steps/s", "ratio", "jfm sample s", "fm sample s",
         "ratio (fm / jfm)", "jfm compile s (train / sample)"],
        f"batch {batch}, one XLA thread, torch.set_num_threads(1); sampling: best of 3 after "
        "a warm-up, the same number of steps and the same step law.",
    )  # fmt: skip
    fields = sorted({k for r in csv_rows for k in r})
    write_csv(RESULTS / "discrete.csv", [{k: r.get(k, "") for k in fields} for r in csv_rows])
    print(text)
    print(text2)


if __name__ == "__main__":
    main()
