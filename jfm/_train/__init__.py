"""Training: the state, the pure step factory, the fit loop and its checkpoints.

One concept per file: :mod:`.state` (``TrainState``, ``init_train_state``), :mod:`.step`
(``make_train_step``, ``scan_train_step``), :mod:`.loop` (``fit``, the loop),
:mod:`.guard` (the non-finite guard), :mod:`.interrupt` (stopping on a signal) and
:mod:`.checkpoint` (orbax I/O). This file only re-exports.
"""

from .checkpoint import (
    best_step as best_step,
    latest_step as latest_step,
    restore_checkpoint as restore_checkpoint,
)
from .guard import NonFiniteError as NonFiniteError
from .interrupt import TrainingInterrupted as TrainingInterrupted
from .loop import fit as fit
from .state import TrainState as TrainState, init_train_state as init_train_state
from .step import make_train_step as make_train_step, scan_train_step as scan_train_step

__all__ = [
    "NonFiniteError",
    "TrainState",
    "TrainingInterrupted",
    "best_step",
    "fit",
    "init_train_state",
    "latest_step",
    "make_train_step",
    "restore_checkpoint",
    "scan_train_step",
]
