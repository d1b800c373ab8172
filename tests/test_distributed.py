"""Tests for jfm.distributed on 8 fake CPU devices (XLA_FLAGS in conftest.py)."""

import functools
import os

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

import jfm

from .helpers import raises_arg

N_DEV = 8
pytestmark = pytest.mark.skipif(
    jax.device_count() < N_DEV, reason="needs 8 (fake CPU) devices: see tests/conftest.py"
)
PATH = jfm.AffinePath(jfm.CondOT())
# Float64 reductions split over 8 devices add the same numbers in another order: the
# parameters agree to a few ulps times the number of steps, far below 1e-10.
RTOL = 1e-10


def mlp_setup(dtype=jnp.float64, width=16):
    net = jfm.models.MLP(
        4, hidden_features=width, depth=2, time_embed_dim=8, param_dtype=dtype, rngs=nnx.Rngs(0)
    )
    apply, params = jfm.split_model(net)
    opt = optax.adam(1e-2)
    step = jfm.make_train_step(
        apply, opt, functools.partial(jfm.cfm_loss, path=PATH), ema_decay=0.9
    )
    return apply, jfm.init_train_state(params, opt, ema=True), step


DATA = jr.normal(jr.key(3), (100, 4), jnp.float64)


def batch_fn(key):
    """Random rows of a table plus per-example noise: elementwise over the batch."""
    k1, k2 = jr.split(key)
    idx = jr.randint(k1, (16,), 0, DATA.shape[0])
    return DATA[idx] + 0.01 * jr.normal(k2, (16, 4), jnp.float64)


def leaves_close(a, b, rtol=RTOL):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True])
def test_sharded_step_equals_single_device_and_compiles_once(fsdp):
    _, state, step = mlp_setup()
    mesh = jfm.distributed.data_mesh()
    assert mesh.shape["data"] == N_DEV
    traced = eqx.debug.assert_max_traces(step, max_traces=1)  # fails on a second trace
    sharded = jfm.distributed.make_sharded_train_step(traced, mesh, state, fsdp=fsdp, min_size=64)
    shardings = jfm.distributed.state_sharding(state, mesh, fsdp=fsdp, min_size=64)
    s_state = jax.device_put(jax.tree.map(jnp.copy, state), shardings)
    before = jax.tree.map(jax.typeof, s_state)
    single = jax.jit(step)
    ref = state
    for i in range(2):
        key = jr.key(i)
        batch = batch_fn(jr.fold_in(key, 1))
        ref, ref_m = single(ref, batch, key)
        s_state, m = sharded(s_state, jfm.distributed.shard_batch(batch, mesh), key)
        assert jax.tree.map(jax.typeof, s_state) == before  # dtypes, shapes and shardings
    assert sharded._cache_size() == 1  # no recompilation after the first step
    leaves_close(s_state, ref)
    np.testing.assert_allclose(float(m["loss"]), float(ref_m["loss"]), rtol=RTOL)
    n_split = 0
    for leaf, sh in zip(jax.tree.leaves(s_state), jax.tree.leaves(shardings)):
        assert leaf.sharding.is_equivalent_to(sh, leaf.ndim)
        n_split += any(s is not None for s in sh.spec)
        if fsdp and any(s is not None for s in sh.spec):
            # each device holds 1/8 of a split leaf
            assert leaf.addressable_shards[0].data.size * N_DEV == leaf.size
    # FSDP splits the large kernels (and their Adam moments and EMA); replicated splits none
    assert (n_split > 0) == fsdp


@pytest.mark.slow
def test_unet_sharded_step_equals_single_device():
    net = jfm.models.UNet(
        1,
        image_size=4,
        channels=4,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(2,),
        groups=2,
        param_dtype=jnp.float64,
        rngs=nnx.Rngs(1),
    )
    apply, params = jfm.split_model(net)
    opt = optax.adam(1e-3)
    step = jfm.make_train_step(apply, opt, functools.partial(jfm.cfm_loss, path=PATH))
    state = jfm.init_train_state(params, opt)
    mesh = jfm.distributed.data_mesh()
    x = jr.uniform(jr.key(0), (N_DEV, 4, 4, 1), jnp.float64, -1, 1)
    ref, _ = jax.jit(step)(state, x, jr.key(1))
    s_state = jax.device_put(state, jfm.distributed.state_sharding(state, mesh))
    out, _ = jfm.distributed.make_sharded_train_step(step, mesh, state)(
        s_state, jfm.distributed.shard_batch(x, mesh), jr.key(1)
    )
    leaves_close(out, ref)


