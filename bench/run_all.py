"""Run every benchmark in ``bench/`` one after another and publish what they found in
``docs/benchmarks.md``: each figure, its baseline from the same run, the ratio, the goal,
whether it was met, the machine (cores, memory, Docker version) and the date.

The benchmarks run one at a time, each in its own process, so that none measures while
another loads the machine. A benchmark that fails or runs out of time is published as
such, with the end of its output; the others still run.

    make bench                      # every benchmark at its full size
    make bench-quick                # each in its --quick mode: a few minutes in all
    .venv/bin/python bench/run_all.py --quick --only spawn,jobs
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.report import RESULTS_ENV, Figure, read_figures  # noqa: E402

#: In the order they run: the quick ones that need no images first.
BENCHES = ("data", "tables", "triggers", "jobs", "pools", "images",
           "spawn", "login_to_lab", "notebook_jobs", "clusters", "scale")
#: The most one benchmark may take before it is stopped and published as timed out.
TIMEOUT_SECONDS = {"quick": 20 * 60, "full": 90 * 60}
DOCUMENT = REPO / "docs" / "benchmarks.md"


@dataclass
class Outcome:
    bench: str
    seconds: float
    exit_code: int | None  # None: timed out
    tail: str


def bench_script(name: str) -> Path:
    return REPO / "bench" / f"{name}.py"


def run_one(name: str, quick: bool, results: Path, timeout: float) -> Outcome:
    command = [sys.executable, str(bench_script(name)), *(["--quick"] if quick else [])]
    print(f"== {name}: {' '.join(command[1:])}", flush=True)
    started = time.monotonic()
    env = {**os.environ, RESULTS_ENV: str(results), "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            exit_code: int | None = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Its fixtures' clean-up runs on SIGTERM (the benchmarks remove what they
            # started in ``finally`` blocks); SIGKILL only if that hangs.
            os.killpg(process.pid, 15)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()
            exit_code = None
        output.seek(0)
        text = output.read()
    print(text, flush=True)
    tail = "\n".join(text.rstrip().splitlines()[-25:])
    return Outcome(name, time.monotonic() - started, exit_code, tail)


# -- the document ----------------------------------------------------------------------------
def machine() -> dict[str, str]:
    memory_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kb = int(line.split()[1])
    try:
        docker_version = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True,
            text=True, timeout=30).stdout.strip() or "not running"
    except (OSError, subprocess.TimeoutExpired):
        docker_version = "not installed"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip() or "unknown"
    return {
        "CPU cores": str(os.cpu_count()),
        "Memory": f"{memory_kb / 1024 / 1024:.1f} GB",
        "Docker engine": docker_version,
        "Kernel": platform.release(),
        "Python": platform.python_version(),
        "Dockyard commit": commit,
    }


def docstring(name: str) -> str:
    """What the benchmark says each side does (its module docstring, without usage)."""
    text = ast.get_docstring(ast.parse(bench_script(name).read_text())) or ""
    kept = [line for line in text.splitlines() if ".venv/bin/python" not in line
            and not line.strip().startswith("make bench")]
    return "\n".join(kept).strip()


def number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    if abs(value) < 1:
        text = f"{value:.3g}"  # three significant digits: 0.000734 s, not 0 s
    else:
        digits = 3 if abs(value) < 10 else 1 if abs(value) < 1000 else 0
        text = f"{value:,.{digits}f}".rstrip("0").rstrip(".") if digits else f"{value:,.0f}"
    return f"{text} {unit}".strip()


def figure_row(figure: Figure) -> str:
    met = {True: "yes", False: "**no**", None: "–"}[figure.met]
    baseline = number(figure.baseline, figure.unit)
    if figure.baseline_name:
        baseline = f"{baseline} ({figure.baseline_name})"
    ratio = "–" if figure.ratio is None else f"{figure.ratio:.2f}×"
    name = figure.name + (f" — {figure.note}" if figure.note else "")
    return (f"| {name} | {number(figure.ours, figure.unit)} | {baseline} | {ratio} "
            f"| {figure.goal or '–'} | {met} |")


def document(figures: list[Figure], outcomes: list[Outcome], quick: bool,
             when: dt.datetime, facts: dict[str, str], provenance: str = "",
             pending: list[str] | None = None) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Every figure is Dockyard against a raw baseline measured in the same run on the same",
        "machine, as a ratio; each benchmark's own description (below) says what each side",
        "does. Written by `make bench" + ("-quick" if quick else "") + "` "
        "(`bench/run_all.py`); run it again to measure your own machine.",
        "",
        f"- **Date:** {when:%Y-%m-%d %H:%M} UTC",
        f"- **Mode:** {'quick (small sizes, a few runs each)' if quick else 'full'}",
        *([f"- **How:** {provenance}"] if provenance else []),
        *[f"- **{key}:** {value}" for key, value in facts.items()],
        "",
        "## Summary",
        "",
        "| Figure | Dockyard | Baseline | Ratio | Goal | Met |",
        "|---|---|---|---|---|---|",
    ]
    by_bench: dict[str, list[Figure]] = {}
    for figure in figures:
        by_bench.setdefault(figure.bench, []).append(figure)
    for outcome in outcomes:
        for figure in by_bench.get(outcome.bench, []):
            lines.append(figure_row(figure).replace("| ", f"| `{outcome.bench}` ", 1))
    failed = [o for o in outcomes if o.exit_code != 0]
    if failed:
        lines += ["", "## Benchmarks that did not finish", ""]
        for outcome in failed:
            why = "timed out" if outcome.exit_code is None else f"exit code {outcome.exit_code}"
            lines += [f"### {outcome.bench}: {why} after {outcome.seconds:.0f} s", "",
                      "```", outcome.tail, "```", ""]
    if pending:
        lines += ["", "## Not measured yet", "",
                  "The run was still going (or was stopped) before these: "
                  + ", ".join(f"`{name}`" for name in pending) + ".", ""]
    lines += ["", "## What each benchmark does", ""]
    for outcome in outcomes:
        took = f", {outcome.seconds:.0f} s" if outcome.seconds else ""
        lines += [f"### {outcome.bench} (`bench/{outcome.bench}.py`{took})",
                  "", docstring(outcome.bench), ""]
    return "\n".join(lines).rstrip() + "\n"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark's --quick mode")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--output", type=Path, default=DOCUMENT)
    parser.add_argument("--figures", type=Path, nargs="+", default=[],
                        help="write the document from figures recorded earlier (files of "
                             f"${RESULTS_ENV}) instead of running the benchmarks")
    parser.add_argument("--provenance", default="",
                        help="with --figures: a sentence saying how they were measured")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(BENCHES)
    unknown = [n for n in names if not bench_script(n).exists()]
    if unknown:
        parser.error(f"no such benchmark: {', '.join(unknown)} (have: {', '.join(BENCHES)})")
    when = dt.datetime.now(dt.UTC)
    if args.figures:
        figures = [f for path in args.figures for f in read_figures(path)]
        recorded = {f.bench for f in figures}
        outcomes = [Outcome(name, 0.0, 0, "") for name in names if name in recorded]
        write(args.output, document(figures, outcomes, args.quick, when, machine(),
                                    args.provenance))
    else:
        timeout = TIMEOUT_SECONDS["quick" if args.quick else "full"]
        facts = machine()
        with tempfile.TemporaryDirectory() as scratch:
            results = Path(scratch) / "figures.jsonl"
            outcomes = []
            for index, name in enumerate(names):
                outcomes.append(run_one(name, args.quick, results, timeout))
                # After each benchmark, so that a long run stopped half way still leaves
                # what it measured.
                write(args.output, document(read_figures(results), outcomes, args.quick,
                                            when, facts, pending=names[index + 1:]))
    print(f"\nwrote {args.output}")
    return 0 if all(o.exit_code == 0 for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
