"""Checkpoints of a :class:`TrainState` with orbax: the manager, saving, restoring.

:func:`jfm.fit` saves through :func:`open_manager`/:func:`save` and resumes through
:func:`restore`; :func:`latest_step` and :func:`restore_checkpoint` are the public,
read-only entry points (evaluation or sampling from a finished run).
"""

import functools
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from .state import TrainState, check_train_state

#: What orbax leaves in a checkpoint directory besides the numbered step directories.
_TMP_MARK = ".orbax-checkpoint-tmp"
_ORBAX_ROOT_FILES = ("_ROOT_METADATA", "metadata")


def as_path(checkpoint_dir) -> epath.Path:
    """``checkpoint_dir`` as an absolute ``epath.Path`` (remote URLs pass as they are)."""
    if not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise TypeError(
            f"`checkpoint_dir` must be a path (str or os.PathLike); got {type(checkpoint_dir)}."
        )
    s = os.fspath(checkpoint_dir)
    if not s:
        raise ValueError("`checkpoint_dir` must be a non-empty path; got ''.")
    if "://" not in s:  # local: orbax wants absolute paths; gs:// etc. pass as they are
        s = os.path.abspath(s)
    return epath.Path(s)


def _check_writable_dir(path: epath.Path):
    """Refuse a directory that holds anything but orbax step directories."""
    if not path.exists():
        return
    if not path.is_dir():
        raise ValueError(f"`checkpoint_dir` must be a directory; {path} exists and is a file.")
    foreign = sorted(
        p.name
        for p in path.iterdir()
        if not (
            p.name.isdigit()
            or _TMP_MARK in p.name
            or p.name in _ORBAX_ROOT_FILES
            or p.name.startswith(".")
        )
    )
    if foreign:
        raise ValueError(
            f"`checkpoint_dir` {path} exists but holds entries that are not orbax checkpoint "
            f"steps: {foreign[:5]}. Refusing to start over there; pass an empty or new "
            "directory, or the directory of a previous fit."
        )


BEST_MODES: tuple[str, ...] = ("min", "max")


def _best_value(metrics, name: str, mode: str) -> float:
    """The ranking value of a checkpoint's metrics (non-finite values rank worst)."""
    value = float(metrics[name])
    if not np.isfinite(value):
        return -np.inf
    return -value if mode == "min" else value


def _manager(
    path: epath.Path,
    *,
    keep: int | None,
    every: int | None,
    read_only: bool = False,
    best: tuple[str, str] | None = None,
) -> ocp.CheckpointManager:
    policies: list[Any] = [ocp.checkpoint_managers.PreemptionCheckpointingPolicy()]
    if every is not None:
        policies.insert(0, ocp.checkpoint_managers.FixedIntervalPolicy(every))
    keeping: dict[str, Any] = dict(max_to_keep=keep)
    if best is not None:
        # The latest `keep` (to resume from) and the best by the metric (to use) survive.
        name, mode = best
        rank = functools.partial(_best_value, name=name, mode=mode)
        keeping = dict(
            best_fn=rank,  # orbax writes a step's metrics only when it tracks a best
            best_mode="max",
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(
                [
                    ocp.checkpoint_managers.LatestN(n=keep),
                    ocp.checkpoint_managers.BestN(
                        get_metric_fn=rank,
                        n=1,
                        keep_checkpoints_without_metrics=False,
                    ),
                ]
            ),
        )
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=every or 1,  # informative: the policy below decides
        save_decision_policy=ocp.checkpoint_managers.AnySavePolicy(policies),
        create=not read_only,
        # Leftovers of interrupted (never finalised) saves; a reader leaves them alone.
        # (orbax's own read_only=True would log warnings; readers simply never save.)
        cleanup_tmp_directories=not read_only,
        **keeping,
    )
    return ocp.CheckpointManager(path, options=options)


def open_manager(
    checkpoint_dir,
    *,
    keep: int | None,
    every: int | None,
    best: tuple[str, str] | None = None,
) -> tuple[ocp.CheckpointManager, epath.Path]:
    """The manager :func:`jfm.fit` saves through (atomic, asynchronous, ``keep`` kept).

    It saves at every multiple of ``every`` (``manager.should_save``; ``None``: only
    forced saves) and on a preemption sync point. With ``best = (metric, mode)`` the
    checkpoint with the best saved ``metric`` is kept as well as the latest ``keep``.
    The caller closes it.
    """
    path = as_path(checkpoint_dir)
    _check_writable_dir(path)
    return _manager(path, keep=keep, every=every, best=best), path


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: TrainState,
    *,
    force: bool = False,
    metrics: dict[str, float] | None = None,
):
    """Start an (asynchronous) save of ``state`` as step ``step`` (with its ``metrics``)."""
    manager.save(step, args=ocp.args.StandardSave(state), force=force, metrics=metrics)


