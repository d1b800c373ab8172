"""Timing helpers shared by the benchmark scripts (not part of the library)."""

import os
import platform
import timeit

import jax


def header() -> str:
    import diffrax
    import flax
    import optax

    dev = jax.devices()[0]
    flags = os.environ.get("XLA_FLAGS", "").strip()
    return (
        (f"XLA_FLAGS='{flags}'; " if flags else "")
        + f"device: {dev.platform} ({dev.device_kind}), {jax.device_count()} device(s); "
        f"python {platform.python_version()}, jax {jax.__version__}, diffrax "
        f"{diffrax.__version__}, flax {flax.__version__}, optax {optax.__version__}"
    )


def compile_and_time(fn, *args, repeat: int = 5, number: int = 1):
    """(first-call seconds, best of ``repeat`` seconds per call) for ``fn(*args)``."""
    t0 = timeit.default_timer()
    jax.block_until_ready(fn(*args))
    first = timeit.default_timer() - t0
    times = timeit.repeat(lambda: jax.block_until_ready(fn(*args)), number=number, repeat=repeat)
    return first, min(times) / number


def write_table(path, title: str, rows: list[list], columns: list[str], notes: str = "") -> str:
    lines = [f"# {title}", "", header(), ""]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    if notes:
        lines += ["", notes]
    text = "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text)
    return text


# -- shared by vs_pytorch.py and likelihood.py: one network in jfm and in torch ----------

#: What each activation of jfm.models.MLP is called in torch.
TORCH_ACTIVATIONS = {"silu": "SiLU", "selu": "SELU"}


def alternate(fns: dict, repeat: int) -> dict:
    """Call every ``fns[name]()`` once per round, ``repeat`` rounds, alternating the names
    (so slow drifts of a shared machine hit all alike); ``{name: [seconds, ...]}``. Each
    function must block until its result is ready."""
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = timeit.default_timer()
            fn()
            times[name].append(timeit.default_timer() - t0)
    return times


def first_call(fn) -> tuple[float, object]:
    """``(seconds, result)`` of one call: the compile (jfm) or warm-up (torch) time."""
    t0 = timeit.default_timer()
    out = fn()
    return timeit.default_timer() - t0, out


def mlp_layers(params) -> list:
    """The ``(kernel [in, out], bias [out])`` pairs of a ``jfm.models.MLP`` state, input to
    output, as numpy arrays."""
    import numpy as np
    from flax import nnx

    pure = nnx.to_pure_dict(params)
    hidden = pure["hidden"]
    layers = [(hidden[i]["kernel"], hidden[i]["bias"]) for i in range(len(hidden))]
    layers.append((pure["out"]["kernel"], pure["out"]["bias"]))
    return [(np.asarray(w), np.asarray(b)) for w, b in layers]


def mlp_flops(batch: int, widths: list[int]) -> int:
    """Multiply-add FLOPs of one forward pass: ``2 B sum_l in_l out_l``."""
    return 2 * batch * sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def train_flops(batch: int, widths: list[int]) -> int:
    """FLOPs of the matrix products of one training step (forward, backward to the weights
    and to every layer's input except the first): about 3x the forward."""
    fwd = mlp_flops(batch, widths)
    return 3 * fwd - 2 * batch * widths[0] * widths[1]


def gemm_products(batch: int, widths: list[int], *, train: bool):
    """``(run, flops)``: ``run()`` computes, with bare ``jnp.dot`` in one jitted function
    (float32) and blocks, the matrix products of one forward pass (``train=False``) or
    one training step (``train=True``: also ``dY W^T`` and ``X^T dY`` per layer) of an
    MLP with these widths; ``flops`` is their FLOP count. Nothing but those products: the
    ceiling for a workload bound by them. Compiled here."""
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    xs = [jnp.asarray(rng.standard_normal((batch, a)), jnp.float32) for a in widths[:-1]]
    gs = [jnp.asarray(rng.standard_normal((batch, b)), jnp.float32) for b in widths[1:]]
    ws = [
        jnp.asarray(rng.standard_normal((a, b)), jnp.float32)
        for a, b in zip(widths[:-1], widths[1:])
    ]

    def products(xs, gs, ws):
        out = [jnp.dot(x, w) for x, w in zip(xs, ws)]
        if train:
            out += [jnp.dot(g, w.T) for g, w in zip(gs[1:], ws[1:])]
            out += [jnp.dot(x.T, g) for x, g in zip(xs, gs)]
        return out

    f = jax.jit(products)
    jax.block_until_ready(f(xs, gs, ws))
    flops = train_flops(batch, widths) if train else mlp_flops(batch, widths)
    return (lambda: jax.block_until_ready(f(xs, gs, ws))), flops


def gemm_ceiling(batch: int, widths: list[int], *, train: bool, repeat: int = 5):
    """GFLOP/s of :func:`gemm_products` (best of ``repeat`` calls)."""
    run, flops = gemm_products(batch, widths, train=train)
    t = min(timeit.repeat(run, number=1, repeat=repeat))
    return flops / t / 1e9


