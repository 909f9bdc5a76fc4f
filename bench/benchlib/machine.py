"""The machine a figure was measured on: date, size (cores, memory) and load average."""

from __future__ import annotations

import contextlib
import math
import os
from datetime import UTC, datetime
from pathlib import Path

CPUS = os.cpu_count() or 1


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "n/a"


def memory_gib() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    return math.nan


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def machine_size() -> str:
    return f"{CPUS} cores (nproc), {memory_gib():.1f} GiB RAM"


def machine_line() -> str:
    """Date, machine size and load: the line that goes with every figure."""
    return f"{now_text()}; {machine_size()}; load average {load_average()}"
