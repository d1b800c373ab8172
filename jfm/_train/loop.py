"""The training loop: :func:`fit` around a pure ``train_step``.

The loop is built from small pieces: argument checks (:func:`_check_fit_args`), the
schedule of calls (:class:`_Plan`: where each call ends, when to log), the compiled calls
(:func:`_runner`, over module-level ``jax.jit`` s), the metrics buffer
(:class:`_MetricsLog`), and the checkpoint I/O of :mod:`.checkpoint`.
"""

import functools
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray
from tqdm import tqdm

from .._checks import check_bool, check_callable, check_int, check_key, check_name
from . import checkpoint, guard
from .interrupt import SignalCatcher, TrainingInterrupted, check_signals
from .state import TrainState, check_train_state
from .step import STEP_SIGNATURE, check_step_output, scan_train_step, split_step_key

# -- the compiled calls ------------------------------------------------------------------
#
# The loop carries the state's leaves (a list), not the state: flattening a TrainState of
# Flax ``nnx.State`` containers in Python costs ~0.25 ms per call (a list of the same
# leaves: ~2 us), as much as a small model's whole step. The state is rebuilt from the
# leaves only to evaluate or save.
#
# The jitted functions are module-level, with the step, the batch function, the number
# of fused steps and the state's treedef as static arguments. JAX's own compilation
# cache, keyed on them, is what makes a second ``fit`` with the same step (a resumed or
# an extended run) reuse the compiled program instead of retracing a new closure; jfm
# keeps no cache of its own. JAX holds each compiled program, and the step and batch
# function it was built from, as for any jit with static arguments (``jax.clear_caches()``
# releases them). Static arguments are hashed, so a step or batch function that cannot
# be (an equinox module holding arrays, say) is jitted afresh per ``fit`` call.


def _flat_output(out, treedef):
    state, metrics = check_step_output(out)
    leaves, got = jax.tree.flatten(state)
    if got != treedef:
        raise TypeError(
            "`train_step` must return a state with the structure of its input state; got "
            f"{got} vs {treedef}."
        )
    return leaves, metrics


def _flat_step(train_step, treedef, nan_policy, leaves, batch, key):
    """One guarded step (``batch`` computed on the host), on the state's leaves."""
    step = guard.guard_step(train_step, nan_policy)
    return _flat_output(step(jax.tree.unflatten(treedef, leaves), batch, key), treedef)


def _flat_scan(train_step, batch_fn, num_steps, treedef, nan_policy, leaves, key):
    """``num_steps`` fused guarded steps (:func:`scan_train_step`), on the state's leaves."""
    multi_step = scan_train_step(guard.guard_step(train_step, nan_policy), batch_fn, num_steps)
    return _flat_output(multi_step(jax.tree.unflatten(treedef, leaves), key), treedef)


_jit_step = jax.jit(_flat_step, static_argnums=(0, 1, 2), donate_argnums=3)
_jit_scan = jax.jit(_flat_scan, static_argnums=(0, 1, 2, 3, 4), donate_argnums=5)
_step_keys = jax.jit(split_step_key)

#: What tracing a host-side (numpy) batch_fn raises.
_NOT_TRACEABLE = (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError)


def _hashable(*objs) -> bool:
    try:
        hash(objs)
    except TypeError:
        return False
    return True


def _runner(train_step, treedef, batch_fn, key, steps_per_call, nan_policy):
    """``run(leaves, i, n) -> (leaves, metrics)``: steps ``i + 1 .. i + n``, one call.

    Without ``steps_per_call``, ``n`` is 1 and ``batch_fn`` runs on the host; with it,
    ``batch_fn`` is traced into the fused steps and the metrics have a leading ``[n]``.
    """
    if steps_per_call is None:
        if _hashable(train_step, treedef):
            jit_step = functools.partial(_jit_step, train_step, treedef, nan_policy)
        else:
            fn = functools.partial(_flat_step, train_step, treedef, nan_policy)
            jit_step = jax.jit(fn, donate_argnums=0)

        def run(leaves, i, n):
            data_key, step_key = _step_keys(key, np.uint32(i + 1))
            return jit_step(leaves, batch_fn(data_key), step_key)

        return run

    if _hashable(train_step, batch_fn, treedef):
        jit_scan = functools.partial(_jit_scan, train_step, batch_fn)
    else:
        compiled = {}  # this call's own: one jit per call length (at most three differ)

        def jit_scan(n, treedef, nan_policy, leaves, key):
            if n not in compiled:
                fn = functools.partial(_flat_scan, train_step, batch_fn, n, treedef, nan_policy)
                compiled[n] = jax.jit(fn, donate_argnums=0)
            return compiled[n](leaves, key)

    def run(leaves, i, n):
        try:
            return jit_scan(n, treedef, nan_policy, leaves, key)
        except _NOT_TRACEABLE as e:
            raise TypeError(
                "`batch_fn` must be a JAX function of its key when `steps_per_call` is given "
                "(it is traced into the fused steps); a host-side loader needs "
                f"steps_per_call=None. ({type(e).__name__}: {e})"
            ) from e

    return run


