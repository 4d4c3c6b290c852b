"""What a benchmark found, in the one form ``make bench`` collects into
``docs/benchmarks.md``: each figure with its baseline (measured in the same run), the
ratio, the goal and whether it was met.

A benchmark prints its own report as before and also records its figures::

    results = Results("spawn")
    results.add("single spawn p50", ours=2.1, baseline=1.9, unit="s",
                baseline_name="bare docker run", goal_ratio=1.15)
    results.write()

``write`` appends one JSON line per figure to the file named by ``DOCKYARD_BENCH_RESULTS``
(set by ``bench/run_all.py``); run by hand, without it, nothing is written.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

RESULTS_ENV = "DOCKYARD_BENCH_RESULTS"


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest sample with ``fraction`` of all at or below
    it (``percentile(times, 0.95)`` is a p95 that one sample in twenty may exceed)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(round(fraction * len(ordered), 9)) - 1)]


def summary(values: list[float], unit: str = "s") -> str:
    """``p50 … p95 … (n=…)`` of seconds, shown in ``unit`` (``s`` or ``ms``)."""
    if not values:
        return "no counted runs"
    scale, width = (1000, 7.1) if unit == "ms" else (1, 6.2)
    return (f"p50 {percentile(values, 0.5) * scale:{width}f} {unit}   "
            f"p95 {percentile(values, 0.95) * scale:{width}f} {unit}   (n={len(values)})")

#: ``lower``: a time or a size, smaller is better (goal: ratio ≤ goal_ratio).
#: ``higher``: a rate, larger is better (goal: ratio ≥ goal_ratio).
Better = Literal["lower", "higher"]


@dataclass
class Figure:
    bench: str
    name: str
    ours: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    better: Better = "lower"
    #: The goal as a ratio to the baseline (``goal_ratio``) or as an absolute bound on
    #: ``ours`` in ``unit`` (``goal_value``); neither when the figure is reported only.
    goal_ratio: float | None = None
    goal_value: float | None = None
    note: str = ""
    ratio: float | None = field(init=False, default=None)
    met: bool | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.baseline:
            self.ratio = self.ours / self.baseline
        checks: list[bool] = []
        if self.goal_ratio is not None and self.ratio is not None:
            checks.append(self.ratio <= self.goal_ratio if self.better == "lower"
                          else self.ratio >= self.goal_ratio)
        if self.goal_value is not None:
            checks.append(self.ours <= self.goal_value if self.better == "lower"
                          else self.ours >= self.goal_value)
        self.met = all(checks) if checks else None

    @property
    def goal(self) -> str:
        sign = "≤" if self.better == "lower" else "≥"
        parts = []
        if self.goal_ratio is not None:
            parts.append(f"{sign} {self.goal_ratio:g}×")
        if self.goal_value is not None:
            # Three significant digits, never an exponent: 41.8 s, 0.498 s, 1,000 runs.
            parts.append(f"{sign} {float(f'{self.goal_value:.3g}'):,g} {self.unit}")
        return " and ".join(parts)


class Results:
    """The figures of one benchmark run."""

    def __init__(self, bench: str) -> None:
        self.bench = bench
        self.figures: list[Figure] = []

    def add(self, name: str, ours: float, *, unit: str, baseline: float | None = None,
            baseline_name: str = "", better: Better = "lower",
            goal_ratio: float | None = None, goal_value: float | None = None,
            note: str = "") -> Figure:
        figure = Figure(self.bench, name, float(ours), unit,
                        None if baseline is None else float(baseline), baseline_name,
                        better, goal_ratio, goal_value, note)
        self.figures.append(figure)
        return figure

    def write(self) -> Path | None:
        """Append the figures to ``$DOCKYARD_BENCH_RESULTS``, if set."""
        target = os.environ.get(RESULTS_ENV)
        if not target:
            return None
        path = Path(target)
        with path.open("a", encoding="utf-8") as out:
            for figure in self.figures:
                out.write(json.dumps(asdict(figure)) + "\n")
        return path


def read_figures(path: Path) -> list[Figure]:
    """The figures written to ``path`` by any number of benchmarks."""
    figures = []
    if not path.exists():
        return figures
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        values = json.loads(line)
        values.pop("ratio", None)
        values.pop("met", None)
        figures.append(Figure(**values))
    return figures
