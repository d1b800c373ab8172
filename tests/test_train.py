"""Tests for the training pieces (jfm/_train/): TrainState, train_step, fit, checkpoints."""

import functools
import os

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import jfm

from .helpers import raises_arg

D, B = 3, 8


def apply(params, t, x, args):
    """A tiny batch-first 'model': x @ w + b + t (t broadcast over features)."""
    return x @ params["w"] + params["b"][None, :] + t[:, None]


def loss_fn(apply, params, batch, *, key):
    """Per-example squared error at random times t ~ U[0, 1) (the key matters)."""
    x, y = batch
    t = jr.uniform(key, (x.shape[0],), dtype=x.dtype)
    return jnp.sum((apply(params, t, x, None) - y) ** 2, axis=-1)


def make_params(key, dtype=jnp.float64):
    kw, kb = jr.split(key)
    return {"w": jr.normal(kw, (D, D), dtype), "b": jr.normal(kb, (D,), dtype)}


W_TRUE = jnp.asarray([[1.0, -2.0, 0.5], [0.0, 1.5, -1.0], [2.0, 0.3, 0.7]])


def batch_fn(key):
    """A pure function of a key: x ~ N(0, I), y = x W_true + 0.5 + noise."""
    kx, kn = jr.split(key)
    x = jr.normal(kx, (B, D))
    return x, x @ W_TRUE + 0.5 + 0.1 * jr.normal(kn, (B, D))


def hand_step(optimizer, params, opt_state, batch, key):
    """The textbook step, written out independently of jfm."""

    def mean_loss(p):
        return jnp.mean(loss_fn(apply, p, batch, key=key))

    loss, grads = jax.value_and_grad(mean_loss)(params)
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam mixes float and int32
        updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, grads