# -- the schedule and the metrics --------------------------------------------------------


def _next_multiple(i: int, period: int | None) -> int | None:
    return None if period is None else (i // period + 1) * period


class _Plan(NamedTuple):
    """Where the calls of a run end: at most ``chunk`` steps each, and never past the
    final step, an evaluation or a checkpoint (``None``: no such periodic event)."""

    steps: int
    chunk: int
    eval_every: int | None
    checkpoint_every: int | None
    log_every: int

    def call_length(self, i: int) -> int:
        """The number of steps of the call that starts after step ``i``."""
        ends = (
            self.steps,
            i + self.chunk,
            _next_multiple(i, self.eval_every),
            _next_multiple(i, self.checkpoint_every),
        )
        return min(e for e in ends if e is not None) - i

    def logs_after(self, i: int, n: int) -> bool:
        """Whether steps ``i + 1 .. i + n`` cross a multiple of ``log_every``."""
        return (i + n) // self.log_every > i // self.log_every

    def evaluates_at(self, i: int) -> bool:
        return i == self.steps or (self.eval_every is not None and i % self.eval_every == 0)


class _MetricsLog:
    """The metrics of the calls made, kept on the device until :meth:`flush`."""

    def __init__(self, history: dict[str, Any], fused: bool, nan_policy: str):
        self.history, self.fused, self.pending = history, fused, []
        self.nan_policy = nan_policy
        if nan_policy == "skip_step":
            history["skipped"] = []

    def add(self, first_step: int, n: int, metrics):
        self.pending.append((first_step, n, metrics))

    def flush(self) -> tuple[float | None, tuple[int, int] | None]:
        """Fetch the pending metrics (one host sync) into the history.

        Returns the last loss and the first non-finite step with its guard code (or
        ``None``).
        """
        history = self.history
        fetched = jax.device_get([m for _, _, m in self.pending])
        first_bad = None
        for (first, n, _), metrics in zip(self.pending, fetched):
            codes = np.broadcast_to(np.asarray(metrics.pop(guard.CODE_KEY, 0)), (n,))
            for j in range(n):
                history["step"].append(first + j)
                for name, value in metrics.items():
                    value = np.asarray(value)[j] if self.fused else value
                    if np.ndim(value) == 0 and name not in ("step", "eval"):
                        history.setdefault(name, []).append(float(value))
                if codes[j]:
                    if first_bad is None:
                        first_bad = (first + j, int(codes[j]))
                    if self.nan_policy == "skip_step":
                        history["skipped"].append(first + j)
        self.pending.clear()
        loss = history["loss"][-1] if history["loss"] else None
        return loss, first_bad


def _evaluate(eval_fn, state, step: int) -> dict[str, Any]:
    out = eval_fn(state)
    if not isinstance(out, Mapping):
        raise TypeError(f"`eval_fn` must return a dict of floats; got {type(out)}.")
    record: dict[str, Any] = {"step": step}
    for name, value in out.items():
        try:
            record[str(name)] = float(value)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"`eval_fn` must return a dict of floats; entry {name!r} is {type(value)}."
            ) from e
    return record


def _check_increment(state: TrainState, i: int, n: int):
    got = int(state.step)  # one host sync, on the first call only
    if got != i + n:
        raise ValueError(
            f"`train_step` must increment state.step by one (step {i} -> {i + 1}); got "
            f"state.step={got} after {n} step(s). Checkpoints and per-step keys are indexed "
            "by it."
        )


# -- fit ---------------------------------------------------------------------------------