def test_sharded_batch_fn_slices_without_duplication():
    mesh = jfm.distributed.data_mesh()
    fn = jfm.distributed.sharded_batch_fn(batch_fn, mesh)
    key = jr.key(11)
    out = fn(key)
    # The same global batch as on one device, whatever the device count ...
    np.testing.assert_array_equal(np.asarray(out), np.asarray(jax.jit(batch_fn)(key)))
    on_two = jfm.distributed.sharded_batch_fn(batch_fn, jfm.distributed.data_mesh(2))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(on_two(key)))
    # ... split in order, 2 rows per device ...
    assert out.sharding.is_equivalent_to(jfm.distributed.batch_sharding(mesh), 2)
    for shard in out.addressable_shards:
        rows = shard.index[0]
        assert shard.data.shape == (2, 4)
        np.testing.assert_array_equal(np.asarray(shard.data), np.asarray(out)[rows])
    # ... and each device computes only its slice: no collective in the compiled program.
    hlo = jax.jit(batch_fn, out_shardings=jfm.distributed.batch_sharding(mesh)).lower(key).compile()
    text = hlo.as_text()
    for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute"):
        assert op not in text


@pytest.mark.slow
def test_sharded_sampling_and_log_prob_equal_single_device():
    apply, state, _ = mlp_setup()
    field = jfm.field_from_model(apply, state.params)
    mesh = jfm.distributed.data_mesh()
    x0 = jr.normal(jr.key(0), (16, 4), jnp.float64)
    ref = jfm.sample_ode(field, x0, solver=dfx.Heun(), steps=8).x1
    sample = jfm.distributed.shard_over_batch(
        lambda f, x: jfm.sample_ode(f, x, solver=dfx.Heun(), steps=8).x1, mesh
    )
    out = sample(field, x0)
    assert out.sharding.is_equivalent_to(jfm.distributed.batch_sharding(mesh), 2)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=RTOL, atol=1e-12)

    lp_ref, _ = jfm.log_prob(field, ref, solver=dfx.Heun(), steps=8, path=PATH)
    log_prob = jfm.distributed.shard_over_batch(
        lambda f, x: jfm.log_prob(f, x, solver=dfx.Heun(), steps=8, path=PATH)[0], mesh
    )
    lp = log_prob(field, ref)
    assert lp.sharding.is_equivalent_to(jfm.distributed.batch_sharding(mesh), 1)
    np.testing.assert_allclose(np.asarray(lp), np.asarray(lp_ref), rtol=RTOL)
    with raises_arg(ValueError, "batch", "divisible"):
        sample(field, x0[:12])


# -- couplings of a split batch ----------------------------------------------------------------


