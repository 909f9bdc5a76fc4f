"""Business-time arithmetic for SLA clocks.

A :class:`Calendar` says when an SLA clock runs. ``24x7`` runs all the time. ``business_hours`` runs in one
window per working day: every local date that is in ``weekdays`` and not in ``holidays`` contributes the
wall-clock interval ``[start, end)`` in ``timezone``. Each bound is converted to UTC with :mod:`zoneinfo` on
its own date, so a window's real length follows the clock changes: in Europe/Berlin on 2026-03-29 a window
of 08:00-18:00 is 10 real hours, one of 00:00-06:00 is 5.

Wall-clock times that do not exist or exist twice are resolved like this:

* **Nonexistent** (inside a spring-forward gap): the first instant after the gap, i.e. the moment of the
  transition. 02:30 in Berlin on 2026-03-29 becomes 03:00 CEST (01:00 UTC). A window therefore holds exactly
  the instants whose local wall-clock time is in ``[start, end)``: 02:30-04:00 that day is one real hour
  (03:00-04:00 CEST), and a window lying wholly inside the gap is empty.
* **Ambiguous** (inside a fall-back overlap): the first occurrence (``fold=0``). 02:30 in Berlin on
  2026-10-25 becomes 02:30 CEST (00:30 UTC), so 02:30-06:00 that day is 4.5 real hours, and 00:00-02:30 is
  2.5 (the repeated 02:00-02:30 CET is outside it).

With these two rules the local-to-UTC mapping never goes backwards, so windows never overlap, also across
midnight.

Semantics of the two functions (all inputs must be timezone-aware; results are in UTC):

* ``business_seconds_between(a, b, cal)`` is the measure of ``[a, b)`` intersected with the working windows.
* ``add_business_time(start, s, cal)`` is the earliest instant ``t >= start`` at which ``s`` business seconds
  have elapsed and that is inside a window or at a window's end. So with ``s == 0`` a clock that starts out
  of hours starts at the next opening, and a target that is used up exactly at closing time is the closing
  instant, not the next opening. ``s`` is taken to the microsecond (``datetime``'s resolution), so
  ``business_seconds_between(start, add_business_time(start, s, cal), cal)`` is ``s`` within 0.5 µs, and the
  result is monotonic in ``s``.

Pure: no I/O beyond the time-zone data :mod:`zoneinfo` reads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property, lru_cache
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["Calendar", "add_business_time", "business_seconds_between"]

_Kind = Literal["24x7", "business_hours"]

_KINDS: frozenset[str] = frozenset(get_args(_Kind))
_KEYS: frozenset[str] = frozenset({"kind", "timezone", "weekdays", "start", "end", "holidays"})
_TIME_RE = re.compile(r"(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?")
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIDNIGHT = time()

# add_business_time gives up when this many consecutive local days have no working time.
_MAX_IDLE_DAYS = 3 * 366
# Windows a calendar keeps (`_window`): 45 years of dates.
_CACHED_DAYS = 16384


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"calendar timezone {name!r} is not a known IANA time zone (such as 'Europe/Berlin')") from exc


@dataclass(frozen=True)
class Calendar:
    """When an SLA clock runs. Immutable, hashable; validated on construction (``ValueError``)."""

    kind: _Kind = "24x7"
    timezone: str = "UTC"  # IANA name
    weekdays: frozenset[int] = frozenset({0, 1, 2, 3, 4})  # Monday=0 ... Sunday=6
    start: time = time(8, 0)  # local wall-clock start of the working day
    end: time = time(18, 0)  # local wall-clock end of the working day (exclusive), after start
    holidays: frozenset[date] = frozenset()  # local dates with no working time

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind not in _KINDS:
            raise ValueError(f"calendar kind must be one of {sorted(_KINDS)}, not {self.kind!r}")
        if not isinstance(self.timezone, str):
            raise ValueError(f"calendar timezone must be a string, not {type(self.timezone).__name__}")
        _zone(self.timezone)
        # Accept any iterable for the two sets, but store frozensets so the calendar stays hashable.
        for name in ("weekdays", "holidays"):
            value = getattr(self, name)
            if isinstance(value, str | bytes | Mapping):
                raise ValueError(f"calendar {name} must be a set, not {type(value).__name__}")
            try:
                object.__setattr__(self, name, frozenset(value))
            except TypeError as exc:
                raise ValueError(f"calendar {name} must be a set, not {type(value).__name__}") from exc
        for day in self.weekdays:
            if isinstance(day, bool) or not isinstance(day, int) or not 0 <= day <= 6:
                raise ValueError(f"calendar weekdays must be integers 0 (Monday) to 6 (Sunday), got {day!r}")
        if not self.weekdays:
            raise ValueError("calendar weekdays must not be empty")
        for holiday in self.holidays:
            if isinstance(holiday, datetime) or not isinstance(holiday, date):
                raise ValueError(f"calendar holidays must be dates, got {holiday!r}")
        for name in ("start", "end"):
            value = getattr(self, name)
            if not isinstance(value, time):
                raise ValueError(f"calendar {name} must be a time, not {type(value).__name__}")
            if value.tzinfo is not None:
                raise ValueError(f"calendar {name} must be a wall-clock time without tzinfo, got {value!r}")
        if self.end <= self.start:
            end, start = _format_time(self.end), _format_time(self.start)
            raise ValueError(f"calendar end ({end}) must be after start ({start})")

    def __hash__(self) -> int:
        return self._hash

    @cached_property
    def windows(self) -> dict[date, tuple[datetime, datetime] | None]:
        """The working windows of the local dates worked out so far (`_window`)."""
        return {}

    @cached_property
    def _hash(self) -> int:
        """Worked out once: a calendar is a key of the window caches, looked up a dozen times per SLA view."""
        return hash((self.kind, self.timezone, self.weekdays, self.start, self.end, self.holidays))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calendar:
        """Parse the JSON shape ``{"kind": "24x7"}`` or ``{"kind": "business_hours", "timezone": ...,
        "weekdays": [0, ...], "start": "HH:MM", "end": "HH:MM", "holidays": ["YYYY-MM-DD", ...]}``.

        Keys other than ``kind`` are optional (defaults as on the class); unknown keys are an error.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"calendar must be a JSON object, not {type(data).__name__}")
        unknown = set(data) - _KEYS
        if unknown:
            raise ValueError(f"calendar has unknown keys {sorted(map(str, unknown))}; allowed: {sorted(_KEYS)}")
        if "kind" not in data:
            raise ValueError("calendar needs a 'kind' ('24x7' or 'business_hours')")
        kind = data["kind"]
        if not isinstance(kind, str) or kind not in _KINDS:
            raise ValueError(f"calendar kind must be one of {sorted(_KINDS)}, not {kind!r}")
        fields: dict[str, Any] = {"kind": kind}
        if "timezone" in data:
            if not isinstance(data["timezone"], str):
                raise ValueError(f"calendar timezone must be a string, not {data['timezone']!r}")
            fields["timezone"] = data["timezone"]
        if "weekdays" in data:
            weekdays = data["weekdays"]
            if not isinstance(weekdays, list | tuple):
                raise ValueError(f"calendar weekdays must be a list of integers 0-6, not {weekdays!r}")
            fields["weekdays"] = tuple(weekdays)  # __post_init__ checks the elements and makes a frozenset
        for name in ("start", "end"):
            if name in data:
                fields[name] = _parse_time(name, data[name])
        if "holidays" in data:
            holidays = data["holidays"]
            if not isinstance(holidays, list | tuple):
                raise ValueError(f"calendar holidays must be a list of 'YYYY-MM-DD' strings, not {holidays!r}")
            fields["holidays"] = frozenset(_parse_date(item) for item in holidays)
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape, with every key (also for ``24x7``), so that ``from_dict(c.to_dict()) == c``."""
        return {
            "kind": self.kind,
            "timezone": self.timezone,
            "weekdays": sorted(self.weekdays),
            "start": _format_time(self.start),
            "end": _format_time(self.end),
            "holidays": [day.isoformat() for day in sorted(self.holidays)],
        }


def _parse_time(name: str, value: Any) -> time:
    match = _TIME_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"calendar {name} must be a string 'HH:MM' or 'HH:MM:SS', not {value!r}")
    hour, minute, second, fraction = match.groups()
    try:
        return time(int(hour), int(minute), int(second or 0), int((fraction or "0").ljust(6, "0")))
    except ValueError as exc:
        raise ValueError(f"calendar {name} is not a valid time of day: {value!r}") from exc


def _format_time(value: time) -> str:
    if value.second == 0 and value.microsecond == 0:
        return value.isoformat(timespec="minutes")
    return value.isoformat()


def _parse_date(value: Any) -> date:
    if not isinstance(value, str) or _DATE_RE.fullmatch(value) is None:
        raise ValueError(f"calendar holidays must be 'YYYY-MM-DD' strings, got {value!r}")
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"calendar holiday is not a valid date: {value!r}") from exc


# --- arithmetic ------------------------------------------------------------------------------------------


def _as_utc(value: datetime, name: str) -> datetime:
    if isinstance(value, datetime) and value.tzinfo is UTC:  # as the database's driver gives them
        return value
    if not isinstance(value, datetime):
        raise ValueError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")
    # Always compare and subtract in UTC: with one shared tzinfo Python would use wall-clock arithmetic.
    return value.astimezone(UTC)


def _wall(epoch_seconds: int, tz: ZoneInfo) -> datetime:
    return (_EPOCH + timedelta(seconds=epoch_seconds)).astimezone(tz).replace(tzinfo=None)


def _local_to_utc(local: datetime, tz: ZoneInfo) -> datetime:
    """The UTC instant of a naive local wall-clock time (see the module docstring for gaps and folds)."""
    earlier = local.replace(tzinfo=tz, fold=0).utcoffset()
    later = local.replace(tzinfo=tz, fold=1).utcoffset()
    assert earlier is not None  # ZoneInfo always has an offset
    assert later is not None
    if earlier >= later:  # a regular time, or ambiguous: take the first occurrence (fold=0)
        return (local - earlier).replace(tzinfo=UTC)
    # Nonexistent. PEP 495: fold=0 applies the offset from before the gap, fold=1 the one from after it, so
    # the transition lies in (local - later, local - earlier]. Transitions fall on whole UTC seconds: find
    # the first second whose wall clock reads at least `local`, which is the transition itself.
    low = math.floor(((local - later).replace(tzinfo=UTC) - _EPOCH).total_seconds())  # wall clock < local
    high = math.ceil(((local - earlier).replace(tzinfo=UTC) - _EPOCH).total_seconds())  # wall clock >= local
    while high - low > 1:
        middle = (low + high) // 2
        if _wall(middle, tz) >= local:
            high = middle
        else:
            low = middle
    return _EPOCH + timedelta(seconds=high)


def _window(calendar: Calendar, day: date, tz: ZoneInfo) -> tuple[datetime, datetime] | None:
    """The UTC working window of a local date, or None if it has none. Kept by the calendar (a plain dict is a
    quarter of an lru_cache's cost): every read of an incident works out its SLA clocks' elapsed time again, over
    the same days."""
    windows = calendar.windows
    if day in windows:
        return windows[day]
    window = _working_window(calendar, day, tz)
    if len(windows) < _CACHED_DAYS:
        windows[day] = window
    return window


def _working_window(calendar: Calendar, day: date, tz: ZoneInfo) -> tuple[datetime, datetime] | None:
    if day.weekday() not in calendar.weekdays or day in calendar.holidays:
        return None
    opens = _local_to_utc(datetime.combine(day, calendar.start), tz)
    closes = _local_to_utc(datetime.combine(day, calendar.end), tz)
    if closes <= opens:  # wholly inside a spring-forward gap
        return None
    return opens, closes


@lru_cache(maxsize=4096)
def _week(calendar: Calendar, monday: date, tz: ZoneInfo) -> timedelta:
    """The working time of the seven local dates from `monday`, every window counted whole."""
    total = timedelta()
    for offset in range(7):
        window = _window(calendar, monday + timedelta(days=offset), tz)
        if window is not None:
            total += window[1] - window[0]
    return total


@lru_cache(maxsize=65536)
def _weeks(calendar: Calendar, monday: date, weeks: int, tz: ZoneInfo) -> timedelta:
    """The working time of `weeks` whole weeks from `monday`. Cached as well: a clock's elapsed time is worked
    out again at every read, and its run of whole weeks only changes once a week (a list of the oldest open
    incidents, whose clocks have run for years, would otherwise add up a hundred weeks per clock per read)."""
    total = timedelta()
    for n in range(weeks):
        total += _week(calendar, monday + timedelta(weeks=n), tz)
    return total


def _days_from(instant: datetime, tz: ZoneInfo) -> Iterator[date]:
    # Start a day early: cheap insurance, as no earlier day's window can end after `instant`.
    day = instant.astimezone(tz).date() - timedelta(days=1)
    one = timedelta(days=1)
    while True:
        yield day
        day += one


def add_business_time(start: datetime, seconds: float, calendar: Calendar) -> datetime:
    """The instant at which `seconds` of business time have elapsed, counting from `start`.

    `start` must be timezone-aware, `seconds` finite and >= 0 (taken to the microsecond); the result is in
    UTC. With ``seconds == 0`` the result is `start` if it is in working time, else the next opening. A target
    used up exactly at a closing time returns that closing time. ValueError if the calendar has no working time
    for three years from `start`, or if the result would be beyond ``datetime.max``.
    """
    begin = _as_utc(start, "start")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        raise ValueError(f"seconds must be a finite number, got {seconds!r}")
    if seconds < 0:
        raise ValueError(f"seconds must be >= 0, got {seconds!r}")
    try:
        remaining = timedelta(seconds=seconds)
        if calendar.kind == "24x7":
            return begin + remaining
        tz = ZoneInfo(calendar.timezone)  # cached by key; validated by Calendar
        idle_days = 0
        for day in _days_from(begin, tz):
            window = _window(calendar, day, tz)
            if window is None or window[1] <= begin:
                idle_days += 1
                if idle_days > _MAX_IDLE_DAYS:
                    raise ValueError(
                        f"calendar has no working time in the {_MAX_IDLE_DAYS} days after {begin.isoformat()}"
                    )
                continue
            idle_days = 0
            opens, closes = window
            cursor = max(begin, opens)
            available = closes - cursor
            if remaining <= available:
                return cursor + remaining
            remaining -= available
    except OverflowError as exc:
        raise ValueError(f"{seconds!r} business seconds after {begin.isoformat()} is out of range") from exc
    raise AssertionError("unreachable")  # pragma: no cover - the day iterator is endless


def business_seconds_between(a: datetime, b: datetime, calendar: Calendar) -> float:
    """Business seconds in [a, b); 0 if b <= a. Both must be timezone-aware."""
    low = _as_utc(a, "a")
    high = _as_utc(b, "b")
    if high <= low:
        return 0.0
    if calendar.kind == "24x7":
        return (high - low).total_seconds()
    # The measure adds up over [a, cut) and [cut, b) for any cut between them. Cut at the start of b's UTC day:
    # [a, cut) is then the same all day for a clock read again and again (its start and today), so it is cached,
    # and [cut, b) lies in one UTC day, whose working windows are worked out once (`_day_windows`).
    cut = datetime.combine(high.date(), _MIDNIGHT, UTC)  # a quarter of replace(hour=0, ...)'s cost
    try:
        windows = _day_windows(calendar, cut)
    except OverflowError:  # b on the last day datetime can hold
        return _measure(low, high, calendar).total_seconds()
    total = _cached_measure(low, cut, calendar) if low < cut else timedelta()
    begin = max(low, cut)
    for opens, closes in windows:
        if closes > begin and opens < high:
            total += min(high, closes) - max(begin, opens)
    return total.total_seconds()


@lru_cache(maxsize=65536)
def _cached_measure(low: datetime, high: datetime, calendar: Calendar) -> timedelta:
    return _measure(low, high, calendar)


@lru_cache(maxsize=4096)
def _day_windows(calendar: Calendar, midnight: datetime) -> tuple[tuple[datetime, datetime], ...]:
    """The working windows that fall in the UTC day from `midnight`, cut to it, in order: of the local dates
    from the day before to the day after (no other date's window can reach into it)."""
    end = midnight + timedelta(days=1)
    tz = ZoneInfo(calendar.timezone)
    day, last = (midnight - timedelta(days=1)).astimezone(tz).date(), (end + timedelta(days=1)).astimezone(tz).date()
    windows = []
    while day <= last:
        window = _window(calendar, day, tz)
        day += timedelta(days=1)
        if window is not None and window[1] > midnight and window[0] < end:
            windows.append((max(window[0], midnight), min(window[1], end)))
    return tuple(windows)


def _measure(low: datetime, high: datetime, calendar: Calendar) -> timedelta:
    """The working time in [low, high) (UTC, low < high) of a business-hours calendar."""
    tz = ZoneInfo(calendar.timezone)  # cached by key; validated by Calendar
    total = timedelta()
    one_day = timedelta(days=1)
    try:
        # A day late as well: only a fall-back across midnight could put part of the next date before `b`.
        first_day, last_day = low.astimezone(tz).date(), high.astimezone(tz).date() + one_day
        # Dates two or more days inside both ends have their whole window in [a, b): whole weeks of them (from a
        # Monday, for the cache) count a week at a time, so a clock started years ago costs what a recent one does.
        weeks_from, weeks = first_day, 0
        if (last_day - first_day).days > 10:
            first_inner = first_day + 2 * one_day
            weeks_from = first_inner + timedelta(days=-first_inner.weekday() % 7)
            weeks = ((last_day - 3 * one_day - weeks_from).days + 1) // 7
        # Start a day early: cheap insurance, as no earlier day's window can end after `a`.
        day = first_day - one_day
        while day <= last_day:
            if weeks and day == weeks_from:
                total += _weeks(calendar, day, weeks, tz)
                day += timedelta(weeks=weeks)
                continue
            window = _window(calendar, day, tz)
            day += one_day
            if window is None:
                continue
            overlap = min(high, window[1]) - max(low, window[0])
            if overlap > timedelta():
                total += overlap
    except OverflowError as exc:
        raise ValueError(f"[{low.isoformat()}, {high.isoformat()}) is too close to the datetime range's ends") from exc
    return total
