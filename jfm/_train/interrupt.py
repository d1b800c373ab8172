"""Stopping :func:`jfm.fit` on a signal (preemption): catch, save, raise.

Cluster schedulers (SLURM, Kubernetes, TPU maintenance events) send ``SIGTERM`` some
seconds before they stop a job. While ``fit(..., stop_signals=(signal.SIGTERM, ...))``
runs, a Python handler records the signal; the loop notices it after the call in flight,
checkpoints the current step (whatever ``checkpoint_every`` says) and raises
:class:`TrainingInterrupted`. A second signal of the same kind restores the previous
handler and re-delivers itself (a second Ctrl-C stops at once). On a multi-host run
(``jax.process_count() > 1``) the hosts must agree on the step; there the loop also stops
at JAX's preemption sync point (``multihost_utils.reached_preemption_sync_point``, the
mechanism orbax's ``PreemptionCheckpointingPolicy`` uses), which
``jax.distributed.initialize`` sets up.
"""

import signal
import threading
from collections.abc import Sequence
from typing import Any

import jax


class TrainingInterrupted(Exception):
    """:func:`jfm.fit` stopped on a signal after checkpointing the current step.

    Attributes:
        step: the step the run reached, the step of the checkpoint just written.
        signum: the signal number (e.g. ``signal.SIGTERM``); ``None`` for a multi-host
            preemption sync point.
        history: the history of the steps run by this call (as :func:`jfm.fit` returns).
    """

    def __init__(self, message: str, *, step: int, signum: int | None, history: dict[str, Any]):
        super().__init__(message)
        self.step, self.signum, self.history = step, signum, history


def check_signals(stop_signals) -> tuple[int, ...]:
    if isinstance(stop_signals, (str, bytes)) or not isinstance(stop_signals, Sequence):
        raise TypeError(
            "`stop_signals` must be a sequence of signal numbers, e.g. (signal.SIGTERM, "
            f"signal.SIGINT); got {type(stop_signals)}."
        )
    valid = set(signal.valid_signals())
    out = []
    for s in stop_signals:
        if isinstance(s, bool) or not isinstance(s, int) or s not in valid:
            raise ValueError(f"`stop_signals` must hold valid signal numbers; got {s!r}.")
        if s in (signal.SIGKILL, getattr(signal, "SIGSTOP", signal.SIGKILL)):
            raise ValueError(f"`stop_signals`: {signal.Signals(s).name} cannot be caught.")
        out.append(int(s))
    if out and threading.current_thread() is not threading.main_thread():
        raise ValueError(
            "`stop_signals` needs fit to run in the main thread (Python delivers signals "
            "there only); pass stop_signals=() in other threads."
        )
    return tuple(dict.fromkeys(out))


class SignalCatcher:
    """Context manager recording the first of ``signums`` that arrives (``.received``)."""

    def __init__(self, signums: tuple[int, ...]):
        self.signums, self.received, self._previous = signums, None, {}
        self.multihost = jax.process_count() > 1

    def _handle(self, signum, frame):
        if self.received is not None and signum == self.received:
            previous = self._previous.pop(signum, None)
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
            signal.raise_signal(signum)
            return
        if self.received is None:
            self.received = signum

    def __enter__(self):
        if self.multihost:  # JAX's preemption notifier owns SIGTERM there
            return self
        for s in self.signums:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, previous in self._previous.items():  # None: a handler not set from Python
            signal.signal(s, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()
        return False

    def stop_requested(self, step: int) -> bool:
        if self.received is not None:
            return True
        return self.multihost and _multihost_preemption(step)


def _multihost_preemption(step: int) -> bool:
    from jax.experimental import multihost_utils

    try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
    except RuntimeError:  # preemption service not running
        return False
