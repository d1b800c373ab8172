"""Training: a ``TrainState`` pytree, a pure ``train_step`` factory and the ``fit`` loop.

The pieces follow optax: :func:`make_train_step` returns a pure function
``train_step(state, batch, key) -> (state, metrics)`` that the caller jits (usually
``jax.jit(train_step, donate_argnums=0)``, with shardings where wanted), and
:func:`fit` is a thin loop around it with a progress bar, periodic evaluation and orbax
checkpoints that it resumes from.
"""

import functools
import numbers
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import orbax.checkpoint as ocp
from etils import epath
from jaxtyping import Array, Int, PRNGKeyArray, PyTree
from tqdm import tqdm

from ._checks import check_key

__all__ = [
    "TrainState",
    "fit",
    "init_train_state",
    "latest_step",
    "make_train_step",
    "restore_checkpoint",
    "scan_train_step",
]


class TrainState(NamedTuple):
    """Everything that changes during training, as one pytree.

    Being a pytree, it passes through ``jax.jit`` (donate it with ``donate_argnums=0``),
    is sharded with ``jax.device_put``/``NamedSharding`` like any other tree, and is saved
    and restored by orbax as it is.

    Attributes:
        params: the trainable parameters, any pytree of floating arrays (for a Flax NNX
            model, the ``nnx.State`` of ``nnx.split``).
        opt_state: the optax optimizer state, ``optimizer.init(params)``.
        step: ``int32[]``, the number of optimizer steps taken.
        ema_params: an exponential moving average of ``params`` (same structure and
            dtypes), or ``None`` when no average is kept.
    """

    params: PyTree
    opt_state: PyTree
    step: Int[Array, ""]
    ema_params: PyTree = None


# _OPTAX_PROMOTION_NOTE: optax's optimizers mix Python floats and int32 counters (e.g.
# Adam's bias correction ``b1 ** count``), which jax_numpy_dtype_promotion="strict"
# rejects. The optimizer's own init/update therefore run under "standard" promotion (a
# local context, the caller's setting is untouched elsewhere); optax keeps the parameter
# dtypes either way, which the tests check.


def _check_callable(fn, name: str, what: str):
    if not callable(fn):
        raise TypeError(f"`{name}` must be callable ({what}); got {type(fn)}.")


def _check_optimizer(optimizer):
    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise TypeError(
            "`optimizer` must be an optax.GradientTransformation (with `init` and `update`), "
            f"e.g. optax.adam(1e-3); got {type(optimizer)}."
        )


def _check_positive_int(value, name: str, *, allow_none: bool = False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        extra = " or None" if allow_none else ""
        raise TypeError(f"`{name}` must be a positive int{extra}; got {value!r} ({type(value)}).")
    if value <= 0:
        raise ValueError(f"`{name}` must be a positive int; got {name}={value}.")


def _strong_float_leaf(path, x):
    if not isinstance(x, (jax.Array, np.ndarray, np.generic, float)) or isinstance(x, bool):
        raise TypeError(
            f"`params` leaves must be floating arrays; got {type(x)} at "
            f"{jax.tree_util.keystr(path) or 'the root'}."
        )
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"`params` leaves must have a floating dtype (they are differentiated); got "
            f"{dtype} at {jax.tree_util.keystr(path) or 'the root'}. Keep integer state out "
            "of the trainable parameters."
        )
    # An explicit dtype drops weak typing, so the first and later jitted steps see the
    # same input types (no recompilation). Arrays already strong are returned as is.
    return jnp.asarray(x, dtype=dtype)