def _check_fit_args(
    train_step, state, batch_fn, steps, key, eval_fn, eval_every, checkpoint_dir,
    checkpoint_every, keep, progress, log_every, steps_per_call, nan_policy, best_metric,
    best_mode, stop_signals,
):  # fmt: skip
    check_callable(train_step, "train_step", STEP_SIGNATURE)
    check_train_state(state)
    check_callable(batch_fn, "batch_fn", "(key) -> batch")
    check_int(steps, "steps")
    check_key(key)
    if eval_fn is not None:
        check_callable(eval_fn, "eval_fn", "(state) -> dict of floats")
    for name, value in (
        ("eval_every", eval_every),
        ("checkpoint_every", checkpoint_every),
        ("keep", keep),
        ("steps_per_call", steps_per_call),
    ):
        if value is not None:
            check_int(value, name)
    if eval_every is not None and eval_fn is None:
        raise ValueError("`eval_every` was given without `eval_fn`: pass eval_fn=... too.")
    if checkpoint_every is not None and checkpoint_dir is None:
        raise ValueError(
            "`checkpoint_every` was given without `checkpoint_dir`: pass checkpoint_dir=... too."
        )
    check_bool(progress, "progress")
    check_int(log_every, "log_every")
    check_name(nan_policy, "nan_policy", guard.NAN_POLICIES)
    check_name(best_mode, "best_mode", checkpoint.BEST_MODES)
    if best_metric is not None:
        if not isinstance(best_metric, str):
            raise TypeError(
                f"`best_metric` must be the name of an eval_fn entry (a str); got {best_metric!r}."
            )
        if eval_fn is None or checkpoint_dir is None:
            raise ValueError(
                "`best_metric` ranks checkpoints by an evaluation: pass eval_fn=... and "
                "checkpoint_dir=... too."
            )
    signums = check_signals(stop_signals)
    if signums and checkpoint_dir is None:
        raise ValueError(
            "`stop_signals` checkpoints the run when a signal arrives: pass checkpoint_dir=... too."
        )
    return signums


def _resume(manager, state: TrainState, steps: int, path) -> tuple[TrainState, bool]:
    """The latest checkpoint of ``manager`` if there is one (``True``), else ``state``."""
    last = manager.latest_step()
    if last is None:
        return state, False
    if last > steps:
        raise ValueError(
            f"`steps`={steps} is below the latest checkpoint's step {last} in {path}: pass "
            f"steps >= {last} or another checkpoint_dir."
        )
    return checkpoint.restore(manager, last, state, path), True


