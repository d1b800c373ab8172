"""Work-precision diagrams of sweep records (the only module that imports matplotlib)."""

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._checks import check_name
from ._record import SweepRecord


def plot_work_precision(
    records: Sequence[SweepRecord],
    *,
    x: str = "nfe",
    y: str = "err_rms",
    ax: Any = None,
    title: str | None = None,
) -> Any:
    """A work-precision diagram: error vs cost, one line per (library, solver, mode).

    Log-log axes; fixed steps solid with circles, adaptive dashed with squares, other
    libraries than jfm dotted with triangles; the error floor as a grey line.

    Args:
        records: :class:`SweepRecord` of ONE problem (several libraries may mix).
        x: ``"nfe"``, ``"time_s"`` or ``"logp_nfe"``.
        y: ``"err_rms"``, ``"err_max"``, ``"logp_err_rms"`` or ``"logp_err_max"``.
        ax: a matplotlib Axes to draw into, or ``None`` for a new figure.
        title: axes title (default: the problem's name).

    Returns:
        The matplotlib Axes.

    Raises:
        ValueError: unknown ``x`` or ``y``; ``records`` empty or from several problems.
    """
    import matplotlib.pyplot as plt

    check_name(x, "x", ("nfe", "time_s", "logp_nfe"))
    check_name(y, "y", ("err_rms", "err_max", "logp_err_rms", "logp_err_max"))
    if not records:
        raise ValueError("`records` is empty: nothing to plot.")
    problems = {r.problem for r in records}
    if len(problems) != 1:
        raise ValueError(f"`records` must come from ONE problem; got {sorted(problems)}.")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 5))
    groups: dict[tuple[str, str, str], list[SweepRecord]] = {}
    for r in records:
        groups.setdefault((r.library, r.solver, r.mode), []).append(r)
    cmap = plt.get_cmap("tab20")
    names = sorted({(lib, s) for lib, s, _ in groups})
    for (lib, solver, mode), rs in groups.items():
        # In the order of the setting (N up, tol down), not of x: noisy times stay honest.
        rs = sorted(rs, key=lambda r: r.steps if mode == "fixed" else -r.tol)
        pts = [(getattr(r, x), getattr(r, y)) for r in rs]
        pts = [(a, b) for a, b in pts if np.isfinite(a) and np.isfinite(b) and b > 0 and a > 0]
        if not pts:
            continue
        xs, ys = zip(*pts)
        style = "-o" if mode == "fixed" else "--s"
        if lib != "jfm":
            style = ":^" if mode == "fixed" else ":v"
        ax.loglog(
            xs,
            ys,
            style,
            color=cmap(names.index((lib, solver)) % 20),
            ms=4,
            lw=1.2,
            label=f"{solver} {mode}" + ("" if lib == "jfm" else f" ({lib})"),
        )
    floor = max(r.ref_error for r in records)
    if np.isfinite(floor) and floor > 0 and y.startswith("err"):
        ax.axhline(floor, color="0.6", lw=1, ls="-", zorder=0, label="reference floor")
    ax.set_xlabel({"nfe": "NFE per point", "time_s": "wall time (s)", "logp_nfe": "NFE"}[x])
    ax.set_ylabel(y.replace("_", " "))
    ax.set_title(title or records[0].problem, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return ax