def init_train_state(
    params: PyTree, optimizer: optax.GradientTransformation, *, ema: bool = False
) -> TrainState:
    """Create the initial :class:`TrainState` (``step = 0``).

    Args:
        params: the initial parameters, a pytree of floating arrays (for a Flax NNX model
            the ``nnx.State`` from ``nnx.split``). Weak-typed leaves are made strong so
            that later steps do not recompile.
        optimizer: an ``optax.GradientTransformation``; ``opt_state = optimizer.init(params)``.
        ema: keep an exponential moving average of the parameters, initialised to a copy
            of ``params`` (a copy, so that donating the state never donates one buffer
            twice). Use with ``make_train_step(..., ema_decay=...)``.

    Returns:
        ``TrainState(params, opt_state, step=int32 0, ema_params or None)``.

    Raises:
        TypeError: ``params`` has no leaves or a non-floating leaf; ``optimizer`` is not
            a gradient transformation; ``ema`` is not a bool.

    Examples:
        >>> import jax.numpy as jnp, optax, jfm
        >>> state = jfm.init_train_state({"w": jnp.zeros(3)}, optax.sgd(0.1), ema=True)
        >>> int(state.step), state.ema_params["w"].shape
        (0, (3,))
    """
    _check_optimizer(optimizer)
    if not isinstance(ema, bool):
        raise TypeError(f"`ema` must be a bool; got {ema!r} ({type(ema)}).")
    if not jax.tree_util.tree_leaves(params):
        raise TypeError(f"`params` must be a pytree with at least one array leaf; got {params!r}.")
    params = jax.tree_util.tree_map_with_path(_strong_float_leaf, params)
    with jax.numpy_dtype_promotion("standard"):  # see _OPTAX_PROMOTION_NOTE
        opt_state = optimizer.init(params)
    ema_params = jax.tree.map(jnp.copy, params) if ema else None
    return TrainState(params, opt_state, jnp.zeros((), jnp.int32), ema_params)