def _per_group(coupling, x0, x1, k, key=None):
    """The coupling of each group of k consecutive device slices, concatenated."""
    b = x0.shape[0] // (N_DEV // k)
    f = jax.jit(lambda a, c, kg: coupling(a, c, key=kg)[0])  # one compilation for all groups
    out = []
    for g in range(N_DEV // k):
        sl = slice(g * b, (g + 1) * b)
        out.append(f(x0[sl], x1[sl], None if key is None else jr.fold_in(key, g)))
    return np.concatenate(out)


def _split_problem(mesh):
    x0 = jr.normal(jr.key(0), (64, 2), jnp.float64)
    x1 = 3.0 + jr.normal(jr.key(1), (64, 2), jnp.float64)
    return x0, x1, *jfm.distributed.shard_batch((x0, x1), mesh)


# A device-side solver: host callbacks next to collectives can deadlock on fake CPU devices
# (see shard_coupling).
OT_DEVICE = functools.partial(jfm.exact_ot_coupling, method="hungarian")


def test_shard_coupling_global_equals_single_device():
    mesh = jfm.distributed.data_mesh()
    x0, x1, s0, s1 = _split_problem(mesh)
    # Gather, solve, scatter: bitwise the single-device coupling of the whole batch, split
    # over the devices like the input.
    c0, c1 = jax.jit(jfm.distributed.shard_coupling(OT_DEVICE, mesh, scope="global"))(s0, s1)
    np.testing.assert_array_equal(c0, jax.jit(OT_DEVICE)(x0, x1)[0])
    np.testing.assert_array_equal(c1, x1)
    assert c0.sharding.is_equivalent_to(jfm.distributed.batch_sharding(mesh), 2)


@pytest.mark.slow
def test_shard_coupling_per_device_per_group_and_keys():
    mesh = jfm.distributed.data_mesh()
    x0, x1, s0, s1 = _split_problem(mesh)

    def shuffle(a, b, *, key):  # a random coupling (cheap to compile): the key's role
        return jr.permutation(key, a), b

    key = jr.key(2)

    def run(coupling, scope):
        f = jfm.distributed.shard_coupling(coupling, mesh, scope=scope)
        return jax.jit(lambda a, b, k: f(a, b, key=k))(s0, s1, key)

    # Global with a key: the single-device draw with the same key.
    np.testing.assert_array_equal(run(shuffle, "global")[0], shuffle(x0, x1, key=key)[0])
    # Per device, and per group of 4 devices: each group's own coupling, its index folded
    # into the key of a random one.
    np.testing.assert_array_equal(run(OT_DEVICE, "device")[0], _per_group(OT_DEVICE, x0, x1, 1))
    np.testing.assert_array_equal(run(shuffle, 4)[0], _per_group(shuffle, x0, x1, 4, key))
    # A plain jit of the coupling on the split batch lets XLA gather it whole: global too.
    np.testing.assert_array_equal(jax.jit(OT_DEVICE)(s0, s1)[0], OT_DEVICE(x0, x1)[0])


@pytest.mark.slow
def test_sharded_ot_cfm_step_with_the_global_plan_equals_single_device():
    apply, state, _ = mlp_setup()
    mesh = jfm.distributed.data_mesh()
    opt = optax.adam(1e-2)
    ot = OT_DEVICE
    global_ot = jfm.distributed.shard_coupling(ot, mesh)
    single = jfm.make_train_step(
        apply, opt, functools.partial(jfm.cfm_loss, path=PATH, coupling=ot)
    )
    step = jfm.make_train_step(
        apply, opt, functools.partial(jfm.cfm_loss, path=PATH, coupling=global_ot)
    )
    state = jfm.init_train_state(state.params, opt)
    sharded = jfm.distributed.make_sharded_train_step(step, mesh, state, donate=False)
    s_state = jax.device_put(state, jfm.distributed.state_sharding(state, mesh))
    ref = state
    for i in range(2):
        batch = batch_fn(jr.key(10 + i))
        ref, _ = jax.jit(single)(ref, batch, jr.key(i))
        s_state, _ = sharded(s_state, jfm.distributed.shard_batch(batch, mesh), jr.key(i))
    leaves_close(s_state, ref)


def test_fit_with_sharded_step_restores_shardings(tmp_path):
    _, state, step = mlp_setup()
    mesh = jfm.distributed.data_mesh()
    shardings = jfm.distributed.state_sharding(state, mesh, fsdp=True, min_size=64)
    sharded = jfm.distributed.make_sharded_train_step(step, mesh, state, fsdp=True, min_size=64)
    s_state = jax.device_put(state, shardings)
    bf = jfm.distributed.sharded_batch_fn(batch_fn, mesh)
    kw = dict(key=jr.key(0), checkpoint_dir=tmp_path, checkpoint_every=2, progress=False)
    out, _ = jfm.fit(sharded, s_state, bf, steps=4, **kw)
    ref, _ = jfm.fit(step, state, batch_fn, steps=4, key=jr.key(0), progress=False)
    leaves_close(out, ref)
    restored = jfm.restore_checkpoint(tmp_path, s_state)
    for leaf, sh in zip(jax.tree.leaves(restored), jax.tree.leaves(shardings)):
        assert leaf.sharding.is_equivalent_to(sh, leaf.ndim)
    leaves_close(restored, out, rtol=0)


def test_errors():
    with raises_arg(ValueError, "devices"):
        jfm.distributed.data_mesh(0)
    with raises_arg(ValueError, "devices"):
        jfm.distributed.data_mesh(jax.device_count() + 1)
    with raises_arg(ValueError, "devices", "at least one"):
        jfm.distributed.data_mesh([])
    with raises_arg(TypeError, "devices"):
        jfm.distributed.data_mesh([0, 1])
    with raises_arg(TypeError, "axis"):
        jfm.distributed.data_mesh(2, axis="")
    mesh = jfm.distributed.data_mesh()
    with raises_arg(ValueError, "batch", "divisible by the 8 devices"):
        jfm.distributed.shard_batch(jnp.zeros((6, 2)), mesh)
    with raises_arg(ValueError, "batch_fn output", "divisible"):
        jfm.distributed.sharded_batch_fn(lambda k: jnp.zeros((4, 2)), mesh)(jr.key(0))
    with raises_arg(TypeError, "batch_fn"):
        jfm.distributed.sharded_batch_fn(jnp.zeros((8, 2)), mesh)
    with raises_arg(TypeError, "fn"):
        jfm.distributed.shard_over_batch("sample", mesh)
    with raises_arg(TypeError, "mesh"):
        jfm.distributed.batch_sharding("data")
    with raises_arg(TypeError, "mesh"):
        jfm.distributed.replicate({"w": jnp.zeros(2)}, "data")
    with raises_arg(ValueError, "axis"):
        jfm.distributed.batch_sharding(mesh, axis="model")
    with raises_arg(TypeError, "state"):
        jfm.distributed.make_sharded_train_step(lambda *a: a, mesh, {"w": jnp.zeros(2)})
    _, state, step = mlp_setup()
    with raises_arg(TypeError, "train_step"):
        jfm.distributed.make_sharded_train_step("step", mesh, state)
    with raises_arg(TypeError, "fsdp"):
        jfm.distributed.state_sharding(state, mesh, fsdp=1)
    with raises_arg(ValueError, "min_size"):
        jfm.distributed.state_sharding(state, mesh, min_size=0)
    with raises_arg(TypeError, "donate"):
        jfm.distributed.make_sharded_train_step(step, mesh, state, donate=None)
    with raises_arg(ValueError, "process_id"):
        jfm.distributed.initialize("localhost:1", num_processes=2, process_id=2)
    replicated = jfm.distributed.state_sharding({"w": jnp.zeros(3)}, mesh)["w"]
    assert replicated == NamedSharding(mesh, P())
    ot = jfm.exact_ot_coupling
    for bad in (3, 0, "host"):
        with raises_arg(ValueError, "scope"):
            jfm.distributed.shard_coupling(ot, mesh, scope=bad)
    with raises_arg(TypeError, "scope"):
        jfm.distributed.shard_coupling(ot, mesh, scope=2.0)
    with raises_arg(TypeError, "coupling"):
        jfm.distributed.shard_coupling("exact_ot", mesh)
    with raises_arg(ValueError, "x0, x1", "divisible"):
        jfm.distributed.shard_coupling(ot, mesh)(jnp.zeros((12, 2)), jnp.zeros((12, 2)))


def test_the_helpers_live_in_jfm_distributed_only():
    names = (
        "batch_sharding initialize data_mesh make_sharded_train_step replicate shard_batch "
        "shard_coupling shard_over_batch sharded_batch_fn state_sharding"
    ).split()
    assert sorted(jfm.distributed.__all__) == sorted(names)
    for name in names + ["make_mesh"]:
        assert not hasattr(jfm, name), name  # nothing flat in jfm; nothing shadows jax


@pytest.mark.slow
def test_two_processes_equal_one_process_with_eight_devices(tmp_path):
    """2 processes x 4 fake CPU devices (gloo collectives, a localhost coordinator) run the
    sharded OT-CFM step with the global plan; the parameters equal one 8-device process's."""
    import socket
    import subprocess
    import sys

    from . import multihost_worker

    with socket.socket() as s:  # a free port for the coordinator
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    worker = str(multihost_worker.__file__)
    out = str(tmp_path / "params.npz")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    procs = [
        subprocess.Popen(
            [sys.executable, worker, str(i), "2", port, out],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    got = np.load(out)
    ref = multihost_worker.train(jax, jfm)  # this process: 8 local devices
    assert len(got.files) == len(ref)
    for i, r in enumerate(ref):
        # float64 reductions in another order (gloo vs in-process): round-off only
        np.testing.assert_allclose(got[f"arr_{i}"], r, rtol=1e-10, atol=1e-12)
