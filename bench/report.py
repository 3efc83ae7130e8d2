"""Shared output of the benchmarks: one rich table of figures with their targets, the last
JSON line, and the transient progress bars they draw on stderr while measuring.

A benchmark prints its table after measuring (``print_table``, ``verdict``), then its
results as one JSON object on the last line (``print_last_line``: the machine-readable part).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

#: figure name -> (target as shown, met?) where met is None when there is nothing to judge
Checks = Mapping[str, tuple[str, "bool | None"]]


def print_table(title: str, results: Mapping[str, Any], checks: Checks, *, digits: int = 3) -> None:
    """Print every scalar figure of ``results`` with its target and whether it is met."""
    table = Table(title=title)
    for column in ("metric", "value", "target", "met"):
        table.add_column(column)
    for key, value in results.items():
        if isinstance(value, (dict, list)):
            continue
        target, met = checks.get(key, ("", None))
        shown = f"{value:,.{digits}f}" if isinstance(value, float) else str(value)
        table.add_row(key, shown, target, "" if met is None else ("yes" if met else "NO"))
    Console().print(table)


def print_last_line(results: Mapping[str, Any], *, digits: int = 6) -> None:
    """The machine-readable result: one JSON object on stdout's last line, floats rounded."""
    print(json.dumps({key: round(value, digits) if isinstance(value, float) else value for key, value in results.items()}))


def verdict(results: dict[str, Any], targets: Mapping[str, Any], met: Mapping[str, bool | None]) -> None:
    """Add the benchmark's own verdict (DESIGN.md decision 12) to ``results``: ``targets``,
    ``met`` (per target; a target this run cannot measure, None, is left out and named in
    ``not_measured``) and ``meets_targets``, true only when every measured target is met."""
    results["targets"] = dict(targets)
    results["met"] = {name: bool(value) for name, value in met.items() if value is not None}
    results["not_measured"] = [name for name, value in met.items() if value is None]
    results["meets_targets"] = all(results["met"].values())


def progress(console: Console) -> Progress:
    """A transient bar (spinner, description, bar, done/total, elapsed) on ``console``."""
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console, transient=True)