def make_train_step(
    apply: Callable,
    optimizer: optax.GradientTransformation,
    loss_fn: Callable,
    *,
    ema_decay: float | None = None,
) -> Callable[..., tuple[TrainState, dict[str, Array]]]:
    r"""Build a pure training step ``train_step(state, batch, key) -> (state, metrics)``.

    One step computes the mean of the per-example losses and its gradient,

    .. math::
        L(\theta) = \frac{1}{B} \sum_{b=1}^{B} \ell_b(\theta), \qquad
        g = \nabla_\theta L(\theta),

    applies the optimizer (``updates, opt_state = optimizer.update(g, opt_state, params)``,
    ``params = optax.apply_updates(params, updates)``), updates the moving average
    ``ema = decay * ema + (1 - decay) * params`` (with the new params, through
    ``optax.incremental_update``) when ``ema_decay`` is given, and increments ``step``.

    The step is not jitted here: the caller owns ``jax.jit``, shardings and donation.
    The usual call is ``step = jax.jit(train_step, donate_argnums=0)`` (the old state's
    buffers are reused for the new one). Dtypes are preserved (float32 parameters stay
    float32), so the second jitted call does not recompile. The optimizer's ``update``
    runs under ``jax.numpy_dtype_promotion("standard")`` (optax mixes Python floats and
    int32 step counters, which "strict" promotion rejects).

    Args:
        apply: the model, ``apply(params, t[B], x[B, *event], args) -> [B, *event]``
            (batch-first); passed through to ``loss_fn`` untouched.
        optimizer: an ``optax.GradientTransformation``, e.g. ``optax.adam(1e-3)``.
        loss_fn: ``loss_fn(apply, params, batch, *, key) -> [B]`` per-example losses,
            e.g. ``functools.partial(jfm.cfm_loss, path=path)``.
        ema_decay: ``None`` (no moving average; ``state.ema_params``, if any, is carried
            unchanged) or the decay ``d`` in ``[0, 1)``; then the state must come from
            ``init_train_state(..., ema=True)``.

    Returns:
        ``train_step(state, batch, key) -> (new_state, metrics)``, pure and jit-able
        (``key`` positional or ``key=``), with ``metrics = {"loss": mean loss,
        "grad_norm": optax.tree.norm(g)}`` (0-d arrays; the global L2 norm).

    Raises:
        TypeError: ``apply``/``loss_fn`` not callable, ``optimizer`` not a gradient
            transformation, ``ema_decay`` not a real number. At trace time of the step:
            ``state`` not a ``TrainState``, ``loss_fn`` not returning a ``[B]`` floating
            array.
        ValueError: ``ema_decay`` outside ``[0, 1)``; at trace time, ``ema_decay`` set
            but ``state.ema_params`` is ``None`` or shaped unlike ``params``.

    Examples:
        >>> import jax, jax.numpy as jnp, optax, jfm
        >>> apply = lambda p, t, x, args: x * p["w"]
        >>> def loss_fn(apply, params, batch, *, key):
        ...     return jnp.sum((apply(params, None, batch, None) - 1.0) ** 2, axis=-1)
        >>> opt = optax.sgd(0.1)
        >>> step = jax.jit(jfm.make_train_step(apply, opt, loss_fn), donate_argnums=0)
        >>> state = jfm.init_train_state({"w": jnp.zeros(2)}, opt)
        >>> state, metrics = step(state, jnp.ones((4, 2)), jax.random.key(0))
        >>> int(state.step), float(metrics["loss"])
        (1, 2.0)
    """
    _check_callable(apply, "apply", "the model, apply(params, t, x, args)")
    _check_optimizer(optimizer)
    _check_callable(loss_fn, "loss_fn", "loss_fn(apply, params, batch, *, key) -> [B] losses")
    if ema_decay is not None:
        if isinstance(ema_decay, bool) or not isinstance(ema_decay, numbers.Real):
            raise TypeError(
                f"`ema_decay` must be a float in [0, 1) or None; got {ema_decay!r} "
                f"({type(ema_decay)})."
            )
        if not 0.0 <= float(ema_decay) < 1.0:
            raise ValueError(
                f"`ema_decay` must lie in [0, 1) (e.g. 0.999); got ema_decay={ema_decay}."
            )
        ema_decay = float(ema_decay)

    def mean_loss(params, batch, key):
        losses = loss_fn(apply, params, batch, key=key)
        if not isinstance(losses, jax.Array) or losses.ndim != 1:
            got = losses.shape if hasattr(losses, "shape") else type(losses)
            raise TypeError(
                "`loss_fn` must return per-example losses of shape [B] (the step takes the "
                f"mean); got {got}."
            )
        if not jnp.issubdtype(losses.dtype, jnp.floating):
            raise TypeError(f"`loss_fn` must return floating losses; got dtype {losses.dtype}.")
        return jnp.mean(losses)

    def train_step(
        state: TrainState, batch: PyTree, key: PRNGKeyArray
    ) -> tuple[TrainState, dict[str, Array]]:
        if not isinstance(state, TrainState):
            raise TypeError(
                f"`state` must be a jfm.TrainState (from jfm.init_train_state); got {type(state)}."
            )
        check_key(key)
        loss, grads = jax.value_and_grad(mean_loss)(state.params, batch, key)
        with jax.numpy_dtype_promotion("standard"):  # see _OPTAX_PROMOTION_NOTE
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = state.ema_params
        if ema_decay is not None:
            if ema_params is None:
                raise ValueError(
                    f"`state.ema_params` is None but ema_decay={ema_decay} was given: create "
                    "the state with jfm.init_train_state(params, optimizer, ema=True)."
                )
            if jax.tree.structure(ema_params) != jax.tree.structure(params):
                raise ValueError(
                    "`state.ema_params` must have the structure of `state.params`; got "
                    f"{jax.tree.structure(ema_params)} vs {jax.tree.structure(params)}."
                )
            # incremental_update(new, old, s) = s * new + (1 - s) * old.
            ema_params = optax.incremental_update(params, ema_params, 1.0 - ema_decay)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        return TrainState(params, opt_state, state.step + 1, ema_params), metrics

    return train_step


# -- checkpoints ---------------------------------------------------------------------------

_TMP_MARK = ".orbax-checkpoint-tmp"
_ORBAX_ROOT_FILES = ("_ROOT_METADATA", "metadata")


def _as_path(checkpoint_dir) -> epath.Path:
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


def _check_checkpoint_dir(path: epath.Path):
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


