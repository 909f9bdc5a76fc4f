"""What the business-time tests of the SLA engine share (test_calendar_*.py): time zones, calendars, UTC instants.

The dates the tests use (all 2026):

* 2026-01-09 Fri, 2026-01-10 Sat, 2026-01-12 Mon; January is winter time everywhere below.
* Europe/Berlin: 2026-03-29 (Sun) 02:00 CET -> 03:00 CEST (at 01:00 UTC); 2026-10-25 (Sun) 03:00 CEST ->
  02:00 CET (at 01:00 UTC). CET = UTC+1, CEST = UTC+2.
* America/New_York: 2026-03-08 (Sun) 02:00 EST -> 03:00 EDT (at 07:00 UTC); 2026-11-01 (Sun) 02:00 EDT ->
  01:00 EST (at 06:00 UTC). EST = UTC-5, EDT = UTC-4.
* Asia/Kolkata: IST = UTC+05:30 all year.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from incident.calendar import Calendar

H = 3600.0
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")
ALL_DAYS = frozenset(range(7))


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def hours(
    start: time, end: time, tz: str = "UTC", weekdays: frozenset[int] = frozenset(range(5)), **kw: Any
) -> Calendar:
    return Calendar(kind="business_hours", timezone=tz, weekdays=weekdays, start=start, end=end, **kw)


OFFICE = hours(time(8), time(18))  # UTC, Mon-Fri 08:00-18:00


def assert_utc(value: datetime, expected: datetime) -> None:
    assert value == expected
    assert value.utcoffset() == timedelta(0)
    assert value.tzinfo is UTC
