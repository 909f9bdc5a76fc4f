"""The combined summary `make bench` prints at the end: the table each benchmark left in build/bench/.

`python bench/benchlib/summary.py [NAMES...]`: one table (figure | this project | bare baseline | ratio |
target | met?) with the date, machine size and load average, ready to paste into the README or an issue.
Only the benchmarks that wrote a table (bench/incident_create.py, bench/incident_list.py) appear in it; the
others print their figures in their own output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib.machine import machine_line
from benchlib.table import RESULTS_DIR, Row, Summary

ORDER = ("incident_create", "incident_list")


def load(path: Path) -> Summary:
    data: dict[str, Any] = json.loads(path.read_text())
    rows = [Row(**raw) for raw in data.pop("rows")]
    return Summary(**data, rows=rows)


def main(argv: list[str]) -> int:
    found = {p.stem: p for p in sorted(RESULTS_DIR.glob("*.json"))}
    names = argv or [*[n for n in ORDER if n in found], *[n for n in found if n not in ORDER]]
    tables = [load(found[n]) for n in names if n in found]
    print()
    print("== make bench: summary ==")
    if not tables:
        print(f"no summary tables in {RESULTS_DIR}")
        return 0
    print(f"now: {machine_line()}")
    for table in tables:
        print(table.header())
    print()
    print("| figure | this project | bare baseline | ratio | target | met? |")
    print("|---|---|---|---|---|---|")
    for table in tables:
        for r in table.rows:
            print(f"| {r.figure} | {r.project} | {r.baseline} | {r.ratio} | {r.target} | {r.met_text} |")
    for table in tables:
        for note in table.notes:
            if note:
                print(f"{table.bench}: {note}")
    met = [r.met for table in tables for r in table.rows]
    print()
    print(f"targets met: {sum(1 for m in met if m)} of {sum(1 for m in met if m is not None)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