def _manager(path: epath.Path, *, keep: int | None, every: int | None, read_only: bool = False):
    policies: list[Any] = [ocp.checkpoint_managers.PreemptionCheckpointingPolicy()]
    if every is not None:
        policies.insert(0, ocp.checkpoint_managers.FixedIntervalPolicy(every))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        save_interval_steps=every or 1,  # informative: the policy below decides
        save_decision_policy=ocp.checkpoint_managers.AnySavePolicy(policies),
        create=not read_only,
        # Leftovers of interrupted (never finalised) saves; a reader leaves them alone.
        # (orbax's own read_only=True would log warnings; readers simply never save.)
        cleanup_tmp_directories=not read_only,
    )
    return ocp.CheckpointManager(path, options=options)


def _abstract_leaf(x):
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    x = np.asarray(x)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def _restore(manager, step: int, like_state: TrainState, path) -> TrainState:
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
    path = _as_path(checkpoint_dir)
    if not path.exists():
        return None
    if not path.is_dir():
        raise ValueError(f"`checkpoint_dir` must be a directory; {path} is a file.")
    manager = _manager(path, keep=None, every=None, read_only=True)
    try:
        return manager.latest_step()
    finally:
        manager.close()


def restore_checkpoint(checkpoint_dir: str | os.PathLike, like_state: TrainState) -> TrainState:
    """Restore the latest checkpoint of ``checkpoint_dir`` into the structure of ``like_state``.

    Args:
        checkpoint_dir: a directory written by :func:`jfm.fit`.
        like_state: a :class:`TrainState` with the same structure, shapes and dtypes as
            the saved one (e.g. ``init_train_state(params, optimizer, ema=...)``); only
            its structure, shapes, dtypes and shardings are used (its buffers may even
            have been donated). Restored arrays get ``like_state``'s shardings.

    Returns:
        The restored ``TrainState`` (params, opt_state, step, ema_params).

    Raises:
        TypeError: ``like_state`` is not a ``TrainState``; ``checkpoint_dir`` not a path.
        ValueError: no checkpoint in ``checkpoint_dir``; the latest one is unreadable or
            does not match ``like_state``.
    """
    if not isinstance(like_state, TrainState):
        raise TypeError(f"`like_state` must be a jfm.TrainState; got {type(like_state)}.")
    path = _as_path(checkpoint_dir)
    step = latest_step(path)
    if step is None:
        raise ValueError(f"`checkpoint_dir` {path} holds no checkpoint to restore.")
    manager = _manager(path, keep=None, every=None, read_only=True)
    try:
        return _restore(manager, step, like_state, path)
    finally:
        manager.close()


# -- the loop ------------------------------------------------------------------------------


def _split_step_key(key, i):
    """The keys of step ``i`` (1-based): ``split(fold_in(key, i))`` -> (data, step)."""
    data_key, step_key = jr.split(jr.fold_in(key, i))
    return data_key, step_key


_step_keys = jax.jit(_split_step_key)


def _check_step_types(out):
    """Trace-time check of what ``train_step`` returned."""
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], TrainState)):
        raise TypeError(
            "`train_step` must return (TrainState, metrics dict) (see jfm.make_train_step); "
            f"got {type(out)}."
        )
    if not isinstance(out[1], Mapping):
        raise TypeError(f"`train_step` must return a metrics dict second; got {type(out[1])}.")