def trees_equal(a, b):
    """Bit-for-bit equality of two pytrees (structure, dtypes and values)."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    return all(
        x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def fresh_state(optimizer=None, *, ema=True):
    optimizer = optimizer or optax.adam(1e-2)
    return jfm.init_train_state(make_params(jr.key(0)), optimizer, ema=ema)


ADAM = optax.adam(1e-2)
STEP = jfm.make_train_step(apply, ADAM, loss_fn, ema_decay=0.9)


# -- train_step -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", [optax.sgd(0.1), optax.adam(1e-2)], ids=["sgd", "adam"])
def test_train_step_equals_hand_written_step(optimizer, getkey):
    params = make_params(getkey())
    batch, key = batch_fn(getkey()), getkey()
    state = jfm.init_train_state(params, optimizer)
    new, metrics = jax.jit(jfm.make_train_step(apply, optimizer, loss_fn))(state, batch, key)
    p, o, loss, grads = jax.jit(hand_step, static_argnums=0)(
        optimizer, params, optimizer.init(params), batch, key
    )
    # Same operations in the same order under jit: identical bits.
    assert trees_equal(new.params, p) and trees_equal(new.opt_state, o)
    assert float(metrics["loss"]) == float(loss)
    gnorm = np.sqrt(sum(np.sum(np.asarray(g) ** 2) for g in jax.tree.leaves(grads)))
    # Global L2 norm, summed in another order: float64 round-off.
    np.testing.assert_allclose(float(metrics["grad_norm"]), gnorm, rtol=1e-13)
    assert new.step.dtype == jnp.int32 and int(new.step) == 1 and new.ema_params is None
    # The key reaches loss_fn: another key gives another step.
    other, _ = jfm.make_train_step(apply, optimizer, loss_fn)(state, batch, key=getkey())
    assert not trees_equal(other.params, new.params)


def test_ema_follows_the_recursion(getkey):
    decay, n = 0.8, 5
    opt = optax.sgd(0.05)
    params = make_params(getkey())
    state = jfm.init_train_state(params, opt, ema=True)
    step = jax.jit(jfm.make_train_step(apply, opt, loss_fn, ema_decay=decay))
    p, o, ema = params, opt.init(params), params
    for _ in range(n):
        batch, key = batch_fn(getkey()), getkey()
        state, _ = step(state, batch, key)
        p, o, _, _ = hand_step(opt, p, o, batch, key)
        ema = jax.tree.map(lambda e, q: decay * e + (1 - decay) * q, ema, p)
    # optax computes (1 - (1 - d)) * ema: equal to d * ema up to float64 round-off.
    for a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(ema)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # The average lags the parameters: it is not simply a copy of them.
    assert not np.allclose(state.ema_params["w"], state.params["w"], atol=1e-3)


def test_training_converges_to_least_squares_optimum(getkey):
    n = 64
    x = jr.normal(getkey(), (n, D))
    y = x @ W_TRUE + 0.5 + 0.3 * jr.normal(getkey(), (n, D))

    def det_loss(apply, params, batch, *, key):  # t = 0: plain linear regression
        xb, yb = batch
        return jnp.sum((apply(params, jnp.zeros(xb.shape[0]), xb, None) - yb) ** 2, axis=-1)

    opt = optax.sgd(0.1, momentum=0.9)
    state = jfm.init_train_state({"w": jnp.zeros((D, D)), "b": jnp.zeros(D)}, opt)
    step = jfm.make_train_step(apply, opt, det_loss)
    state, hist = jfm.fit(
        step, state, lambda k: (x, y), steps=400, key=getkey(), progress=False, log_every=400
    )
    coef = np.linalg.lstsq(np.hstack([np.asarray(x), np.ones((n, 1))]), np.asarray(y), rcond=None)[
        0
    ]
    # Full-batch heavy-ball on a well-conditioned quadratic: contracts far below 1e-8.
    np.testing.assert_allclose(state.params["w"], coef[:D], atol=1e-8)
    np.testing.assert_allclose(state.params["b"], coef[D], atol=1e-8)
    assert hist["loss"][-1] < hist["loss"][0]


def test_no_recompilation_and_dtypes_preserved(getkey):
    traces = []

    def counting_loss(apply, params, batch, *, key):
        traces.append(1)  # runs only when traced
        return loss_fn(apply, params, batch, key=key)

    opt = optax.adam(1e-2)
    state = jfm.init_train_state(make_params(getkey(), jnp.float32), opt, ema=True)
    before = jax.tree.map(jax.typeof, state)
    step = jax.jit(jfm.make_train_step(apply, opt, counting_loss, ema_decay=0.99), donate_argnums=0)
    for _ in range(3):
        x, y = batch_fn(getkey())
        state, metrics = step(state, (x.astype(jnp.float32), y.astype(jnp.float32)), getkey())
    assert len(traces) == 1
    assert jax.tree.map(jax.typeof, state) == before  # dtypes, shapes, weak types unchanged
    assert state.params["w"].dtype == jnp.float32 and state.ema_params["b"].dtype == jnp.float32
    assert metrics["loss"].dtype == jnp.float32 and int(state.step) == 3


def test_init_train_state_strips_weak_types():
    state = jfm.init_train_state({"s": jnp.asarray(1.0)}, optax.sgd(0.1), ema=True)
    assert not state.params["s"].weak_type
    # The EMA is a copy (a buffer must not be donated twice), equal in value.
    assert state.ema_params["s"] is not state.params["s"] and float(state.ema_params["s"]) == 1.0


# -- fit ------------------------------------------------------------------------------------


def test_fit_is_the_documented_loop_and_deterministic(getkey):
    key, s0 = getkey(), fresh_state()
    s1, h1 = jfm.fit(STEP, s0, batch_fn, steps=7, key=key, progress=False, log_every=3)
    # fit donates only its own copy: the caller's state is still valid and reusable.
    s2, h2 = jfm.fit(STEP, s0, batch_fn, steps=7, key=key, progress=False)
    assert trees_equal(s1, s2) and h1["loss"] == h2["loss"] and trees_equal(s0, fresh_state())
    # The documented keys: step i uses split(fold_in(key, i)) = (data key, step key).
    jstep, state, losses = jax.jit(STEP), fresh_state(), []
    for i in range(1, 8):
        data_key, step_key = jr.split(jr.fold_in(key, i))
        state, metrics = jstep(state, batch_fn(data_key), step_key)
        losses.append(float(metrics["loss"]))
    assert trees_equal(s1, state) and h1["loss"] == losses
    assert h1["step"] == list(range(1, 8)) and len(h1["grad_norm"]) == 7
    s3, _ = jfm.fit(STEP, fresh_state(), batch_fn, steps=7, key=getkey(), progress=False)
    assert not trees_equal(s3.params, s1.params)  # another key, another run


def test_fit_eval_schedule_and_quietness(capsys):
    calls = []

    def eval_fn(state):
        calls.append(int(state.step))
        return {"step_seen": state.step, "w00": state.params["w"][0, 0]}

    state, hist = jfm.fit(
        STEP,
        fresh_state(),
        batch_fn,
        steps=7,
        key=jr.key(1),
        eval_fn=eval_fn,
        eval_every=3,
        progress=False,
        log_every=2,
    )
    assert calls == [3, 6, 7]  # every 3 steps, and after the last one
    assert [e["step"] for e in hist["eval"]] == [3, 6, 7]
    assert [e["step_seen"] for e in hist["eval"]] == [3.0, 6.0, 7.0]
    assert hist["eval"][-1]["w00"] == float(state.params["w"][0, 0])
    assert len(hist["step"]) == len(hist["loss"]) == 7
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    jfm.fit(STEP, fresh_state(), batch_fn, steps=3, key=jr.key(1), progress=True)
    out = capsys.readouterr()  # the tqdm bar, on stderr only
    assert out.out == "" and "3/3" in out.err


def test_fit_resume_is_bit_identical(tmp_path):
    key = jr.key(3)
    kw = dict(key=key, checkpoint_every=5, progress=False)
    full, _ = jfm.fit(STEP, fresh_state(), batch_fn, steps=10, checkpoint_dir=tmp_path / "a", **kw)
    half, h5 = jfm.fit(STEP, fresh_state(), batch_fn, steps=5, checkpoint_dir=tmp_path / "b", **kw)
    assert jfm.latest_step(tmp_path / "b") == 5 and int(half.step) == 5
    resumed, h = jfm.fit(
        STEP, fresh_state(), batch_fn, steps=10, checkpoint_dir=tmp_path / "b", **kw
    )
    # params, Adam moments, EMA and step all restored: identical to the uninterrupted run.
    assert trees_equal(resumed, full)
    assert h["step"] == list(range(6, 11)) and len(h5["loss"]) == 5
    assert jfm.latest_step(tmp_path / "b") == 10
    assert trees_equal(jfm.restore_checkpoint(tmp_path / "b", fresh_state()), full)
    # Already at `steps`: returns the checkpoint at once, runs nothing.
    again, h = jfm.fit(STEP, fresh_state(), batch_fn, steps=10, checkpoint_dir=tmp_path / "b", **kw)
    assert trees_equal(again, full) and h["step"] == [] and h["eval"] == []
    with raises_arg(ValueError, "steps"):  # the checkpoint is ahead of the request
        jfm.fit(STEP, fresh_state(), batch_fn, steps=3, checkpoint_dir=tmp_path / "b", **kw)


def trees_close(a, b, rtol=1e-12):
    """Equal structure and dtypes, values equal to float64 round-off."""
    ok = jax.tree.map(
        lambda x, y: x.dtype == y.dtype and np.allclose(x, y, rtol=rtol, atol=rtol), a, b
    )
    return jax.tree.structure(a) == jax.tree.structure(b) and all(jax.tree.leaves(ok))


@pytest.mark.slow
def test_fit_steps_per_call_is_the_same_run(tmp_path):
    """Fused calls (batch_fn traced into a lax.scan) use the per-step keys: the same run,
    with evaluations and checkpoints at the same steps, and bit-identical on resume."""
    key, calls = jr.key(5), []

    def eval_fn(state):
        calls.append(int(state.step))
        return {"w00": state.params["w"][0, 0]}

    kw = dict(key=key, progress=False, log_every=4, eval_fn=eval_fn, eval_every=5)
    ref, h_ref = jfm.fit(STEP, fresh_state(), batch_fn, steps=13, **kw)
    fused, h = jfm.fit(STEP, fresh_state(), batch_fn, steps=13, steps_per_call=3, **kw)
    assert trees_close(fused, ref) and int(fused.step) == 13
    assert calls == [5, 10, 13, 5, 10, 13]  # runs end at every evaluation
    assert h["step"] == h_ref["step"] == list(range(1, 14))
    np.testing.assert_allclose(h["loss"], h_ref["loss"], rtol=1e-12)
    assert [e["step"] for e in h["eval"]] == [5, 10, 13]
    # Checkpoints at multiples of 4 (runs end there too); a resume continues the run.
    ck = dict(key=key, progress=False, checkpoint_every=4, steps_per_call=3)
    full, _ = jfm.fit(STEP, fresh_state(), batch_fn, steps=13, checkpoint_dir=tmp_path / "a", **ck)
    part, _ = jfm.fit(STEP, fresh_state(), batch_fn, steps=6, checkpoint_dir=tmp_path / "b", **ck)
    assert jfm.latest_step(tmp_path / "b") == 6 and int(part.step) == 6
    resumed, hr = jfm.fit(
        STEP, fresh_state(), batch_fn, steps=13, checkpoint_dir=tmp_path / "b", **ck
    )
    assert trees_equal(resumed, full) and trees_close(full, ref)
    assert hr["step"] == list(range(7, 14))
    assert trees_equal(full, jfm.restore_checkpoint(tmp_path / "a", fresh_state()))
    with raises_arg(ValueError, "steps_per_call"):
        jfm.fit(STEP, fresh_state(), batch_fn, steps=2, key=key, steps_per_call=0)

    def numpy_batches(key):  # a host-side loader cannot be traced into the fused steps
        rng = np.random.default_rng(np.asarray(jr.key_data(key))[-1])
        x = rng.normal(size=(B, D))
        return jnp.asarray(x), jnp.asarray(x @ np.asarray(W_TRUE))

    jfm.fit(STEP, fresh_state(), numpy_batches, steps=2, key=key, progress=False)
    with raises_arg(TypeError, "batch_fn", "steps_per_call"):
        jfm.fit(STEP, fresh_state(), numpy_batches, steps=2, key=key, steps_per_call=2)


def test_fit_traces_its_step_once_across_calls():
    # A resumed or extended run (a second fit with the same step) reuses the compiled
    # step: the step's Python body runs (is traced) once per mode, not once per call.
    traces = []

    def step(state, batch, key):
        traces.append(1)
        return STEP(state, batch, key)

    kw = dict(key=jr.key(1), progress=False)
    s, _ = jfm.fit(step, fresh_state(), batch_fn, steps=3, **kw)
    s, _ = jfm.fit(step, s, batch_fn, steps=5, **kw)
    assert len(traces) == 1 and int(s.step) == 5
    s, _ = jfm.fit(step, s, batch_fn, steps=9, steps_per_call=2, **kw)
    s, _ = jfm.fit(step, s, batch_fn, steps=13, steps_per_call=2, **kw)
    assert len(traces) == 2 and int(s.step) == 13  # one more: the scanned step


def test_fit_with_an_unhashable_step_compiles_once_per_call():
    # A step that cannot be a static jit argument (an object with __hash__ = None, as an
    # equinox module holding arrays would be) is jitted afresh by each fit call, and
    # still once per call and fused-call length, not once per step.
    traces = []

    class Step:
        __hash__ = None

        def __call__(self, state, batch, key):
            traces.append(1)
            return STEP(state, batch, key)

    kw = dict(key=jr.key(1), progress=False)
    s, _ = jfm.fit(Step(), fresh_state(), batch_fn, steps=3, **kw)
    assert len(traces) == 1
    s, _ = jfm.fit(Step(), s, batch_fn, steps=9, steps_per_call=2, **kw)  # 3 calls of 2
    assert len(traces) == 2 and int(s.step) == 9
    ref, _ = jfm.fit(STEP, fresh_state(), batch_fn, steps=3, **kw)
    ref, _ = jfm.fit(STEP, ref, batch_fn, steps=9, steps_per_call=2, **kw)
    assert trees_equal(s, ref)  # the same programs as for a hashable step


def test_scan_train_step_matches_a_python_loop():
    key, n = jr.key(2), 6
    multi = jax.jit(jfm.scan_train_step(STEP, batch_fn, n))
    state, metrics = multi(fresh_state(), key)
    jstep, loop, losses = jax.jit(STEP), fresh_state(), []
    for i in range(1, n + 1):
        data_key, step_key = jr.split(jr.fold_in(key, i))
        loop, m = jstep(loop, batch_fn(data_key), step_key)
        losses.append(float(m["loss"]))
    assert trees_close(state, loop) and metrics["loss"].shape == (n,)
    np.testing.assert_allclose(metrics["loss"], losses, rtol=1e-12)
    # A second call continues from state.step: steps n+1 .. 2n.
    state, _ = multi(state, key)
    assert int(state.step) == 2 * n
    with raises_arg(ValueError, "num_steps"):
        jfm.scan_train_step(STEP, batch_fn, 0)
    with raises_arg(TypeError, "batch_fn"):
        jfm.scan_train_step(STEP, batch_fn(key), 2)
    with raises_arg(TypeError, "state"):
        multi(tuple(fresh_state()), key)


# orbax's asyncio loop complains on interpreter-side cleanup after a failed restore.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_fit_keeps_latest_checkpoints_and_refuses_damaged_ones(tmp_path):
    d = tmp_path / "ckpt"
    state, _ = jfm.fit(
        STEP,
        fresh_state(),
        batch_fn,
        steps=7,
        key=jr.key(4),
        checkpoint_dir=d,
        checkpoint_every=2,
        keep=2,
        progress=False,
    )
    # Saved at 2, 4, 6 and the final 7; only the 2 latest are kept.
    assert sorted(os.listdir(d)) == ["6", "7"]
    assert trees_equal(jfm.restore_checkpoint(d, fresh_state()), state)
    # Damage the latest checkpoint's data: a clear error, never a silent restart.
    garbled = 0
    for root, _, files in os.walk(d / "7"):
        for f in files:
            if os.path.basename(root) == "d":
                with open(os.path.join(root, f), "wb") as fh:
                    fh.write(b"garbage")
                garbled += 1
    assert garbled > 0
    with raises_arg(ValueError, "checkpoint_dir", "could not be restored"):
        jfm.fit(
            STEP, fresh_state(), batch_fn, steps=9, key=jr.key(4), checkpoint_dir=d, progress=False
        )
    with raises_arg(ValueError, "checkpoint_dir", "could not be restored"):
        jfm.restore_checkpoint(d, fresh_state())
    assert sorted(os.listdir(d)) == ["6", "7"]  # nothing overwritten or deleted
    # A state of another structure (no EMA) does not match the checkpoint either.
    with raises_arg(ValueError, "checkpoint_dir"):
        jfm.restore_checkpoint(d, fresh_state(ema=False))
    # A directory holding something else entirely.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not a checkpoint")
    with raises_arg(ValueError, "checkpoint_dir", "not orbax checkpoint"):
        jfm.fit(STEP, fresh_state(), batch_fn, steps=2, key=jr.key(0), checkpoint_dir=other)
    assert jfm.latest_step(tmp_path / "missing") is None
    with raises_arg(ValueError, "checkpoint_dir", "no checkpoint"):
        jfm.restore_checkpoint(tmp_path / "missing", fresh_state())


def test_fit_with_flax_nnx_state(tmp_path):
    nnx = pytest.importorskip("flax.nnx")
    model = nnx.Linear(D, D, rngs=nnx.Rngs(0), param_dtype=jnp.float32)
    graphdef, params = nnx.split(model)

    def nnx_apply(params, t, x, args):
        return nnx.merge(graphdef, params)(x) + t[:, None]

    def f32_batch(key):
        x, y = batch_fn(key)
        return x.astype(jnp.float32), y.astype(jnp.float32)

    opt = optax.adam(1e-2)
    step = jfm.make_train_step(nnx_apply, opt, loss_fn, ema_decay=0.5)
    state, _ = jfm.fit(
        step,
        jfm.init_train_state(params, opt, ema=True),
        f32_batch,
        steps=3,
        key=jr.key(0),
        checkpoint_dir=tmp_path,
        progress=False,
    )
    assert isinstance(state.params, nnx.State) and state.params["kernel"].dtype == jnp.float32
    assert not model.kernel[...].is_deleted()  # the model's own arrays were not donated
    restored = jfm.restore_checkpoint(tmp_path, jfm.init_train_state(params, opt, ema=True))
    assert isinstance(restored.params, nnx.State) and trees_equal(restored, state)


def test_sharded_state_keeps_shardings(tmp_path):
    if jax.device_count() < 4:
        pytest.skip("needs 4 (fake CPU) devices")
    from jax.sharding import NamedSharding, PartitionSpec as P

    mesh = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4])
    replicated, by_row = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    traces = []

    def counting_loss(apply, params, batch, *, key):
        traces.append(1)
        return loss_fn(apply, params, batch, key=key)

    def sharded_batch(key):
        return jax.device_put(batch_fn(key), by_row)  # data parallel: batch split by rows

    opt = optax.adam(1e-2)
    state = jax.device_put(fresh_state(opt), replicated)
    before = jax.tree.map(jax.typeof, state)
    step = jfm.make_train_step(apply, opt, counting_loss, ema_decay=0.9)
    out, _ = jfm.fit(
        step, state, sharded_batch, steps=3, key=jr.key(0), checkpoint_dir=tmp_path, progress=False
    )
    assert len(traces) == 1  # one compilation for the 3 steps
    assert jax.tree.map(jax.typeof, out) == before
    for tree in (out, jfm.restore_checkpoint(tmp_path, state)):
        for leaf in jax.tree.leaves(tree):
            assert leaf.sharding.is_equivalent_to(replicated, leaf.ndim)


# -- the non-finite guard, the best checkpoint, stopping on a signal -------------------------


def diverging_sgd(first_bad_count):
    """SGD at 0.01, then at a huge rate from update ``first_bad_count`` on (a run that
    diverges mid-way); both rates share the optimizer state's structure."""
    return optax.sgd(lambda count: jnp.where(count < first_bad_count, 0.01, 1e300))


