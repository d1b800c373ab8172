"""Digits end to end on the CPU: train a CFM model, then W2 to the test split and bits/dim.

Split: scikit-learn's 1797 8x8 digits, permuted with seed 0; the last ``--n-test`` (360)
are the test split, the rest the training split. The model (``--model unet``: the U-Net
of ``--unet-config``, or ``--model mlp``) is trained with CondOT conditional flow matching,
Adam and an EMA of the weights (sampled from), with ``jfm.fit`` checkpointing into
``--out`` (a rerun resumes).

Metrics (``jfm.metrics.w2``, the exact 2-Wasserstein distance, Hungarian assignment):

* ``W2(gen, test)``: ``n_test`` samples (Dopri5, rtol = atol = 1e-5) against the test split;
* the floor ``W2(train, test)``: ``n_test`` random training images against the test split,
  averaged over ``--floor-draws`` draws (the distance a perfect model would reach,
  since its samples are draws from the same distribution as the training images);
* bits/dim on the test split, by ``jfm.bits_per_dim`` with ``jfm.log_prob`` (exact
  divergence, or ``--divergence hutchinson`` for the U-Net, where 64 jvps per stage
  are too dear on a CPU; unbiased for ``log p``; Dopri5 at rtol = atol = 1e-5). Digits
  pixels are ``v in {0..16}`` (17 levels), trained at ``x = v / 8 - 1``. They are
  handed to ``bits_per_dim`` as 5-bit integers
  (``x' = (v + u) / 16 - 1``) and the model is evaluated at ``y = 2 x' + 1 - 1/16 =
  (v + u - 1/2) / 8 - 1`` (cell-centred uniform dequantisation at the training scale),
  with the Jacobian ``log 2`` per dimension added, so the figure is
  ``-E log p(y) / (D ln 2) + 3``: an upper bound on the code length of the 17-level data.

Usage: python benchmarks/digits_images.py --model unet --steps 4000 --out runs/digits-unet
"""

import argparse
import functools
import json
import math
import os
import sys
import time

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jfm  # noqa: E402


def split_digits(n_test: int):
    x = np.asarray(jfm.data.digits(dtype=jnp.float32))
    perm = np.random.default_rng(0).permutation(x.shape[0])
    return x[perm[:-n_test]], x[perm[-n_test:]]


def build(a):
    if a.model == "unet":
        cfg = jfm.models.unet_config(a.unet_config)
        if a.channels:
            cfg["channels"] = a.channels
        net = jfm.models.UNet(1, image_size=8, **cfg, rngs=nnx.Rngs(a.seed))
    else:
        net = jfm.models.MLP(64, hidden_features=a.hidden, depth=a.depth, rngs=nnx.Rngs(a.seed))
    return jfm.split_model(net)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("unet", "mlp"), default="unet")
    p.add_argument("--unet-config", default="tiny")
    p.add_argument("--channels", type=int, default=0, help="override the U-Net base width")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-test", type=int, default=360)
    p.add_argument("--floor-draws", type=int, default=5)
    p.add_argument("--bpd-n", type=int, default=360, help="test images for bits/dim")
    p.add_argument("--divergence", choices=("exact", "hutchinson"), default="exact")
    p.add_argument("--probes", type=int, default=4, help="Hutchinson probes per image")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)

    train, test = split_digits(a.n_test)
    train_j = jnp.asarray(train)
    apply, params = build(a)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(a.lr))
    path = jfm.AffinePath(jfm.CondOT())
    step = jfm.make_train_step(
        apply, opt, functools.partial(jfm.cfm_loss, path=path), ema_decay=a.ema
    )
    state = jfm.init_train_state(params, opt, ema=True)

    @jax.jit
    def batch_fn(key):
        return train_j[jr.randint(key, (a.batch,), 0, train_j.shape[0])]

    t0 = time.perf_counter()
    state, hist = jfm.fit(
        step,
        state,
        batch_fn,
        steps=a.steps,
        key=jr.key(a.seed),
        checkpoint_dir=os.path.join(os.path.abspath(a.out), "checkpoints"),
        checkpoint_every=500,
        progress=False,
        log_every=500,
    )
    t_train = time.perf_counter() - t0
    field = jfm.field_from_model(apply, state.ema_params)

    t0 = time.perf_counter()
    # drawn flat (same values): XLA:CPU compiles a rank-4 draw for ~15 s
    x0 = jr.normal(jr.key(a.seed + 1), (a.n_test * 64,), jnp.float32).reshape(a.n_test, 8, 8, 1)
    sol = jfm.sample_ode(field, x0, solver=dfx.Dopri5(), rtol=1e-5, atol=1e-5)
    gen = np.asarray(sol.x1)
    t_sample = time.perf_counter() - t0
    w2_gen = float(jfm.metrics.w2(gen, test))
    w2_gen_clip = float(jfm.metrics.w2(np.clip(gen, -1, 1), test))
    rng = np.random.default_rng(1)
    floors = [
        float(jfm.metrics.w2(train[rng.choice(len(train), a.n_test, replace=False)], test))
        for _ in range(a.floor_draws)
    ]
    floor = float(np.mean(floors))

    t0 = time.perf_counter()
    v = np.round((test[: a.bpd_n] + 1) * 8).astype(np.int32)  # 0..16

    @jax.jit
    def log_prob_fn(xp):
        y = 2 * xp + 1 - 1 / 16
        kw = {}
        if a.divergence == "hutchinson":
            kw = dict(divergence="hutchinson", key=jr.key(8), probes=a.probes)
        lp, _ = jfm.log_prob(field, y, solver=dfx.Dopri5(), rtol=1e-5, atol=1e-5, path=path, **kw)
        return lp + y[0].size * math.log(2.0)

    bpd = np.asarray(jfm.bits_per_dim(log_prob_fn, v, bits=5, key=jr.key(7), dtype=jnp.float32))
    t_bpd = time.perf_counter() - t0

    jfm.data.save_image_grid(np.clip(gen[:100], -1, 1), os.path.join(a.out, "samples.png"), scale=4)
    res = dict(
        model=a.model,
        unet_config=a.unet_config if a.model == "unet" else None,
        params=int(n_params),
        steps=int(state.step),
        batch=a.batch,
        train_seconds_this_call=round(t_train, 1),
        w2_gen_test=w2_gen,
        w2_gen_clipped_test=w2_gen_clip,
        w2_floor_train_test=floor,
        w2_floor_draws=floors,
        ratio=w2_gen / floor,
        ratio_clipped=w2_gen_clip / floor,
        sample_nfe=int(sol.nfe),
        sample_seconds=round(t_sample, 1),
        bpd_test_mean=float(bpd.mean()),
        bpd_test_median=float(np.median(bpd)),
        bpd_test_max=float(bpd.max()),
        bpd_test_sem=float(bpd.std(ddof=1) / math.sqrt(bpd.size)),
        bpd_n=int(bpd.size),
        bpd_divergence=a.divergence if a.divergence == "exact" else f"hutchinson x{a.probes}",
        bpd_seconds=round(t_bpd, 1),
        final_loss=hist["loss"][-1] if hist["loss"] else None,
    )
    np.save(os.path.join(a.out, "bpd_test.npy"), bpd)
    with open(os.path.join(a.out, "result.json"), "w") as f:
        json.dump(res, f, indent=2)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