def scan_train_step(
    train_step: Callable, batch_fn: Callable, num_steps: int
) -> Callable[..., tuple[TrainState, dict[str, Array]]]:
    r"""Fuse ``num_steps`` training steps, data generation included, into one function.

    ``multi_step(state, key) -> (state, metrics)`` runs, with ``jax.lax.scan``,

    .. math::
        i = \mathrm{state.step} + 1, \quad
        (k^{data}_i, k^{step}_i) = \mathrm{split}(\mathrm{fold\_in}(\mathrm{key}, i)),
        \quad \mathrm{state} \leftarrow \mathrm{train\_step}(\mathrm{state},
            \mathrm{batch\_fn}(k^{data}_i), k^{step}_i)

    ``num_steps`` times: the very keys :func:`jfm.fit` uses for step ``i``, so both give
    the same run (equal to float round-off: XLA may fuse the scanned step differently).
    Jitted (``jax.jit(multi_step, donate_argnums=0)``), it is one dispatch for
    ``num_steps`` steps: no per-step Python, pytree flattening or host-side key
    derivation, which is what bounds small models (on a 2-core CPU, a 3x64 MLP at batch
    256 takes ~0.6 ms per fused step, and one jitted call per step adds ~0.35 ms).
    ``jfm.fit(..., steps_per_call=n)`` uses it.

    Args:
        train_step: ``train_step(state, batch, key) -> (state, metrics)``, e.g. from
            :func:`jfm.make_train_step`; it must increment ``state.step`` by one.
        batch_fn: ``batch_fn(key) -> batch``, a pure JAX function of a PRNG key (it is
            traced into the scan; host-side loaders cannot be used here).
        num_steps: the number of steps per call, a positive int.

    Returns:
        ``multi_step(state, key) -> (state, metrics)``, pure and jit-able, where every
        entry of ``metrics`` has a leading axis of length ``num_steps`` (step order).

    Raises:
        TypeError: ``train_step``/``batch_fn`` not callable, ``num_steps`` not an int;
            at trace time, ``state`` not a ``TrainState`` or ``train_step`` returning
            something other than ``(TrainState, dict)``.
        ValueError: ``num_steps`` not positive.

    Examples:
        >>> import jax, jax.numpy as jnp, optax, jfm
        >>> apply = lambda p, t, x, args: x * p["w"]
        >>> def loss_fn(apply, params, batch, *, key):
        ...     return jnp.sum((apply(params, None, batch, None) - 1.0) ** 2, axis=-1)
        >>> step = jfm.make_train_step(apply, optax.sgd(0.1), loss_fn)
        >>> multi = jax.jit(jfm.scan_train_step(step, lambda k: jnp.ones((4, 2)), 10))
        >>> state = jfm.init_train_state({"w": jnp.zeros(2)}, optax.sgd(0.1))
        >>> state, metrics = multi(state, jax.random.key(0))
        >>> int(state.step), metrics["loss"].shape
        (10, (10,))
    """
    _check_callable(train_step, "train_step", "train_step(state, batch, key)")
    _check_callable(batch_fn, "batch_fn", "batch_fn(key) -> batch, a JAX function")
    _check_positive_int(num_steps, "num_steps")

    def multi_step(state: TrainState, key: PRNGKeyArray) -> tuple[TrainState, dict[str, Array]]:
        if not isinstance(state, TrainState):
            raise TypeError(
                f"`state` must be a jfm.TrainState (from jfm.init_train_state); got {type(state)}."
            )
        check_key(key)

        def body(s, _):
            data_key, step_key = _split_step_key(key, (s.step + 1).astype(jnp.uint32))
            out = train_step(s, batch_fn(data_key), step_key)
            _check_step_types(out)
            return out

        return jax.lax.scan(body, state, None, length=num_steps)

    return multi_step


def _flat(fn, treedef):
    """``fn(state, *rest) -> (state, metrics)`` as a function of the state's leaves.

    Flattening a TrainState of Flax ``nnx.State`` containers in Python costs ~0.25 ms per
    call (a list of the same leaves: ~2 us), as much as a small model's whole step; the
    loop therefore carries the leaves and rebuilds the state only to evaluate or save.
    """

    def flat_fn(leaves, *rest):
        out = fn(jax.tree.unflatten(treedef, leaves), *rest)
        _check_step_types(out)
        state, metrics = out
        new_leaves, new_def = jax.tree.flatten(state)
        if new_def != treedef:
            raise TypeError(
                "`train_step` must return a state with the structure of its input state; got "
                f"{new_def} vs {treedef}."
            )
        return new_leaves, metrics

    return flat_fn


@functools.lru_cache(maxsize=16)
def _jitted_flat_cached(train_step, treedef, batch_fn, n):
    fn = train_step if n is None else scan_train_step(train_step, batch_fn, n)
    return jax.jit(_flat(fn, treedef), donate_argnums=0)


