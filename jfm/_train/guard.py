"""The non-finite guard of :func:`jfm.fit`: detect a diverging run inside the compiled step.

Each step, inside the jitted call, computes one ``int32`` code (no host sync): ``0`` when
the loss, the gradient norm and every floating leaf of the new parameters are finite, else
the first non-finite quantity (:data:`_METRICS`). (The optimizer state and the average
are not checked: with finite gradients and parameters they stay finite, and a
non-finite moment turns the parameters non-finite at the next step, so the check costs
one reduction over the parameters, not three.) The loop fetches the codes with the other
metrics (every ``log_every`` steps, and before every evaluation and checkpoint), so a
non-finite state is caught before it can be saved. The policy decides what a bad step
does: ``"raise"`` stops the run with :class:`NonFiniteError`; ``"skip_step"`` discards the
update (the state keeps its previous parameters, optimizer state and average; only
``step`` advances, so the per-step keys stay those of the uninterrupted run).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from .state import TrainState
from .step import check_step_output

NAN_POLICIES: tuple[str, ...] = ("raise", "skip_step")

#: The key of the per-step code in the metrics of the loop's compiled calls (removed
#: before the metrics reach the history).
CODE_KEY = "_jfm_nonfinite"

#: What a non-zero code names, in the order the checks are made.
_METRICS = ("loss", "grad_norm", "parameters")


class NonFiniteError(FloatingPointError):
    """A training run of :func:`jfm.fit` produced a non-finite loss or state.

    Attributes:
        step: the first step (1-based) whose loss, gradient norm or new parameters were
            not finite.
        metric: what was not finite: ``"loss"``, ``"grad_norm"`` or ``"parameters"``.
        checkpoint_step: the latest checkpoint written (or resumed from) before the
            error (its parameters are finite); ``None`` when there is none.
    """

    def __init__(self, message: str, *, step: int, metric: str, checkpoint_step: int | None):
        super().__init__(message)
        self.step, self.metric, self.checkpoint_step = step, metric, checkpoint_step


def _all_finite(tree) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def nonfinite_code(metrics, new_state: TrainState) -> jax.Array:
    """``int32`` scalar: 0 if all finite, else ``1 + index`` into :data:`_METRICS`."""
    checks = [
        _all_finite(metrics.get("loss", ())),
        _all_finite(metrics.get("grad_norm", ())),
        _all_finite(new_state.params),
    ]
    code = jnp.zeros((), jnp.int32)
    for i in reversed(range(len(checks))):  # the first failing check wins
        code = jnp.where(checks[i], code, jnp.int32(i + 1))
    return code


def guard_step(train_step: Callable, policy: str) -> Callable:
    """``train_step`` with the guard: its metrics gain :data:`CODE_KEY`; with
    ``"skip_step"`` a bad step's update is discarded (the old state, ``step + 1``)."""

    def guarded(state, batch, key):
        new, metrics = check_step_output(train_step(state, batch, key))
        code = nonfinite_code(metrics, new)
        if policy == "skip_step":
            keep = code == 0
            old = (state.params, state.opt_state, state.ema_params)
            upd = (new.params, new.opt_state, new.ema_params)
            if jax.tree.structure(old) == jax.tree.structure(upd):
                params, opt_state, ema = jax.tree.map(lambda n, o: jnp.where(keep, n, o), upd, old)
                new = TrainState(params, opt_state, new.step, ema)
        return new, {**metrics, CODE_KEY: code}

    return guarded


def describe(code: int) -> str:
    return _METRICS[code - 1]
