"""Training and sampling speed: jfm against a minimal hand-written JAX loop.

Workloads (the foundation issue's):
  * training: MLP with 4 hidden layers of 512 (SiLU, 64-d sinusoidal time embedding),
    2-D moons, batch 4096, CondOT conditional flow matching, Adam; steady-state steps/s.
  * sampling: 10,000 points with Dopri5 at rtol = atol = 1e-5 (one joint solve).

The baseline does the same work without jfm: the same network written as plain jnp with
the very same weights, the CFM loss written inline, optax Adam, ``jax.jit`` with buffer
donation; sampling is a direct ``diffrax.diffeqsolve`` of that network. The ratio
``jfm / baseline`` of throughput is the abstraction tax (target >= 0.95x).

Usage: python benchmarks/train_sample.py [--repeat 5] [--steps 20] [--fit-steps 300]
"""

import argparse
import functools
import os
import sys
import timeit

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from flax import nnx

import jfm

sys.path.insert(0, os.path.dirname(__file__))
from _common import header, write_table  # noqa: E402

HIDDEN, DEPTH, EMB, BATCH, N_SAMPLES = 512, 4, 64, 4096, 10_000


def hand_embedding(t, dim=EMB, scale=1000.0, max_period=10000.0):
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=t.dtype) / half)
    arg = scale * t[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)


def hand_mlp(params, t, x):
    h = jnp.concatenate([x, hand_embedding(t)], axis=-1)
    for w, b in params[:-1]:
        h = jax.nn.silu(h @ w + b)
    w, b = params[-1]
    return h @ w + b