def _jitted_flat(train_step, treedef, batch_fn=None, n=None):
    """``jax.jit(_flat(...), donate_argnums=0)`` of one step (``n is None``) or of
    ``scan_train_step(train_step, batch_fn, n)``. The last few are cached (bounded), so
    a second ``fit`` with the same step (a resumed run, a longer run) does not retrace a
    new closure and recompile."""
    try:
        return _jitted_flat_cached(train_step, treedef, batch_fn, n)
    except TypeError:  # an unhashable train_step or batch_fn: no caching
        fn = train_step if n is None else scan_train_step(train_step, batch_fn, n)
        return jax.jit(_flat(fn, treedef), donate_argnums=0)


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


#: What tracing a host-side (numpy) batch_fn raises.
_NOT_TRACEABLE = (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError)


def _next_multiple(i: int, period: int | None) -> int | None:
    return None if period is None else (i // period + 1) * period


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

    ``train_step`` is jitted once here with ``jax.jit(..., donate_argnums=0)``, so each
    step reuses the previous state's buffers. The ``state`` passed in is copied
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
    the device and fetched to the host every ``log_every`` steps (no per-step sync).

    Checkpoints (orbax ``CheckpointManager``: atomic saves, asynchronous writes, at most
    ``keep`` kept) are written to ``checkpoint_dir`` at every multiple of
    ``checkpoint_every`` and at the final step. If ``checkpoint_dir`` already holds a
    checkpoint, the run RESUMES from the latest one: ``state`` then only gives the
    structure, shapes, dtypes and shardings (params, opt_state, step and ema_params all
    come from the checkpoint), and if that checkpoint is already at ``steps`` the
    function returns at once. A checkpoint that cannot be read raises (it is never
    skipped or overwritten silently); delete its step directory to resume from the
    previous one.

    Args:
        train_step: ``train_step(state, batch, key) -> (state, metrics)``, e.g. from
            :func:`jfm.make_train_step`; it must increment ``state.step`` by one.
        state: the initial :class:`TrainState` (``init_train_state``); its ``step`` may be
            positive (training then continues from there).
        batch_fn: ``batch_fn(key) -> batch``, a pure function of a PRNG key.
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

    Returns:
        ``(state, history)``: the final state and ``history = {"step": [int], "loss":
        [float], "grad_norm": [float] (one entry per scalar metric), "eval": [{"step": i,
        **eval_fn(state_i)}]}`` covering the steps run by this call (not those before a
        resume).

    Raises:
        TypeError: ``train_step``/``batch_fn``/``eval_fn`` not callable, ``state`` not a
            ``TrainState``, a bad ``key``, a non-int period, ``train_step`` or ``eval_fn``
            returning the wrong kind of value.
        ValueError: ``steps``, ``eval_every``, ``checkpoint_every``, ``keep`` or
            ``log_every`` or ``steps_per_call`` not positive; ``eval_every`` without ``eval_fn``;
            ``checkpoint_every`` without ``checkpoint_dir``; ``state.step`` or the latest
            checkpoint beyond ``steps``; an unreadable or foreign ``checkpoint_dir``;
            ``train_step`` not incrementing ``state.step`` by one.

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
    """
    _check_callable(train_step, "train_step", "train_step(state, batch, key)")
    if not isinstance(state, TrainState):
        raise TypeError(
            f"`state` must be a jfm.TrainState (from jfm.init_train_state); got {type(state)}."
        )
    _check_callable(batch_fn, "batch_fn", "batch_fn(key) -> batch")
    _check_positive_int(steps, "steps")
    check_key(key)
    if eval_fn is not None:
        _check_callable(eval_fn, "eval_fn", "eval_fn(state) -> dict of floats")
    _check_positive_int(eval_every, "eval_every", allow_none=True)
    if eval_every is not None and eval_fn is None:
        raise ValueError("`eval_every` was given without `eval_fn`: pass eval_fn=... too.")
    _check_positive_int(checkpoint_every, "checkpoint_every", allow_none=True)
    if checkpoint_every is not None and checkpoint_dir is None:
        raise ValueError(
            "`checkpoint_every` was given without `checkpoint_dir`: pass checkpoint_dir=... too."
        )
    _check_positive_int(keep, "keep", allow_none=True)
    if not isinstance(progress, bool):
        raise TypeError(f"`progress` must be a bool; got {progress!r}.")
    _check_positive_int(log_every, "log_every")
    _check_positive_int(steps_per_call, "steps_per_call", allow_none=True)

    history: dict[str, Any] = {"step": [], "loss": [], "eval": []}
    manager = None
    restored = False
    try:
        if checkpoint_dir is not None:
            path = _as_path(checkpoint_dir)
            _check_checkpoint_dir(path)
            manager = _manager(path, keep=keep, every=checkpoint_every)
            last = manager.latest_step()
            if last is not None:
                if last > steps:
                    raise ValueError(
                        f"`steps`={steps} is below the latest checkpoint's step {last} in "
                        f"{path}: pass steps >= {last} or another checkpoint_dir."
                    )
                state = _restore(manager, last, state, path)
                restored = True
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
        unflatten = functools.partial(jax.tree.unflatten, treedef)

        if steps_per_call is None:
            jit_step = _jitted_flat(train_step, treedef)

            def run(i, n):  # n == 1: step i + 1, batch_fn on the host
                data_key, step_key = _step_keys(key, np.uint32(i + 1))
                return jit_step(leaves, batch_fn(data_key), step_key)

        else:

            def run(i, n):  # steps i + 1 .. i + n in one call
                try:
                    return _jitted_flat(train_step, treedef, batch_fn, n)(leaves, key)
                except _NOT_TRACEABLE as e:
                    raise TypeError(
                        "`batch_fn` must be a JAX function of its key when `steps_per_call` is "
                        "given (it is traced into the fused steps); a host-side loader needs "
                        f"steps_per_call=None. ({type(e).__name__}: {e})"
                    ) from e

        pending: list[tuple[int, int, Any]] = []

        def flush():
            if not pending:
                return None
            fetched = jax.device_get([m for _, _, m in pending])
            for (i0, n, _), metrics in zip(pending, fetched):
                for j in range(n):
                    history["step"].append(i0 + j)
                    for name, value in metrics.items():
                        value = value if steps_per_call is None else np.asarray(value)[j]
                        if np.ndim(value) == 0 and name not in ("step", "eval"):
                            history.setdefault(name, []).append(float(value))
            pending.clear()
            return history["loss"][-1] if history["loss"] else None

        chunk = steps_per_call or 1
        i = start
        with tqdm(total=steps, initial=start, disable=not progress, unit="step") as bar:
            while i < steps:
                ends = [steps, i + chunk, _next_multiple(i, eval_every if eval_fn else None)]
                if manager is not None:
                    ends.append(_next_multiple(i, checkpoint_every))
                n = min(e for e in ends if e is not None) - i
                leaves, metrics = run(i, n)
                if i == start:  # one host sync, on the first call only
                    got = int(unflatten(leaves).step)
                    if got != i + n:
                        raise ValueError(
                            "`train_step` must increment state.step by one (step "
                            f"{i} -> {i + 1}); got state.step={got} after {n} step(s). "
                            "Checkpoints and per-step keys are indexed by it."
                        )
                pending.append((i + 1, n, metrics))
                crossed_log = (i + n) // log_every > i // log_every
                i += n
                bar.update(n)
                final = i == steps
                if crossed_log or final:
                    loss = flush()
                    if loss is not None:
                        bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
                if eval_fn is not None and (final or (eval_every and i % eval_every == 0)):
                    history["eval"].append(_evaluate(eval_fn, unflatten(leaves), i))
                if manager is not None and (final or manager.should_save(i)):
                    manager.save(i, args=ocp.args.StandardSave(unflatten(leaves)), force=final)
        if manager is not None:
            manager.wait_until_finished()
    finally:
        if manager is not None:
            manager.close()
    return unflatten(leaves), history
