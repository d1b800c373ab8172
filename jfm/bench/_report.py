"""Tables of sweep records: CSV files and Markdown."""

import csv
import dataclasses
import math
from collections.abc import Sequence

from ._record import SweepRecord

_COLUMNS = [f.name for f in dataclasses.fields(SweepRecord)]


def write_csv(records: Sequence[SweepRecord], path: str) -> None:
    """Write ``records`` to a CSV file, one row per :class:`SweepRecord` (all fields).

    Args:
        records: the records, e.g. from :func:`solver_sweep`.
        path: the file to (over)write; the header row holds the field names, ``None``
            is written as an empty cell.
    """
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(_COLUMNS)
        for r in records:
            w.writerow(["" if v is None else v for v in dataclasses.astuple(r)])


def _fmt(v: float | None, spec: str = ".2e") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def records_to_markdown(records: Sequence[SweepRecord]) -> str:
    """A Markdown table of ``records``, one row per record.

    Errors at or below ``10 x`` the problem's floor (:attr:`SweepRecord.ref_error`) are
    marked ``*``: the reference does not resolve them. Missing values print as ``-``.

    Args:
        records: the records, e.g. from :func:`solver_sweep`.

    Returns:
        The table (header, rule and ``len(records)`` rows), without a final newline.
    """
    head = (
        "| problem | library | solver | setting | NFE | err max | err RMS | time (ms) | "
        "logp NFE | logp err max | logp err RMS |"
    )
    lines = [head, "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        mark = "*" if r.err_max <= 10 * r.ref_error else ""
        lines.append(
            f"| {r.problem} | {r.library} | {r.solver} | {r.setting} | {r.nfe:.0f} | "
            f"{_fmt(r.err_max)}{mark} | {_fmt(r.err_rms)} | {1e3 * r.time_s:.3f} | "
            f"{_fmt(r.logp_nfe, '.0f')} | {_fmt(r.logp_err_max)} | {_fmt(r.logp_err_rms)} |"
        )
    return "\n".join(lines)
