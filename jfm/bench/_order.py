"""Convergence orders of fixed-step solvers from log-log fits of their errors."""

import math
from collections.abc import Sequence

import numpy as np
from jaxtyping import ArrayLike

from .._checks import check_int, check_name
from ._record import SweepRecord


def fit_order(
    steps: Sequence[int] | ArrayLike,
    errors: Sequence[float] | ArrayLike,
    *,
    floor: float = 0.0,
    max_points: int | None = None,
) -> tuple[float, int]:
    r"""The convergence order ``p`` of a fixed-step method from a log-log fit.

    Least squares of ``log e = c - p log N`` over the points with a finite error above
    ``10 * floor`` (below it the error is the reference's or round-off, not the
    method's), optionally only the ``max_points`` of them with the largest ``N`` (the
    asymptotic regime; coarse steps may be pre-asymptotic).

    Args:
        steps: step counts ``N``.
        errors: the errors at those step counts (same length).
        floor: the error floor of the measurement (e.g. :attr:`Problem.error_floor`).
        max_points: fit only the finest this many valid points (``>= 2``); ``None``: all.

    Returns:
        ``(p, number of points used)``; ``p`` is NaN with fewer than 2 points.

    Raises:
        ValueError: ``steps`` and ``errors`` not 1-d of equal length; a step count
            ``<= 0``; ``max_points < 2``.
        TypeError: ``max_points`` not an int.

    Examples:
        >>> import jfm
        >>> p, n = jfm.bench.fit_order([10, 20, 40], [1e-2, 2.5e-3, 6.25e-4])
        >>> round(p, 6), n
        (2.0, 3)
    """
    n = np.asarray(steps, np.float64)
    e = np.asarray(errors, np.float64)
    if n.ndim != 1 or n.shape != e.shape:
        raise ValueError(
            f"`steps` and `errors` must be 1-d of equal length; got shapes {n.shape}, {e.shape}."
        )
    if np.any(n <= 0):
        raise ValueError(f"`steps` must be positive; got {n}.")
    keep = np.isfinite(e) & (e > 10 * floor) & (e > 0)
    if max_points is not None:
        max_points = check_int(max_points, "max_points", 2)
        finest = np.argsort(-n)
        keep[finest[np.cumsum(keep[finest]) > max_points]] = False
    if keep.sum() < 2:
        return math.nan, int(keep.sum())
    slope = np.polyfit(np.log(n[keep]), np.log(e[keep]), 1)[0]
    return float(-slope), int(keep.sum())


def convergence_orders(
    records: Sequence[SweepRecord], *, metric: str = "err_rms", max_points: int | None = None
) -> list[tuple[str, str, str, float, int]]:
    """Fitted order of every fixed-step sweep in ``records`` (:func:`fit_order`).

    Args:
        records: from :func:`solver_sweep` (any problems and libraries mixed).
        metric: ``"err_rms"`` or ``"err_max"``.
        max_points: passed to :func:`fit_order`.

    Returns:
        ``(problem, library, solver, order, points used)`` per fixed-step sweep, with the
        floor of each record's ``ref_error``.

    Raises:
        ValueError: unknown ``metric``.
    """
    check_name(metric, "metric", ("err_rms", "err_max"))
    groups: dict[tuple[str, str, str], list[SweepRecord]] = {}
    for r in records:
        if r.mode == "fixed":
            groups.setdefault((r.problem, r.library, r.solver), []).append(r)
    out = []
    for (prob, lib, solver), rs in groups.items():
        floor = max(0.0 if math.isnan(r.ref_error) else r.ref_error for r in rs)
        p, used = fit_order(
            [r.steps for r in rs],
            [getattr(r, metric) for r in rs],
            floor=floor,
            max_points=max_points,
        )
        out.append((prob, lib, solver, p, used))
    return out