def _abstract_leaf(x):
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    x = np.asarray(x)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def restore(manager: ocp.CheckpointManager, step: int, like_state: TrainState, path) -> TrainState:
    """Step ``step`` of ``manager``, restored into the structure and shardings of ``like_state``."""
    abstract = jax.tree.map(_abstract_leaf, like_state)
    try:
        restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax/tensorstore raise many types; all mean "unreadable"
        raise ValueError(
            f"`checkpoint_dir` {path}: the checkpoint of step {step} could not be restored "
            f"into the structure of the given state ({type(e).__name__}: {e}). Either it is "
            "damaged (delete that step directory to resume from the previous one) or it was "
            "written for another model/optimizer/EMA setting."
        ) from e
    restored = TrainState(*restored)
    if int(restored.step) != step:
        raise ValueError(
            f"`checkpoint_dir` {path}: the checkpoint directory of step {step} holds a state "
            f"with step={int(restored.step)}; the directory is damaged or was renamed."
        )
    return restored


def latest_step(checkpoint_dir: str | os.PathLike) -> int | None:
    """The step of the latest complete checkpoint in ``checkpoint_dir``, or ``None``.

    Args:
        checkpoint_dir: a directory written by :func:`jfm.fit`; it need not exist.

    Returns:
        The largest finalised step (an ``int``), or ``None`` when the directory does not
        exist or holds no checkpoint. Unfinished (temporary) saves do not count.

    Raises:
        TypeError: ``checkpoint_dir`` is not a path.
        ValueError: ``checkpoint_dir`` is a file.
    """
    path = as_path(checkpoint_dir)
    if not path.exists():
        return None
    if not path.is_dir():
        raise ValueError(f"`checkpoint_dir` must be a directory; {path} is a file.")
    manager = _manager(path, keep=None, every=None, read_only=True)
    try:
        return manager.latest_step()
    finally:
        manager.close()


def _read_manager(checkpoint_dir) -> tuple[ocp.CheckpointManager | None, epath.Path]:
    path = as_path(checkpoint_dir)
    if not path.exists():
        return None, path
    if not path.is_dir():
        raise ValueError(f"`checkpoint_dir` must be a directory; {path} is a file.")
    return _manager(path, keep=None, every=None, read_only=True), path


def best_step(checkpoint_dir: str | os.PathLike, metric: str, *, mode: str = "min") -> int | None:
    """The step of the checkpoint with the best saved ``metric`` in ``checkpoint_dir``.

    :func:`jfm.fit` stores the evaluation of a step with its checkpoint when called with
    ``best_metric=``; this reads them back. Non-finite values rank worst; ties go to the
    earlier step.

    Args:
        checkpoint_dir: a directory written by :func:`jfm.fit`; it need not exist.
        metric: the name of an ``eval_fn`` entry, e.g. ``"eval_loss"``.
        mode: ``"min"`` (smaller is better, default) or ``"max"``.

    Returns:
        The step (an ``int``), or ``None`` when no checkpoint carries ``metric``.

    Raises:
        TypeError: ``checkpoint_dir`` not a path; ``metric`` not a str.
        ValueError: ``mode`` not ``"min"``/``"max"``; ``checkpoint_dir`` a file.
    """
    if not isinstance(metric, str):
        raise TypeError(f"`metric` must be the name of an eval_fn entry (a str); got {metric!r}.")
    if mode not in BEST_MODES:
        raise ValueError(f"`mode` must be one of {BEST_MODES}; got {mode!r}.")
    manager, _ = _read_manager(checkpoint_dir)
    if manager is None:
        return None
    try:
        best, best_value = None, None
        for step in manager.all_steps():
            metrics = manager.metrics(step)
            if not metrics or metric not in metrics:
                continue
            value = _best_value(metrics, metric, mode)
            if best_value is None or value > best_value:
                best, best_value = int(step), value
        return best
    finally:
        manager.close()


def restore_checkpoint(
    checkpoint_dir: str | os.PathLike, like_state: TrainState, *, step: int | None = None
) -> TrainState:
    """Restore a checkpoint of ``checkpoint_dir`` (the latest by default) like ``like_state``.

    Args:
        checkpoint_dir: a directory written by :func:`jfm.fit`.
        like_state: a :class:`TrainState` with the same structure, shapes and dtypes as
            the saved one (e.g. ``init_train_state(params, optimizer, ema=...)``); only
            its structure, shapes, dtypes and shardings are used (its buffers may even
            have been donated). Restored arrays get ``like_state``'s shardings.
        step: the step to restore (e.g. from :func:`jfm.best_step`); ``None`` for the
            latest.

    Returns:
        The restored ``TrainState`` (params, opt_state, step, ema_params), every leaf
        with the shape, dtype and sharding of the matching leaf of ``like_state``.

    Raises:
        TypeError: ``like_state`` is not a ``TrainState``; ``checkpoint_dir`` not a path;
            ``step`` not an int.
        ValueError: no checkpoint in ``checkpoint_dir`` (or none of that ``step``); the
            checkpoint is unreadable or does not match ``like_state``.
    """
    check_train_state(like_state, "like_state")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        raise TypeError(f"`step` must be an int or None; got {step!r}.")
    path = as_path(checkpoint_dir)
    manager, path = _read_manager(path)
    if manager is None:
        raise ValueError(f"`checkpoint_dir` {path} holds no checkpoint to restore.")
    try:
        steps = list(manager.all_steps())
        if not steps:
            raise ValueError(f"`checkpoint_dir` {path} holds no checkpoint to restore.")
        if step is None:
            step = manager.latest_step()
        elif step not in steps:
            raise ValueError(
                f"`step` {step} has no checkpoint in {path}; it holds steps {sorted(steps)}."
            )
        return restore(manager, step, like_state, path)
    finally:
        manager.close()