def to_hand_params(state):
    pure = nnx.to_pure_dict(state)
    layers = [(pure["hidden"][i]["kernel"], pure["hidden"][i]["bias"]) for i in range(DEPTH)]
    return layers + [(pure["out"]["kernel"], pure["out"]["bias"])]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--steps", type=int, default=20, help="train steps per timed call")
    p.add_argument("--fit-steps", type=int, default=300, help="training before sampling")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    a = p.parse_args()
    print(header())

    key = jr.key(0)
    model = jfm.models.MLP(
        2, hidden_features=HIDDEN, depth=DEPTH, time_embed_dim=EMB, rngs=nnx.Rngs(0)
    )
    apply, params = jfm.split_model(model)
    hparams = to_hand_params(params)
    tt, xx = jnp.linspace(0, 1, 8), jr.normal(key, (8, 2))
    err = float(jnp.max(jnp.abs(apply(params, tt, xx, None) - hand_mlp(hparams, tt, xx))))
    print(f"same network: max |jfm - hand| = {err:.2e}")
    assert err < 1e-5, "the baseline must compute the same function"

    x1 = jfm.data.moons(BATCH, key=jr.key(1), dtype=jnp.float32)
    opt = optax.adam(1e-3)
    path = jfm.AffinePath(jfm.CondOT())

    # jfm: make_train_step + cfm_loss, jitted by the caller with donation.
    jfm_step = jax.jit(
        jfm.make_train_step(apply, opt, functools.partial(jfm.cfm_loss, path=path)),
        donate_argnums=0,
    )

    def run_jfm(state, x1, key):
        # Python loop of jitted steps: the way users (and jfm.fit) drive training.
        carry = (state, None)
        for i in range(a.steps):
            carry = jfm_step(carry[0], x1, jr.fold_in(key, i))
        return carry[0]

    # Hand-written baseline.
    def hand_loss(hp, x1, key):
        kt, k0 = jr.split(key)
        t = jr.uniform(kt, (x1.shape[0],), x1.dtype)
        x0 = jr.normal(k0, x1.shape, x1.dtype)
        xt = t[:, None] * x1 + (1 - t[:, None]) * x0
        return jnp.mean(jnp.mean((hand_mlp(hp, t, xt) - (x1 - x0)) ** 2, axis=-1))

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def hand_step(hp, opt_state, x1, key):
        loss, g = jax.value_and_grad(hand_loss)(hp, x1, key)
        upd, opt_state = opt.update(g, opt_state, hp)
        return optax.apply_updates(hp, upd), opt_state, loss

    def run_hand(carry, x1, key):
        hp, os_ = carry
        for i in range(a.steps):
            hp, os_, _ = hand_step(hp, os_, x1, jr.fold_in(key, i))
        return hp, os_

    # Alternate the two, several repeats; each call runs `steps` steps. The first call of
    # each (on fresh copies: the steps donate their inputs) measures compilation.
    def fresh(tree):
        return jax.tree_util.tree_map(jnp.array, tree)

    rows = []
    t0 = timeit.default_timer()
    jstate = jax.block_until_ready(jfm_step(jfm.init_train_state(fresh(params), opt), x1, key)[0])
    c_j = timeit.default_timer() - t0
    hp0 = fresh(hparams)
    t0 = timeit.default_timer()
    hcarry = jax.block_until_ready(hand_step(hp0, opt.init(hp0), x1, key)[:2])
    c_h = timeit.default_timer() - t0
    tj, th = [], []
    for r in range(a.repeat):
        t0 = timeit.default_timer()
        jstate = jax.block_until_ready(run_jfm(jstate, x1, jr.fold_in(key, r)))
        tj.append((timeit.default_timer() - t0) / a.steps)
        t0 = timeit.default_timer()
        hcarry = jax.block_until_ready(run_hand(hcarry, x1, jr.fold_in(key, r)))
        th.append((timeit.default_timer() - t0) / a.steps)
    sj, sh = 1 / np.median(tj), 1 / np.median(th)
    rows.append(
        [
            "train step (B=4096, 4x512)",
            f"{sj:.2f} steps/s",
            f"{sh:.2f} steps/s",
            f"{sj / sh:.3f}",
            f"compile {c_j:.1f}s / {c_h:.1f}s",
        ]
    )
    print(rows[-1])

    # Train a little so the sampled field is not a near-linear random net.
    state = jfm.init_train_state(fresh(params), optax.adam(2e-3))
    fit_step = jax.jit(
        jfm.make_train_step(apply, optax.adam(2e-3), functools.partial(jfm.cfm_loss, path=path)),
        donate_argnums=0,
    )
    for i in range(a.fit_steps):
        state, _ = fit_step(
            state,
            jfm.data.moons(BATCH, key=jr.fold_in(key, 10_000 + i), dtype=jnp.float32),
            jr.fold_in(key, i),
        )
    trained = state.params
    hp_trained = to_hand_params(trained)

    x0 = jr.normal(jr.key(2), (N_SAMPLES, 2), jnp.float32)
    field = jfm.field_from_model(apply, trained)

    def jfm_sample(field, x0):
        return jfm.sample_ode(field, x0, solver=dfx.Dopri5(), rtol=1e-5, atol=1e-5)

    @jax.jit
    def hand_sample(hp, x0):
        term = dfx.ODETerm(lambda t, y, args: hand_mlp(args, jnp.broadcast_to(t, y.shape[:1]), y))
        sol = dfx.diffeqsolve(
            term,
            dfx.Dopri5(),
            0.0,
            1.0,
            None,
            x0,
            args=hp,
            stepsize_controller=dfx.PIDController(rtol=1e-5, atol=1e-5),
            max_steps=4096,
        )
        return sol.ys[-1], sol.stats["num_steps"]

    t0 = timeit.default_timer()
    jax.block_until_ready(jfm_sample(field, x0))
    c_j = timeit.default_timer() - t0
    t0 = timeit.default_timer()
    jax.block_until_ready(hand_sample(hp_trained, x0))
    c_h = timeit.default_timer() - t0
    tj, th = [], []
    for _ in range(a.repeat):
        t0 = timeit.default_timer()
        res = jax.block_until_ready(jfm_sample(field, x0))
        tj.append(timeit.default_timer() - t0)
        t0 = timeit.default_timer()
        hx, hsteps = jax.block_until_ready(hand_sample(hp_trained, x0))
        th.append(timeit.default_timer() - t0)
    diff = float(jnp.max(jnp.abs(res.x1 - hx)))
    mj, mh = np.median(tj), np.median(th)
    rows.append(
        [
            f"sample 10k, Dopri5 1e-5 (NFE jfm {int(res.nfe)}, steps {int(res.num_steps)}"
            f" / hand steps {int(hsteps)})",
            f"{mj:.3f} s",
            f"{mh:.3f} s",
            f"{mh / mj:.3f}",
            f"compile {c_j:.1f}s / {c_h:.1f}s; max|dx|={diff:.1e}",
        ]
    )
    print(rows[-1])
    text = write_table(
        os.path.join(a.out, "train_sample.md"),
        "Training and sampling: jfm vs a hand-written JAX loop",
        rows,
        ["workload", "jfm", "hand-written", "ratio (jfm speed / hand speed)", "notes"],
        notes=f"Medians over {a.repeat} alternated repeats ({a.steps} steps per training "
        "repeat). Ratio > 1 means jfm is faster. Command: python benchmarks/train_sample.py",
    )
    print(text)


if __name__ == "__main__":
    main()
