"""The pure training step: :func:`make_train_step`, and :func:`scan_train_step` fusing several.

The step follows optax: a factory returns a pure function ``train_step(state, batch,
key) -> (state, metrics)`` that the caller jits (usually ``jax.jit(train_step,
donate_argnums=0)``, with shardings where wanted).
"""

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from jaxtyping import Array, PRNGKeyArray, PyTree

from .._checks import check_callable, check_int, check_key, check_scalar
from .state import TrainState, check_optimizer, check_train_state

#: ``loss_fn``'s signature, as error messages name it.
LOSS_SIGNATURE = "(apply, params, batch, *, key) -> [B] per-example losses"
STEP_SIGNATURE = "(state, batch, key) -> (state, metrics)"


def split_step_key(key: PRNGKeyArray, i) -> tuple[PRNGKeyArray, PRNGKeyArray]:
    """The keys of step ``i`` (1-based): ``split(fold_in(key, i))`` -> (data, step)."""
    data_key, step_key = jr.split(jr.fold_in(key, i))
    return data_key, step_key


def check_step_output(out):
    """Trace-time check of what a ``train_step`` returned: ``(TrainState, dict)``."""
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], TrainState)):
        raise TypeError(
            "`train_step` must return (TrainState, metrics dict) (see jfm.make_train_step); "
            f"got {type(out)}."
        )
    if not isinstance(out[1], Mapping):
        raise TypeError(f"`train_step` must return a metrics dict second; got {type(out[1])}.")
    return out


def _check_ema_decay(ema_decay) -> float | None:
    if ema_decay is None:
        return None
    check_scalar(ema_decay, "ema_decay")  # a finite real scalar
    value = float(ema_decay)  # as given: check_scalar's array may round it to float32
    if not 0.0 <= value < 1.0:
        raise ValueError(f"`ema_decay` must lie in [0, 1) (e.g. 0.999); got ema_decay={value}.")
    return value


def _check_losses(losses) -> Array:
    if not isinstance(losses, jax.Array) or losses.ndim != 1:
        got = losses.shape if hasattr(losses, "shape") else type(losses)
        raise TypeError(
            "`loss_fn` must return per-example losses of shape [B] (the step takes the "
            f"mean); got {got}."
        )
    if not jnp.issubdtype(losses.dtype, jnp.floating):
        raise TypeError(f"`loss_fn` must return floating losses; got dtype {losses.dtype}.")
    return losses


def _update_ema(ema_params: PyTree, params: PyTree, decay: float) -> PyTree:
    if ema_params is None:
        raise ValueError(
            f"`state.ema_params` is None but ema_decay={decay} was given: create the state "
            "with jfm.init_train_state(params, optimizer, ema=True)."
        )
    if jax.tree.structure(ema_params) != jax.tree.structure(params):
        raise ValueError(
            "`state.ema_params` must have the structure of `state.params`; got "
            f"{jax.tree.structure(ema_params)} vs {jax.tree.structure(params)}."
        )
    # incremental_update(new, old, s) = s * new + (1 - s) * old.
    return optax.incremental_update(params, ema_params, 1.0 - decay)


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

    ``loss_fn`` receives the model as its first argument, the signature every jfm loss
    has (:func:`jfm.cfm_loss`, :func:`jfm.dsm_loss`, ...), so a jfm loss with its options
    bound by ``functools.partial`` is a ``loss_fn`` as it is.

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
        "grad_norm": optax.tree.norm(g)}`` (0-d arrays of the loss dtype; the global L2
        norm of the gradient).

    Raises:
        TypeError: ``apply``/``loss_fn`` not callable, ``optimizer`` not a gradient
            transformation, ``ema_decay`` not a real number. At trace time of the step:
            ``state`` not a ``TrainState``, a bad ``key``, ``loss_fn`` not returning a
            ``[B]`` floating array.
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
    check_callable(apply, "apply", "(params, t, x, args)")
    check_optimizer(optimizer)
    check_callable(loss_fn, "loss_fn", LOSS_SIGNATURE)
    ema_decay = _check_ema_decay(ema_decay)

    def mean_loss(params, batch, key):
        return jnp.mean(_check_losses(loss_fn(apply, params, batch, key=key)))

    def train_step(
        state: TrainState, batch: PyTree, key: PRNGKeyArray
    ) -> tuple[TrainState, dict[str, Array]]:
        check_train_state(state)
        check_key(key)
        loss, grads = jax.value_and_grad(mean_loss)(state.params, batch, key)
        with jax.numpy_dtype_promotion("standard"):  # see state._OPTAX_PROMOTION_NOTE
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = state.ema_params
        if ema_decay is not None:
            ema_params = _update_ema(ema_params, params, ema_decay)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        return TrainState(params, opt_state, state.step + 1, ema_params), metrics

    return train_step


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
        entry of ``metrics`` has a leading axis of length ``num_steps`` (step order):
        ``metrics["loss"]`` is ``[num_steps]``.

    Raises:
        TypeError: ``train_step``/``batch_fn`` not callable, ``num_steps`` not an int;
            at trace time, ``state`` not a ``TrainState``, a bad ``key``, or
            ``train_step`` returning something other than ``(TrainState, dict)``.
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
    check_callable(train_step, "train_step", STEP_SIGNATURE)
    check_callable(batch_fn, "batch_fn", "(key) -> batch, a JAX function")
    check_int(num_steps, "num_steps")

    def multi_step(state: TrainState, key: PRNGKeyArray) -> tuple[TrainState, dict[str, Array]]:
        check_train_state(state)
        check_key(key)

        def body(s, _):
            data_key, step_key = split_step_key(key, (s.step + 1).astype(jnp.uint32))
            return check_step_output(train_step(s, batch_fn(data_key), step_key))

        return jax.lax.scan(body, state, None, length=num_steps)

    return multi_step