def all_finite(tree):
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


def test_fit_stops_a_diverging_run_and_keeps_finite_checkpoints(tmp_path):
    d, opt = tmp_path / "ckpt", diverging_sgd(12)
    like = jfm.init_train_state(make_params(jr.key(0)), opt)
    held_out = batch_fn(jr.key(99))

    def eval_fn(state):  # the loss on fixed held-out data; its best checkpoint is kept
        return {"eval": jnp.mean(loss_fn(apply, state.params, held_out, key=jr.key(0)))}

    kw = dict(key=jr.key(2), checkpoint_dir=d, checkpoint_every=5, keep=1, progress=False,
              eval_fn=eval_fn, eval_every=5, best_metric="eval")  # fmt: skip
    with pytest.raises(jfm.NonFiniteError, match=r"non-finite loss at step 14") as info:
        jfm.fit(jfm.make_train_step(apply, opt, loss_fn), like, batch_fn, steps=40, **kw)
    err = info.value
    # Update 13 (count 12) jumps the weights to ~1e300, so step 14's loss overflows; the
    # guard fetches the codes before the evaluation and save at step 15: neither happens.
    assert isinstance(err, FloatingPointError) and err.metric == "loss"
    assert (err.step, err.checkpoint_step) == (14, 10) and "step 10" in str(err)
    best = jfm.best_step(d, "eval")
    assert sorted(int(p) for p in os.listdir(d)) == sorted({best, 10}) and best in (5, 10)
    for step in {best, 10}:
        assert all_finite(jfm.restore_checkpoint(d, like, step=step))
    # Resuming from the last good checkpoint with a sane rate trains on to the end.
    sane = optax.sgd(lambda count: 0.01)
    state, history = jfm.fit(jfm.make_train_step(apply, sane, loss_fn), like, batch_fn,
                             steps=40, **kw)  # fmt: skip
    assert all(np.isfinite(e["eval"]) for e in history["eval"])
    assert int(state.step) == 40 and history["step"][0] == 11 and all_finite(state)
    assert history["loss"][-1] < history["loss"][0]