def fit(
    train_step: Callable,
    state: TrainState,
    batch_fn: Callable,
    *,
    steps: int,
    key: PRNGKeyArray,
    eval_fn: Callable | None = None,
    eval_every: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    keep: int | None = 3,
    progress: bool = True,
    log_every: int = 100,
    steps_per_call: int | None = None,
    nan_policy: str = "raise",
    best_metric: str | None = None,
    best_mode: str = "min",
    stop_signals: Sequence[int] = (),
) -> tuple[TrainState, dict[str, Any]]:
    r"""Run ``train_step`` until ``state.step == steps``, with eval and checkpoints.

    Step ``i`` (``i = 1, ..., steps``, taking ``state.step`` from ``i - 1`` to ``i``) uses

    .. math::
        k_i = \mathrm{fold\_in}(\mathrm{key}, i), \quad
        (k^{data}_i, k^{step}_i) = \mathrm{split}(k_i), \quad
        \mathrm{state} \leftarrow \mathrm{train\_step}(\mathrm{state},
            \mathrm{batch\_fn}(k^{data}_i), k^{step}_i),

    so a run is a pure function of ``(state, key, steps)``, and a run resumed from a
    checkpoint at step ``j`` continues with exactly the keys of the uninterrupted run
    (bit-identical results on the same device).

    ``train_step`` is jitted here with ``jax.jit(..., donate_argnums=0)``, so each step
    reuses the previous state's buffers; a later ``fit`` with the same ``train_step``
    (and state structure) reuses the compiled step. The ``state`` passed in is copied
    once first and stays valid (as do the arrays of a Flax model it came from); while
    ``fit`` runs, that costs one extra copy of the state in memory as long as the caller
    holds a reference to it. By default ``batch_fn`` is called outside jit, once per
    step (jit it yourself if it is a JAX function; host-side numpy loaders work too).
    With ``steps_per_call=n`` (``batch_fn`` then must be a JAX function), runs of up to
    ``n`` steps, data generation included, are fused by :func:`jfm.scan_train_step` into
    one dispatch; runs end at every evaluation, checkpoint and the final step, so these
    happen at the same steps as without it. This is the fast path for small models,
    whose step costs less than the Python around it. The keys are the same in both
    modes, so the runs agree to float round-off (not necessarily bit for bit, as XLA
    may fuse the scanned step differently); a run resumed with the same
    ``steps_per_call`` and periods is bit-identical to the uninterrupted one.

    Losses (and every other scalar metric of ``train_step``) of every step are kept on
    the device and fetched to the host every ``log_every`` steps and before every
    evaluation and checkpoint (no per-step sync).

    Non-finite guard: inside the compiled call, each step checks that the loss, the
    gradient norm (the metrics ``"loss"``/``"grad_norm"`` where ``train_step`` returns
    them) and every floating leaf of the new parameters are finite. With
    ``nan_policy="raise"`` (default) the run stops at the next fetch, before any
    evaluation or checkpoint of a non-finite state, with :class:`jfm.NonFiniteError`
    naming the first bad step and metric; the checkpoints already written stay (all
    finite). With ``"skip_step"`` a bad step's update is discarded (params, optimizer
    state and average are those before it; ``state.step`` still advances) and the step
    is listed in ``history["skipped"]``.

    Checkpoints (orbax ``CheckpointManager``: atomic saves, asynchronous writes) are
    written to ``checkpoint_dir`` at every multiple of ``checkpoint_every`` and at the
    final step; the latest ``keep`` are kept. With ``best_metric`` (an ``eval_fn``
    entry), a checkpoint saved at an evaluated step stores that evaluation (every
    entry), and the one with the best ``best_metric`` (``best_mode="min"`` or ``"max"``;
    non-finite ranks worst) is kept too, however many later ones are saved (find it
    with :func:`jfm.best_step`).
    If ``checkpoint_dir`` already holds a checkpoint, the run RESUMES from the latest
    one: ``state`` then only gives the structure, shapes, dtypes and shardings (params,
    opt_state, step and ema_params all come from the checkpoint), and if that checkpoint
    is already at ``steps`` the function returns at once. A checkpoint that cannot be
    read raises (it is never skipped or overwritten silently); delete its step
    directory to resume from the previous one.

    Preemption: with ``stop_signals`` (e.g. ``(signal.SIGTERM, signal.SIGINT)``), a
    signal arriving while ``fit`` runs lets the call in flight finish, then the current
    step is checkpointed (whatever ``checkpoint_every`` says) and
    :class:`jfm.TrainingInterrupted` is raised; running ``fit`` again with the same
    arguments resumes bit-identically. The previous handlers are restored on return; a
    second identical signal is passed on to them at once. On a multi-host run the
    hosts stop together at JAX's preemption sync point instead.

    Args:
        train_step: ``train_step(state, batch, key) -> (state, metrics)``, e.g. from
            :func:`jfm.make_train_step`; it must increment ``state.step`` by one.
        state: the initial :class:`TrainState` (``init_train_state``); its ``step`` may be
            positive (training then continues from there).
        batch_fn: ``batch_fn(key) -> batch``, a pure function of a PRNG key (e.g. an
            array ``[B, *event]`` or a tuple of them, as ``train_step`` takes).
        steps: the total number of steps, i.e. the final ``state.step`` (not a count of
            additional steps).
        key: the run's PRNG key.
        eval_fn: ``eval_fn(state) -> dict[str, float]``, called after every
            ``eval_every``-th step and after the final step.
        eval_every: evaluation period in steps (requires ``eval_fn``); ``None`` with an
            ``eval_fn`` evaluates after the final step only.
        checkpoint_dir: where to save and resume from; ``None`` for no checkpoints. It
            must be new, empty, or hold only orbax checkpoint steps.
        checkpoint_every: checkpoint period in steps (requires ``checkpoint_dir``);
            ``None`` saves only at the final step.
        keep: how many checkpoints to keep (the latest ones); ``None`` keeps all.
        progress: show a tqdm progress bar (on stderr); nothing else is printed.
        log_every: fetch the metrics to the host (and refresh the bar's loss) every
            ``log_every`` steps (with ``steps_per_call``, at the end of the call that
            reaches a multiple of it).
        steps_per_call: ``None`` (one jitted ``train_step`` call per step, ``batch_fn`` on
            the host) or the most steps fused into one call, ``batch_fn`` traced into it.
        nan_policy: ``"raise"`` or ``"skip_step"``, what a non-finite step does.
        best_metric: the ``eval_fn`` entry that ranks checkpoints (requires ``eval_fn``
            and ``checkpoint_dir``); ``None`` keeps only the latest ``keep``.
        best_mode: ``"min"`` (default) or ``"max"``: which ``best_metric`` is best.
        stop_signals: signal numbers that checkpoint and stop the run (main thread
            only; requires ``checkpoint_dir``); ``()`` leaves the handlers alone.

    Returns:
        ``(state, history)``: the final state and ``history = {"step": [int], "loss":
        [float], "grad_norm": [float] (one entry per scalar metric), "eval": [{"step": i,
        **eval_fn(state_i)}]}`` (with ``"skipped": [int]`` under ``"skip_step"``)
        covering the steps run by this call (not those before a resume).

    Raises:
        NonFiniteError: (a ``FloatingPointError``) a non-finite loss, gradient norm or
            parameters under ``nan_policy="raise"``; its ``step``, ``metric`` and
            ``checkpoint_step`` attributes say where, what, and the last good checkpoint.
        TrainingInterrupted: one of ``stop_signals`` arrived; the checkpoint of its
            ``step`` is written.
        TypeError: ``train_step``/``batch_fn``/``eval_fn`` not callable, ``state`` not a
            ``TrainState``, a bad ``key``, a non-int period, ``progress`` not a bool,
            ``train_step`` or ``eval_fn`` returning the wrong kind of value, a host-side
            ``batch_fn`` with ``steps_per_call``, ``best_metric`` not a str,
            ``stop_signals`` not a sequence.
        ValueError: ``steps``, ``eval_every``, ``checkpoint_every``, ``keep``,
            ``log_every`` or ``steps_per_call`` not positive; ``eval_every`` without
            ``eval_fn``; ``checkpoint_every`` without ``checkpoint_dir``; ``state.step``
            or the latest checkpoint beyond ``steps``; an unreadable or foreign
            ``checkpoint_dir``; ``train_step`` not incrementing ``state.step`` by one;
            an unknown ``nan_policy`` or ``best_mode``; ``best_metric`` without
            ``eval_fn``/``checkpoint_dir`` or missing from ``eval_fn``'s output;
            ``stop_signals`` that are not catchable signals, without ``checkpoint_dir``,
            or outside the main thread.

    Examples:
        >>> import jax, jax.numpy as jnp, optax, jfm
        >>> apply = lambda p, t, x, args: x * p["w"]
        >>> def loss_fn(apply, params, batch, *, key):
        ...     return jnp.sum((apply(params, None, batch, None) - 1.0) ** 2, axis=-1)
        >>> opt = optax.sgd(0.1)
        >>> step = jfm.make_train_step(apply, opt, loss_fn)
        >>> state = jfm.init_train_state({"w": jnp.zeros(2)}, opt)
        >>> batch_fn = lambda key: jnp.ones((4, 2))
        >>> state, history = jfm.fit(step, state, batch_fn, steps=50,
        ...                          key=jax.random.key(0), progress=False)
        >>> int(state.step), len(history["loss"]), round(float(state.params["w"][0]), 4)
        (50, 50, 1.0)
        >>> diverging = jfm.make_train_step(apply, optax.sgd(1e30), loss_fn)
        >>> state = jfm.init_train_state({"w": jnp.zeros(2)}, opt)
        >>> try:
        ...     jfm.fit(diverging, state, batch_fn, steps=50, key=jax.random.key(0),
        ...             progress=False)
        ... except jfm.NonFiniteError as e:
        ...     print(e.step, e.metric)
        2 loss
    """
    signums = _check_fit_args(
        train_step, state, batch_fn, steps, key, eval_fn, eval_every, checkpoint_dir,
        checkpoint_every, keep, progress, log_every, steps_per_call, nan_policy, best_metric,
        best_mode, stop_signals,
    )  # fmt: skip
    history: dict[str, Any] = {"step": [], "loss": [], "eval": []}
    manager = None
    try:
        restored = False
        if checkpoint_dir is not None:
            best = None if best_metric is None else (best_metric, best_mode)
            manager, path = checkpoint.open_manager(
                checkpoint_dir, keep=keep, every=checkpoint_every, best=best
            )
            state, restored = _resume(manager, state, steps, path)
        start = int(state.step)
        if start > steps:
            raise ValueError(f"`steps`={steps} is below the given state's step {start}.")
        if start == steps:
            return state, history
        if not restored:
            # The loop donates its state to each call; copying once keeps the caller's
            # arrays (and a Flax model sharing them through nnx.split) valid, and gives
            # every leaf its own buffer (a buffer cannot be donated twice).
            state = jax.tree.map(jnp.copy, state)
        leaves, treedef = jax.tree.flatten(state)
        del state  # its buffers are donated below; the loop carries `leaves`
        plan = _Plan(
            steps,
            steps_per_call or 1,
            eval_every if eval_fn is not None else None,
            checkpoint_every if manager is not None else None,
            log_every,
        )
        loop = _Loop(
            _runner(train_step, treedef, batch_fn, key, steps_per_call, nan_policy),
            treedef,
            plan,
            _MetricsLog(history, fused=steps_per_call is not None, nan_policy=nan_policy),
            eval_fn,
            manager,
            best_metric,
            last_saved=start if restored else None,
        )
        with SignalCatcher(signums) as catcher:
            leaves = loop.run(leaves, start, progress, catcher if signums else None)
        if manager is not None:
            manager.wait_until_finished()
    finally:
        if manager is not None:
            manager.close()
    return jax.tree.unflatten(treedef, leaves), history


