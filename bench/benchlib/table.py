"""The table a benchmark ends with (figure | this project | bare baseline | ratio | target | met?), printed and
kept in build/bench/ for the combined summary `make bench` prints (benchlib/summary.py)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from benchlib.common import REPO_ROOT
from benchlib.machine import load_average, machine_size, now_text

# Where each benchmark leaves its summary rows; `make bench` prints them all at the end (benchlib/summary.py).
RESULTS_DIR = REPO_ROOT / "build" / "bench"


@dataclass
class Row:
    figure: str
    project: str
    baseline: str = "—"
    ratio: str = "—"
    target: str = "—"
    met: bool | None = None

    @property
    def met_text(self) -> str:
        return "—" if self.met is None else ("yes" if self.met else "**no**")


@dataclass
class Summary:
    """The table a benchmark ends with: figure | this project | bare baseline | ratio | target | met?"""

    bench: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    date: str = field(default_factory=now_text)
    machine: str = field(default_factory=machine_size)
    load_start: str = field(default_factory=load_average)
    load_end: str = ""

    def header(self) -> str:
        return (
            f"{self.bench}: {self.date}; {self.machine}; load average {self.load_start} at the start,"
            f" {self.load_end or load_average()} at the end"
        )

    def add(self, *args: Any, **kwargs: Any) -> None:
        self.rows.append(Row(*args, **kwargs))

    def markdown(self) -> str:
        lines = [
            self.header(),
            "",
            "| figure | this project | bare baseline | ratio | target | met? |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r.figure} | {r.project} | {r.baseline} | {r.ratio} | {r.target} | {r.met_text} |" for r in self.rows
        ]
        lines += [f"{note}" for note in self.notes]
        return "\n".join(lines)

    def finish(self) -> None:
        """Print the table and keep it for `make bench`'s combined summary."""
        self.load_end = load_average()
        print()
        print("== summary ==")
        print(self.markdown(), flush=True)
        with contextlib.suppress(OSError):
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            (RESULTS_DIR / f"{self.bench}.json").write_text(json.dumps(asdict(self), indent=1))