def poisoned(step_fn, at):
    """``step_fn`` whose update ``at`` (state.step at -> at + 1) writes NaN parameters."""

    def step(state, batch, key):
        new, metrics = step_fn(state, batch, key)
        bad = state.step == at
        params = jax.tree.map(lambda p: jnp.where(bad, jnp.nan, p), new.params)
        return new._replace(params=params), metrics

    return step


@pytest.mark.parametrize(
    "steps_per_call", [None, pytest.param(4, marks=pytest.mark.slow)], ids=["per-step", "fused"]
)
def test_fit_skip_step_discards_exactly_the_bad_updates(steps_per_call):
    kw = dict(key=jr.key(3), progress=False, steps_per_call=steps_per_call)
    step = poisoned(STEP, at=2)  # update 3 is bad
    with pytest.raises(jfm.NonFiniteError, match="non-finite parameters at step 3"):
        jfm.fit(step, fresh_state(), batch_fn, steps=6, **kw)
    skipped, h = jfm.fit(step, fresh_state(), batch_fn, steps=3, nan_policy="skip_step", **kw)
    two, _ = jfm.fit(STEP, fresh_state(), batch_fn, steps=2, **kw)
    # Step 3's update is dropped: params, Adam moments and EMA are those after step 2.
    assert h["skipped"] == [3] and int(skipped.step) == 3
    assert trees_equal(skipped._replace(step=two.step), two)
    more, h = jfm.fit(step, fresh_state(), batch_fn, steps=6, nan_policy="skip_step", **kw)
    assert h["skipped"] == [3] and all_finite(more) and int(more.step) == 6


