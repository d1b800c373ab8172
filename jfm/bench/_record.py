"""One measured solver setting (:class:`SweepRecord`) and the endpoint error it records.

Errors are measured per point as the Euclidean norm over the event,
``e_i = |x1_hat_i - x1_ref_i|_2``; ``err_max = max_i e_i``, ``err_rms = sqrt(mean_i e_i^2)``.
"""

import dataclasses
import math

import numpy as np
from jaxtyping import ArrayLike


@dataclasses.dataclass(frozen=True)
class SweepRecord:
    """One solver setting on one problem (host-side numbers).

    Attributes:
        problem: the problem's name.
        library: who solved it (``"jfm"``, i.e. diffrax through :func:`jfm.sample_ode`;
            other libraries' runs can be recorded in the same form).
        solver: solver name.
        mode: ``"fixed"`` (``steps``) or ``"adaptive"`` (``tol``).
        steps: the fixed step count, or ``None``.
        tol: ``rtol = atol`` of the adaptive solve, or ``None``.
        nfe: field evaluations per point (mean over points for per-point solves).
        err_max: endpoint error vs the reference, ``max_i e_i`` with
            ``e_i = |x1_hat_i - x1_ref_i|_2`` over the event; NaN if the solve failed.
        err_rms: ``sqrt(mean_i e_i^2)``; NaN if the solve failed.
        time_s: wall time of the solve after compilation (min over repeats), seconds.
        compile_s: time of the first call of this solver and mode (compile + run).
        logp_nfe: NFE of the likelihood solve (mean over points); NaN without a check.
        logp_err_max: ``max |log p_hat - log p|`` over the likelihood points; NaN without
            a check or if that solve failed.
        logp_err_rms: the RMS of ``|log p_hat - log p|``; NaN likewise.
        ref_error: the problem's :attr:`Problem.error_floor`.
    """

    problem: str
    library: str
    solver: str
    mode: str
    steps: int | None
    tol: float | None
    nfe: float
    err_max: float
    err_rms: float
    time_s: float
    compile_s: float
    logp_nfe: float = math.nan
    logp_err_max: float = math.nan
    logp_err_rms: float = math.nan
    ref_error: float = math.nan

    @property
    def setting(self) -> str:
        """``"N=16"`` or ``"tol=1e-06"``."""
        return f"N={self.steps}" if self.mode == "fixed" else f"tol={self.tol:.0e}"


def endpoint_errors(x1: ArrayLike, x1_ref: ArrayLike) -> tuple[float, float]:
    """``(max_i e_i, sqrt(mean_i e_i^2))`` with ``e_i = |x1_i - x1_ref_i|_2``.

    Args:
        x1: ``[B, *event]`` computed endpoints.
        x1_ref: ``[B, *event]`` reference endpoints (same shape).

    Returns:
        Two Python floats.

    Raises:
        ValueError: shapes differ or have no batch axis.

    Examples:
        >>> import jax.numpy as jnp, jfm
        >>> jfm.bench.endpoint_errors(jnp.array([[3.0, 4.0], [0.0, 0.0]]), jnp.zeros((2, 2)))
        (5.0, 3.5355339059327378)
    """
    x1 = np.asarray(x1, np.float64)
    x1_ref = np.asarray(x1_ref, np.float64)
    if x1.shape != x1_ref.shape or x1.ndim < 1:
        raise ValueError(
            f"`x1` and `x1_ref` must have equal shapes [B, *event]; got {x1.shape}, {x1_ref.shape}."
        )
    e = np.sqrt(np.sum((x1 - x1_ref).reshape(x1.shape[0], -1) ** 2, axis=1))
    return float(np.max(e)), float(np.sqrt(np.mean(e**2)))