class _Loop:
    """Steps ``start + 1 .. plan.steps``: calls, logging, the guard, evaluations, saves."""

    def __init__(self, run, treedef, plan, log, eval_fn, manager, best_metric, last_saved):
        self.run_call, self.treedef, self.plan, self.log = run, treedef, plan, log
        self.eval_fn, self.manager, self.best_metric = eval_fn, manager, best_metric
        self.last_saved = last_saved

    def _flush(self, bar):
        loss, first_bad = self.log.flush()
        if loss is not None:
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        if first_bad is not None and self.log.nan_policy == "raise":
            step, code = first_bad
            metric = guard.describe(code)
            where = (
                "no checkpoint was written"
                if self.last_saved is None
                else f"the last checkpoint, of step {self.last_saved}, is finite and kept"
            )
            raise guard.NonFiniteError(
                f"fit: non-finite {metric} at step {step} (the run diverged; e.g. a "
                f"learning rate too high); stopped before saving it: {where}. Lower the "
                "learning rate, clip the gradients, or pass nan_policy='skip_step'.",
                step=step,
                metric=metric,
                checkpoint_step=self.last_saved,
            )

    def _save(self, i: int, leaves, force: bool, metrics=None):
        state = jax.tree.unflatten(self.treedef, leaves)
        checkpoint.save(self.manager, i, state, force=force, metrics=metrics)
        self.last_saved = i

    def _best_record(self, record):
        if self.best_metric is None or record is None:
            return None
        if self.best_metric not in record:
            names = sorted(k for k in record if k != "step")
            raise ValueError(
                f"`best_metric` {self.best_metric!r} is not an entry of eval_fn's output; "
                f"it returned {names}."
            )
        return {k: v for k, v in record.items() if k != "step"}

    def run(self, leaves, start: int, progress: bool, catcher):
        plan, log, manager = self.plan, self.log, self.manager
        i = start
        with tqdm(total=plan.steps, initial=start, disable=not progress, unit="step") as bar:
            while i < plan.steps:
                n = plan.call_length(i)
                leaves, metrics = self.run_call(leaves, i, n)
                if i == start:
                    _check_increment(jax.tree.unflatten(self.treedef, leaves), i, n)
                log.add(i + 1, n, metrics)
                logs = plan.logs_after(i, n)
                i += n
                bar.update(n)
                final = i == plan.steps
                evaluates = self.eval_fn is not None and plan.evaluates_at(i)
                saves = manager is not None and (final or manager.should_save(i))
                stops = catcher is not None and catcher.stop_requested(i)
                if logs or final or evaluates or saves or stops:
                    self._flush(bar)  # the guard: nothing non-finite is evaluated or saved
                record = None
                if evaluates:
                    record = _evaluate(self.eval_fn, jax.tree.unflatten(self.treedef, leaves), i)
                    log.history["eval"].append(record)
                if saves or stops:
                    self._save(i, leaves, force=final or stops, metrics=self._best_record(record))
                if stops and not final:
                    manager.wait_until_finished()
                    name = (
                        "a preemption sync point"
                        if catcher.received is None
                        else signal.Signals(catcher.received).name
                    )
                    raise TrainingInterrupted(
                        f"fit: stopped by {name} at step {i}; its checkpoint is saved. Run "
                        "fit again with the same arguments to resume.",
                        step=i,
                        signum=catcher.received,
                        history=log.history,
                    )
        return leaves