def test_fit_keeps_the_best_checkpoint_by_an_eval_metric(tmp_path):
    d = tmp_path / "ckpt"

    def eval_fn(state):  # best (smallest) at step 4, worst (non-finite) at step 8
        s = int(state.step)
        return {"score": float("nan") if s == 8 else abs(s - 4.0), "other": 1.0}

    kw = dict(key=jr.key(1), eval_fn=eval_fn, eval_every=2, checkpoint_dir=d, progress=False)
    state, _ = jfm.fit(STEP, fresh_state(), batch_fn, steps=10, checkpoint_every=2, keep=1,
                       best_metric="score", **kw)  # fmt: skip
    assert sorted(os.listdir(d)) == ["10", "4"]  # the latest, and the best
    assert jfm.best_step(d, "score") == 4 and jfm.latest_step(d) == 10
    assert jfm.best_step(d, "score", mode="max") == 10 and jfm.best_step(d, "other") == 4
    assert jfm.best_step(d, "missing") is None and jfm.best_step(tmp_path / "no", "score") is None
    assert int(jfm.restore_checkpoint(d, fresh_state(), step=4).step) == 4
    assert trees_equal(jfm.restore_checkpoint(d, fresh_state()), state)
    with raises_arg(ValueError, "step", "holds steps"):
        jfm.restore_checkpoint(d, fresh_state(), step=6)
    with raises_arg(ValueError, "best_metric", "'other'"):
        jfm.fit(STEP, fresh_state(), batch_fn, steps=12, best_metric="nope", **kw)