def torch_gemm_rate(batch: int, widths: list[int], *, repeat: int = 5) -> float:
    """The same forward products as :func:`gemm_ceiling` with ``torch.mm`` (GFLOP/s)."""
    import torch

    xs = [torch.randn(batch, a) for a in widths[:-1]]
    ws = [torch.randn(a, b) for a, b in zip(widths[:-1], widths[1:])]

    def run():
        return [x @ w for x, w in zip(xs, ws)]

    run()
    t = min(timeit.repeat(run, number=3, repeat=repeat))
    return mlp_flops(batch, widths) / (t / 3) / 1e9


def torch_mlp(params, activation: str, *, time_embed_dim: int, time_scale: float = 1000.0):
    """A torch ``nn.Module`` ``(x [B, D], t [B] or scalar) -> [B, D]`` computing exactly
    ``jfm.models.MLP`` with these (copied) parameters: ``[x, sinusoidal(t)]`` through the
    hidden layers and the output layer. ``activation``: a key of ``TORCH_ACTIVATIONS``."""
    import math

    import torch
    from torch import nn

    layers = mlp_layers(params)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            lins = []
            for w, b in layers:
                lin = nn.Linear(w.shape[0], w.shape[1])
                with torch.no_grad():
                    lin.weight.copy_(torch.from_numpy(w.T.copy()))
                    lin.bias.copy_(torch.from_numpy(b.copy()))
                lins.append(lin)
            self.lins = nn.ModuleList(lins)
            self.act = getattr(nn, TORCH_ACTIVATIONS[activation])()
            half = time_embed_dim // 2
            freqs = torch.exp(-math.log(10000.0) / half * torch.arange(half, dtype=torch.float32))
            self.register_buffer("freqs", freqs)

        def forward(self, x, t):
            t = torch.as_tensor(t, dtype=x.dtype).reshape(-1).expand(x.shape[0])
            ang = (time_scale * t)[:, None] * self.freqs[None, :]
            h = torch.cat([x, torch.sin(ang), torch.cos(ang)], dim=-1)
            for lin in self.lins[:-1]:
                h = self.act(lin(h))
            return self.lins[-1](h)

    return Net()


class CountingVelocity:
    """``flow_matching`` velocity model ``(x, t) -> u`` wrapping a torch net; counts calls
    (one per ODE right-hand-side evaluation: the NFE of torchdiffeq's solve)."""

    def __init__(self, net):
        from flow_matching.utils import ModelWrapper

        class Wrapped(ModelWrapper):
            def forward(inner, x, t, **extras):
                self.nfe += 1
                return inner.model(x, t)

        self.nfe = 0
        self.model = Wrapped(net)

    def __call__(self, x, t, **extras):
        return self.model(x=x, t=t, **extras)


def torch_versions() -> str:
    try:
        import flow_matching
        import torch
        import torchdiffeq
    except ImportError as e:  # the optional `bench` extra
        return f"torch/flow_matching not installed ({e})"
    return (
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), torchdiffeq "
        f"{torchdiffeq.__version__}, flow_matching {getattr(flow_matching, '__version__', '?')}"
    )


def train_jfm_mlp(*, hidden, depth, activation, steps, batch, lr, key, data="moons"):
    """A ``jfm.models.MLP`` on 2-D toy data trained by jfm for ``steps`` Adam steps (so the
    benchmarked field is not a near-linear random net); ``(apply, params)``."""
    import functools

    import jax.numpy as jnp
    import jax.random as jr
    import optax
    from flax import nnx

    import jfm

    act = {"silu": nnx.silu, "selu": nnx.selu}[activation]
    model = jfm.models.MLP(2, hidden_features=hidden, depth=depth, activation=act, rngs=nnx.Rngs(0))
    apply, params = jfm.split_model(model)
    path = jfm.AffinePath(jfm.CondOT())
    opt = optax.adam(lr)
    step = jax.jit(
        jfm.make_train_step(apply, opt, functools.partial(jfm.cfm_loss, path=path)),
        donate_argnums=0,
    )
    state = jfm.init_train_state(params, opt)
    gen = getattr(jfm.data, data)
    for i in range(steps):
        x1 = gen(batch, key=jr.fold_in(key, 2 * i), dtype=jnp.float32)
        state, _ = step(state, x1, jr.fold_in(key, 2 * i + 1))
    return apply, jax.block_until_ready(state.params)


def check_same_field(apply, params, net, *, n=64, tol=1e-4) -> float:
    """Max |jfm - torch| of the two networks on random (t, x); raises past ``tol`` (float32
    round-off of a few 512-wide products)."""
    import jax.numpy as jnp
    import numpy as np
    import torch

    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, 2)).astype(np.float32) * 2
    t = rng.uniform(size=n).astype(np.float32)
    a = np.asarray(apply(params, jnp.asarray(t), jnp.asarray(x), None))
    with torch.no_grad():
        b = net(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    err = float(np.max(np.abs(a - b)))
    if not err < tol:
        raise AssertionError(f"jfm and torch networks differ: max |dv| = {err:.2e} > {tol}")
    return err


def write_csv(path, rows: list[dict]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
