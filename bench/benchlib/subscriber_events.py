"""The outside subscriber's events (bench/benchlib/subscriber.py writes one line per incident.created it receives:
arrival time, event time): the event lags, and how many events were published by a moment, as it saw them."""

from __future__ import annotations

import bisect
import contextlib
from pathlib import Path


class Events:
    """Follows the subscriber's file: (arrival, event time) of every incident.created, in arrival order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.arrivals: list[float] = []
        self.times: list[float] = []

    def read(self) -> int:
        with contextlib.suppress(FileNotFoundError), self.path.open("rb") as file:
            file.seek(self.offset)
            chunk = file.read()
            end = chunk.rfind(b"\n") + 1
            self.offset += end
            for line in chunk[:end].decode().splitlines():
                arrived, when, _ = line.split(" ", 2)
                self.arrivals.append(float(arrived))
                self.times.append(float(when))
        return len(self.arrivals)

    def arrived_by(self, at: float) -> int:
        return bisect.bisect_right(self.arrivals, at)

    def lags(self, start: float, end: float) -> list[float]:
        """Lag of every event whose `time` is in [start, end)."""
        return [a - t for a, t in zip(self.arrivals, self.times, strict=True) if start <= t < end]

    def published_between(self, start: float, end: float) -> int:
        return self.arrived_by(end) - self.arrived_by(start)