def test_fit_checkpoints_and_stops_on_a_signal_then_resumes_bit_identically(tmp_path):
    import signal

    calls = []

    def signalling_batch_fn(key):  # a preemption notice arriving during step 5
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return batch_fn(key)

    before = signal.getsignal(signal.SIGTERM)
    d = tmp_path / "ckpt"
    kw = dict(key=jr.key(6), progress=False, checkpoint_dir=d, checkpoint_every=100)
    sig = dict(stop_signals=(signal.SIGTERM, signal.SIGINT))
    with pytest.raises(jfm.TrainingInterrupted, match="SIGTERM at step 5") as info:
        jfm.fit(STEP, fresh_state(), signalling_batch_fn, steps=9, **sig, **kw)
    assert info.value.step == 5 and info.value.signum == signal.SIGTERM
    assert info.value.history["step"] == [1, 2, 3, 4, 5]
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is restored
    assert os.listdir(d) == ["5"]  # saved at the signal, not at a multiple of 100
    resumed, _ = jfm.fit(STEP, fresh_state(), batch_fn, steps=9, **sig, **kw)
    full, _ = jfm.fit(STEP, fresh_state(), batch_fn, steps=9, key=jr.key(6), progress=False)
    assert trees_equal(resumed, full)

    def impatient_batch_fn(key):  # Ctrl-C twice: the second one goes to Python's handler
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        return batch_fn(key)

    with pytest.raises(KeyboardInterrupt):
        jfm.fit(STEP, fresh_state(), impatient_batch_fn, steps=12, **sig, **kw)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# -- errors ---------------------------------------------------------------------------------


def test_errors(tmp_path):
    params, opt = make_params(jr.key(0)), optax.sgd(0.1)
    with raises_arg(TypeError, "optimizer"):
        jfm.init_train_state(params, "adam")
    with raises_arg(TypeError, "ema"):
        jfm.init_train_state(params, opt, ema=1)
    with raises_arg(TypeError, "params", "floating"):
        jfm.init_train_state({"n": jnp.arange(3)}, opt)
    with raises_arg(TypeError, "params"):
        jfm.init_train_state({}, opt)

    with raises_arg(TypeError, "apply"):
        jfm.make_train_step(None, opt, loss_fn)
    with raises_arg(TypeError, "loss_fn"):
        jfm.make_train_step(apply, opt, "mse")
    with raises_arg(TypeError, "optimizer"):
        jfm.make_train_step(apply, None, loss_fn)
    for bad in (1.0, -0.1):
        with raises_arg(ValueError, "ema_decay", r"\[0, 1\)"):
            jfm.make_train_step(apply, opt, loss_fn, ema_decay=bad)
    with raises_arg(TypeError, "ema_decay"):
        jfm.make_train_step(apply, opt, loss_fn, ema_decay="0.9")
    state, batch = jfm.init_train_state(params, opt), batch_fn(jr.key(1))
    with raises_arg(ValueError, "state.ema_params", "ema=True"):
        jfm.make_train_step(apply, opt, loss_fn, ema_decay=0.9)(state, batch, jr.key(2))
    with raises_arg(TypeError, "state"):
        jfm.make_train_step(apply, opt, loss_fn)(tuple(state), batch, jr.key(2))

    def scalar_loss(apply, params, batch, *, key):
        return jnp.mean(loss_fn(apply, params, batch, key=key))

    with raises_arg(TypeError, "loss_fn", r"shape \[B\]"):
        jfm.make_train_step(apply, opt, scalar_loss)(state, batch, jr.key(2))

    step = jfm.make_train_step(apply, opt, loss_fn)
    kw = dict(steps=2, key=jr.key(0), progress=False)
    with raises_arg(ValueError, "steps"):
        jfm.fit(step, state, batch_fn, steps=0, key=jr.key(0))
    with raises_arg(TypeError, "steps"):
        jfm.fit(step, state, batch_fn, steps=2.0, key=jr.key(0))
    with pytest.raises(TypeError, match="key"):
        jfm.fit(step, state, batch_fn, steps=2)
    with raises_arg(TypeError, "key", "int seed"):
        jfm.fit(step, state, batch_fn, steps=2, key=0)
    with raises_arg(TypeError, "batch_fn"):
        jfm.fit(step, state, batch_fn(jr.key(0)), **kw)
    with raises_arg(TypeError, "train_step"):
        jfm.fit(None, state, batch_fn, **kw)
    with raises_arg(TypeError, "state"):
        jfm.fit(step, params, batch_fn, **kw)
    with raises_arg(ValueError, "checkpoint_every", "checkpoint_dir"):
        jfm.fit(step, state, batch_fn, checkpoint_every=1, **kw)
    with raises_arg(ValueError, "eval_every", "eval_fn"):
        jfm.fit(step, state, batch_fn, eval_every=1, **kw)
    for name in ("eval_every", "checkpoint_every", "keep", "log_every"):
        extra = {"eval_fn": lambda s: {}, "checkpoint_dir": tmp_path / name}
        with raises_arg(ValueError, name):
            jfm.fit(step, state, batch_fn, **{name: 0}, **extra, **kw)
    with raises_arg(TypeError, "eval_fn", "dict of floats"):
        jfm.fit(step, fresh_state(opt, ema=False), batch_fn, eval_fn=lambda s: 1.0, **kw)
    with raises_arg(TypeError, "train_step", "TrainState"):
        jfm.fit(lambda s, b, k: (s.params, {}), fresh_state(opt, ema=False), batch_fn, **kw)

    def no_increment(state, batch, key):
        new, metrics = step(state, batch, key)
        return new._replace(step=state.step), metrics

    with raises_arg(ValueError, "train_step", "increment"):
        jfm.fit(no_increment, fresh_state(opt, ema=False), batch_fn, **kw)
    ahead = fresh_state(opt, ema=False)._replace(step=jnp.asarray(5, jnp.int32))
    with raises_arg(ValueError, "steps"):
        jfm.fit(step, ahead, batch_fn, **kw)
    with raises_arg(TypeError, "like_state"):
        jfm.restore_checkpoint(tmp_path, params)
    with raises_arg(ValueError, "nan_policy"):
        jfm.fit(step, state, batch_fn, nan_policy="ignore", **kw)
    with raises_arg(ValueError, "best_metric", "eval_fn"):
        jfm.fit(step, state, batch_fn, best_metric="loss", **kw)
    with raises_arg(TypeError, "best_metric"):
        jfm.fit(step, state, batch_fn, best_metric=1, eval_fn=dict, checkpoint_dir=tmp_path, **kw)
    with raises_arg(ValueError, "best_mode"):
        jfm.fit(step, state, batch_fn, best_mode="lowest", **kw)
    with raises_arg(ValueError, "stop_signals", "checkpoint_dir"):
        jfm.fit(step, state, batch_fn, stop_signals=[15], **kw)
    with raises_arg(ValueError, "stop_signals", "cannot be caught"):
        jfm.fit(step, state, batch_fn, stop_signals=[9], checkpoint_dir=tmp_path, **kw)
    with raises_arg(TypeError, "stop_signals"):
        jfm.fit(step, state, batch_fn, stop_signals=15, checkpoint_dir=tmp_path, **kw)
    with raises_arg(TypeError, "step"):
        jfm.restore_checkpoint(tmp_path, state, step=1.0)
    with raises_arg(ValueError, "mode"):
        jfm.best_step(tmp_path, "loss", mode="lowest")


@pytest.mark.slow
def test_end_to_end_flow_matching_on_moons(tmp_path):
    """jfm's own model, loss and data through fit: learning happens, resume is exact."""
    from flax import nnx

    path = jfm.AffinePath(jfm.CondOT())
    apply, params = jfm.split_model(
        jfm.models.MLP(2, hidden_features=64, depth=2, rngs=nnx.Rngs(0))
    )
    opt = optax.adam(3e-3)
    step = jfm.make_train_step(apply, opt, functools.partial(jfm.cfm_loss, path=path))
    data = jax.jit(lambda key: jfm.data.moons(256, key=key, dtype=jnp.float32))
    held_out = data(jr.key(99))

    @jax.jit  # CFM loss on a fixed batch with fixed (t, x0): the same draws each time
    def held_out_loss(params):
        return jnp.mean(jfm.cfm_loss(apply, params, held_out, path=path, key=jr.key(7)))

    def eval_fn(state):
        return {"cfm": held_out_loss(state.params)}

    state0 = jfm.init_train_state(params, opt)
    kw = dict(key=jr.key(0), eval_fn=eval_fn, checkpoint_dir=tmp_path, progress=False)
    half, _ = jfm.fit(step, state0, data, steps=150, checkpoint_every=150, **kw)
    full, hist = jfm.fit(step, state0, data, steps=300, **kw)  # resumes from step 150
    straight, _ = jfm.fit(step, state0, data, steps=300, key=jr.key(0), progress=False)
    assert trees_equal(full, straight)
    start = float(eval_fn(state0)["cfm"])
    # The minimum of the CFM loss on moons is far below its value at initialisation
    # (about 1.6 for CondOT); 300 Adam steps reach well under 75% of the initial value.
    assert hist["eval"][-1]["cfm"] < 0.75 * start
    assert all(np.isfinite(hist["loss"])) and hist["step"][0] == 151
