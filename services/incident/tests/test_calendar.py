"""Business-time arithmetic of the SLA engine. Pure: no database, no broker.

Every expected instant is written out by hand (in UTC, with the local time and offset in a comment); none is
derived by calling the code under test another way. Dates used (all 2026):

* 2026-01-09 Fri, 2026-01-10 Sat, 2026-01-12 Mon; January is winter time everywhere below.
* Europe/Berlin: 2026-03-29 (Sun) 02:00 CET -> 03:00 CEST (at 01:00 UTC); 2026-10-25 (Sun) 03:00 CEST ->
  02:00 CET (at 01:00 UTC). CET = UTC+1, CEST = UTC+2.
* America/New_York: 2026-03-08 (Sun) 02:00 EST -> 03:00 EDT (at 07:00 UTC); 2026-11-01 (Sun) 02:00 EDT ->
  01:00 EST (at 06:00 UTC). EST = UTC-5, EDT = UTC-4.
* Asia/Kolkata: IST = UTC+05:30 all year.
"""

from __future__ import annotations

import json
import time as wallclock
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from incident.calendar import Calendar, add_business_time, business_seconds_between

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


# --- 24x7 ------------------------------------------------------------------------------------------------


def test_24x7_is_plain_timedelta_arithmetic() -> None:
    cal = Calendar()
    assert cal.kind == "24x7"
    # Saturday night, no working hours to skip.
    assert_utc(add_business_time(utc(2026, 1, 10, 22, 0), 30 * H, cal), utc(2026, 1, 12, 4, 0))
    assert_utc(add_business_time(utc(2026, 1, 10, 22, 0), 0, cal), utc(2026, 1, 10, 22, 0))
    assert_utc(add_business_time(utc(2026, 1, 10, 22, 0), 0.25, cal), utc(2026, 1, 10, 22, 0, 0, 250000))
    assert business_seconds_between(utc(2026, 1, 10, 22, 0), utc(2026, 1, 12, 4, 0), cal) == 30 * H
    assert business_seconds_between(utc(2026, 1, 12), utc(2026, 1, 10), cal) == 0.0


def test_24x7_counts_real_seconds_across_dst_even_with_one_shared_tzinfo() -> None:
    # Python subtracts two datetimes with the same tzinfo as wall-clock times; that must not leak through.
    a = datetime(2026, 3, 29, 0, 0, tzinfo=BERLIN)  # 23:00 UTC on the 28th
    b = datetime(2026, 3, 29, 6, 0, tzinfo=BERLIN)  # 04:00 UTC: only 5 real hours later
    assert business_seconds_between(a, b, Calendar()) == 5 * H
    # The result is in UTC whatever the input's zone.
    assert_utc(add_business_time(a, 5 * H, Calendar()), utc(2026, 3, 29, 4, 0))


# --- business hours in UTC -------------------------------------------------------------------------------


def test_friday_afternoon_crosses_the_weekend() -> None:
    # Fri 16:00 + 4h: 2h on Friday (to 18:00), 2h on Monday from 08:00.
    assert_utc(add_business_time(utc(2026, 1, 9, 16, 0), 4 * H, OFFICE), utc(2026, 1, 12, 10, 0))
    assert business_seconds_between(utc(2026, 1, 9, 16, 0), utc(2026, 1, 12, 10, 0), OFFICE) == 4 * H


def test_start_on_saturday_starts_at_monday_opening() -> None:
    assert_utc(add_business_time(utc(2026, 1, 10, 12, 0), 0, OFFICE), utc(2026, 1, 12, 8, 0))
    assert_utc(add_business_time(utc(2026, 1, 10, 12, 0), 1 * H, OFFICE), utc(2026, 1, 12, 9, 0))
    assert business_seconds_between(utc(2026, 1, 10, 0, 0), utc(2026, 1, 12, 0, 0), OFFICE) == 0.0


def test_start_before_opening_and_after_closing() -> None:
    tuesday = (2026, 1, 13)
    assert_utc(add_business_time(utc(*tuesday, 6, 0), 0, OFFICE), utc(*tuesday, 8, 0))
    assert_utc(add_business_time(utc(*tuesday, 6, 0), 1 * H, OFFICE), utc(*tuesday, 9, 0))
    assert_utc(add_business_time(utc(*tuesday, 19, 0), 0, OFFICE), utc(2026, 1, 14, 8, 0))
    assert_utc(add_business_time(utc(*tuesday, 19, 0), 1 * H, OFFICE), utc(2026, 1, 14, 9, 0))
    assert business_seconds_between(utc(*tuesday, 6, 0), utc(*tuesday, 9, 0), OFFICE) == 1 * H
    assert business_seconds_between(utc(*tuesday, 17, 0), utc(2026, 1, 14, 9, 0), OFFICE) == 2 * H


def test_window_edges() -> None:
    tuesday = (2026, 1, 13)
    # The opening instant is working time; the closing instant is not (the window is [start, end)).
    assert_utc(add_business_time(utc(*tuesday, 8, 0), 0, OFFICE), utc(*tuesday, 8, 0))
    assert_utc(add_business_time(utc(*tuesday, 18, 0), 0, OFFICE), utc(2026, 1, 14, 8, 0))
    assert_utc(add_business_time(utc(*tuesday, 17, 59, 59), 0, OFFICE), utc(*tuesday, 17, 59, 59))
    # A target used up exactly at closing is the closing instant; one second more is the next morning.
    assert_utc(add_business_time(utc(*tuesday, 8, 0), 10 * H, OFFICE), utc(*tuesday, 18, 0))
    assert_utc(add_business_time(utc(*tuesday, 8, 0), 10 * H + 1, OFFICE), utc(2026, 1, 14, 8, 0, 1))
    assert business_seconds_between(utc(*tuesday, 0, 0), utc(2026, 1, 14, 0, 0), OFFICE) == 10 * H


def test_holidays_including_a_monday_after_the_weekend() -> None:
    cal = hours(time(8), time(18), holidays=frozenset({date(2026, 1, 12), date(2026, 1, 14)}))
    # Fri 17:00 + 2h: 1h Friday, Sat/Sun off, Monday the 12th a holiday, 1h on Tuesday.
    assert_utc(add_business_time(utc(2026, 1, 9, 17, 0), 2 * H, cal), utc(2026, 1, 13, 9, 0))
    # Tue 17:00 + 2h: 1h Tuesday, Wednesday the 14th a holiday, 1h on Thursday.
    assert_utc(add_business_time(utc(2026, 1, 13, 17, 0), 2 * H, cal), utc(2026, 1, 15, 9, 0))
    # Starting on the holiday itself.
    assert_utc(add_business_time(utc(2026, 1, 12, 10, 0), 0, cal), utc(2026, 1, 13, 8, 0))
    # Mon 12 to Sat 17: Tue, Thu, Fri count.
    assert business_seconds_between(utc(2026, 1, 12), utc(2026, 1, 17), cal) == 30 * H


def test_custom_weekdays_and_times_with_seconds() -> None:
    # Sunday to Thursday, 09:30-13:15:30.
    cal = hours(time(9, 30), time(13, 15, 30), weekdays=frozenset({6, 0, 1, 2, 3}))
    # Thu 2026-01-15 13:00 + 1h: 15m30s on Thursday, Fri/Sat off, 44m30s on Sunday from 09:30.
    assert_utc(add_business_time(utc(2026, 1, 15, 13, 0), 1 * H, cal), utc(2026, 1, 18, 10, 14, 30))


# --- other time zones ------------------------------------------------------------------------------------


def test_new_york_business_hours() -> None:
    cal = hours(time(9), time(17), tz="America/New_York")  # EST in January: 14:00-22:00 UTC
    # Fri 2026-01-09 16:00 EST (21:00 UTC) + 3h: 1h Friday, 2h Monday from 09:00 EST (14:00 UTC).
    assert_utc(add_business_time(utc(2026, 1, 9, 21, 0), 3 * H, cal), utc(2026, 1, 12, 16, 0))
    # Sat 01:00 UTC is still Friday 20:00 in New York: after closing, so Monday's opening.
    assert_utc(add_business_time(utc(2026, 1, 10, 1, 0), 0, cal), utc(2026, 1, 12, 14, 0))
    # Input in any zone, output in UTC: Mon 10:00 EST + 30m.
    start = datetime(2026, 1, 12, 10, 0, tzinfo=NEW_YORK)
    assert_utc(add_business_time(start, 1800, cal), utc(2026, 1, 12, 15, 30))
    assert business_seconds_between(utc(2026, 1, 12, 0, 0), utc(2026, 1, 13, 0, 0), cal) == 8 * H


def test_kolkata_half_hour_offset() -> None:
    cal = hours(time(9), time(17, 30), tz="Asia/Kolkata")  # 03:30-12:00 UTC
    assert_utc(add_business_time(utc(2026, 1, 12, 0, 0), 0, cal), utc(2026, 1, 12, 3, 30))
    # Mon 17:00 IST (11:30 UTC) + 1h: 30m Monday, 30m Tuesday from 09:00 IST (03:30 UTC).
    assert_utc(add_business_time(utc(2026, 1, 12, 11, 30), 1 * H, cal), utc(2026, 1, 13, 4, 0))
    # Sun 2026-01-11 23:00 UTC is already Monday 04:30 in Kolkata: before opening.
    assert_utc(add_business_time(utc(2026, 1, 11, 23, 0), 0, cal), utc(2026, 1, 12, 3, 30))
    # A fixed-offset input.
    ist = timezone(timedelta(hours=5, minutes=30))
    assert_utc(add_business_time(datetime(2026, 1, 12, 12, 0, tzinfo=ist), 2 * H, cal), utc(2026, 1, 12, 8, 30))
    assert business_seconds_between(utc(2026, 1, 12), utc(2026, 1, 13), cal) == 8.5 * H


def test_holidays_are_local_dates() -> None:
    # 2026-01-13 in Kolkata is 2026-01-12 18:30 UTC to 2026-01-13 18:30 UTC.
    cal = hours(time(0), time(23), tz="Asia/Kolkata", holidays=frozenset({date(2026, 1, 13)}))
    # Mon 12 23:30 IST (18:00 UTC) is after closing; Tue 13 is a holiday; Wed 14 00:00 IST = Tue 18:30 UTC.
    assert_utc(add_business_time(utc(2026, 1, 12, 18, 0), 0, cal), utc(2026, 1, 13, 18, 30))


# --- daylight saving -------------------------------------------------------------------------------------


def test_berlin_spring_forward() -> None:
    day = hours(time(8), time(18), tz="Europe/Berlin", weekdays=ALL_DAYS)
    # Sat 28 is CET: 07:00-17:00 UTC; Sun 29 is CEST: 06:00-16:00 UTC, still 10 real hours.
    assert_utc(add_business_time(utc(2026, 3, 28, 18, 0), 0, day), utc(2026, 3, 29, 6, 0))
    # Sat 16:00 UTC + 11h: 1h Saturday, 10h Sunday; + 12h: 1h more from Monday 08:00 CEST (06:00 UTC).
    assert_utc(add_business_time(utc(2026, 3, 28, 16, 0), 11 * H, day), utc(2026, 3, 29, 16, 0))
    assert_utc(add_business_time(utc(2026, 3, 28, 16, 0), 12 * H, day), utc(2026, 3, 30, 7, 0))
    assert business_seconds_between(utc(2026, 3, 28), utc(2026, 3, 30), day) == 20 * H
    # A window that contains the lost hour: 00:00 CET (23:00 UTC on the 28th) to 06:00 CEST (04:00 UTC).
    night = hours(time(0), time(6), tz="Europe/Berlin", weekdays=ALL_DAYS)
    # (Monday's window opens at 00:00 CEST, 22:00 UTC on the 29th.)
    assert business_seconds_between(utc(2026, 3, 28, 23), utc(2026, 3, 29, 22), night) == 5 * H
    assert business_seconds_between(utc(2026, 3, 28, 23), utc(2026, 3, 29, 23), night) == 6 * H
    assert_utc(add_business_time(utc(2026, 3, 28, 23, 0), 5 * H, night), utc(2026, 3, 29, 4, 0))
    # One more second: Monday 00:00 CEST is 22:00 UTC on the 29th.
    assert_utc(add_business_time(utc(2026, 3, 28, 23, 0), 5 * H + 1, night), utc(2026, 3, 29, 22, 0, 1))


def test_berlin_spring_forward_weekdays_only() -> None:
    # Fri 27 17:00 CET (16:00 UTC) + 2h: 1h Friday, then Monday 30 08:00 CEST (06:00 UTC) + 1h.
    cal = hours(time(8), time(18), tz="Europe/Berlin")
    assert_utc(add_business_time(utc(2026, 3, 27, 16, 0), 2 * H, cal), utc(2026, 3, 30, 7, 0))


def test_berlin_nonexistent_bounds_resolve_to_the_end_of_the_gap() -> None:
    # 02:30 does not exist on 2026-03-29: it becomes 03:00 CEST = 01:00 UTC.
    starts_in_gap = hours(time(2, 30), time(4), tz="Europe/Berlin", weekdays=ALL_DAYS)
    assert_utc(add_business_time(utc(2026, 3, 29, 0, 0), 0, starts_in_gap), utc(2026, 3, 29, 1, 0))
    assert business_seconds_between(utc(2026, 3, 29), utc(2026, 3, 30), starts_in_gap) == 1 * H
    ends_in_gap = hours(time(1), time(2, 30), tz="Europe/Berlin", weekdays=ALL_DAYS)  # 00:00-01:00 UTC
    assert business_seconds_between(utc(2026, 3, 29), utc(2026, 3, 29, 12), ends_in_gap) == 1 * H
    assert_utc(add_business_time(utc(2026, 3, 29, 0, 30), 1800, ends_in_gap), utc(2026, 3, 29, 1, 0))
    # A window wholly inside the gap is empty that day: the next one is Monday 02:15 CEST (00:15 UTC).
    in_gap = hours(time(2, 15), time(2, 45), tz="Europe/Berlin", weekdays=ALL_DAYS)
    assert business_seconds_between(utc(2026, 3, 29), utc(2026, 3, 30), in_gap) == 0.0
    assert_utc(add_business_time(utc(2026, 3, 28, 23, 0), 0, in_gap), utc(2026, 3, 30, 0, 15))


def test_berlin_fall_back() -> None:
    day = hours(time(8), time(18), tz="Europe/Berlin", weekdays=ALL_DAYS)
    # Sat 24 is CEST: 06:00-16:00 UTC; Sun 25 is CET: 07:00-17:00 UTC.
    assert_utc(add_business_time(utc(2026, 10, 24, 15, 0), 2 * H, day), utc(2026, 10, 25, 8, 0))
    assert business_seconds_between(utc(2026, 10, 24), utc(2026, 10, 26), day) == 20 * H
    # A window that contains the repeated hour: 00:00 CEST (22:00 UTC on the 24th) to 06:00 CET (05:00 UTC).
    night = hours(time(0), time(6), tz="Europe/Berlin", weekdays=ALL_DAYS)
    assert business_seconds_between(utc(2026, 10, 24, 22), utc(2026, 10, 25, 22), night) == 7 * H
    assert_utc(add_business_time(utc(2026, 10, 24, 22, 0), 7 * H, night), utc(2026, 10, 25, 5, 0))
    assert_utc(add_business_time(utc(2026, 10, 24, 23, 0), 6.5 * H, night), utc(2026, 10, 25, 23, 30))
    # 6h: Sunday's window ends at 05:00 UTC, and the half hour more runs from Monday 00:00 CET (23:00 UTC).
    assert_utc(add_business_time(utc(2026, 10, 24, 23, 0), 6 * H, night), utc(2026, 10, 25, 5, 0))


def test_berlin_ambiguous_bounds_take_the_first_occurrence() -> None:
    # 02:30 happens twice on 2026-10-25; the first (CEST, 00:30 UTC) is used.
    starts_ambiguous = hours(time(2, 30), time(6), tz="Europe/Berlin", weekdays=ALL_DAYS)  # 00:30-05:00 UTC
    assert_utc(add_business_time(utc(2026, 10, 24, 23, 0), 0, starts_ambiguous), utc(2026, 10, 25, 0, 30))
    assert business_seconds_between(utc(2026, 10, 25), utc(2026, 10, 26), starts_ambiguous) == 4.5 * H
    ends_ambiguous = hours(time(0), time(2, 30), tz="Europe/Berlin", weekdays=ALL_DAYS)  # 22:00-00:30 UTC
    assert business_seconds_between(utc(2026, 10, 24, 12), utc(2026, 10, 25, 12), ends_ambiguous) == 2.5 * H
    # During the second 02:00-02:30 (CET, 01:00-01:30 UTC) the clock is stopped: next is Monday 00:00 CET.
    assert_utc(add_business_time(utc(2026, 10, 25, 1, 10), 0, ends_ambiguous), utc(2026, 10, 25, 23, 0))


def test_new_york_spring_forward() -> None:
    day = hours(time(8), time(18), tz="America/New_York", weekdays=ALL_DAYS)
    # Sat 7 is EST: 13:00-23:00 UTC; Sun 8 is EDT: 12:00-22:00 UTC.
    assert_utc(add_business_time(utc(2026, 3, 7, 22, 0), 2 * H, day), utc(2026, 3, 8, 13, 0))
    assert business_seconds_between(utc(2026, 3, 7), utc(2026, 3, 9), day) == 20 * H
    # The lost hour: 00:00 EST (05:00 UTC) to 06:00 EDT (10:00 UTC) is 5 hours.
    night = hours(time(0), time(6), tz="America/New_York", weekdays=ALL_DAYS)
    # (Monday's window opens at 00:00 EDT, 04:00 UTC on the 9th.)
    assert business_seconds_between(utc(2026, 3, 8, 5), utc(2026, 3, 9, 4), night) == 5 * H
    assert_utc(add_business_time(utc(2026, 3, 8, 5, 0), 5 * H, night), utc(2026, 3, 8, 10, 0))
    # 02:30 does not exist: a 02:30-05:00 window runs from 03:00 EDT (07:00 UTC) to 09:00 UTC.
    gap = hours(time(2, 30), time(5), tz="America/New_York", weekdays=ALL_DAYS)
    assert_utc(add_business_time(utc(2026, 3, 8, 5, 0), 0, gap), utc(2026, 3, 8, 7, 0))
    assert business_seconds_between(utc(2026, 3, 8, 5), utc(2026, 3, 9, 5), gap) == 2 * H


def test_new_york_fall_back() -> None:
    day = hours(time(8), time(18), tz="America/New_York", weekdays=ALL_DAYS)
    # Sat Oct 31 is EDT: 12:00-22:00 UTC; Sun Nov 1 is EST: 13:00-23:00 UTC.
    assert_utc(add_business_time(utc(2026, 10, 31, 21, 0), 2 * H, day), utc(2026, 11, 1, 14, 0))
    assert business_seconds_between(utc(2026, 10, 31), utc(2026, 11, 2), day) == 20 * H
    # The repeated hour: 00:00 EDT (04:00 UTC) to 06:00 EST (11:00 UTC) is 7 hours.
    night = hours(time(0), time(6), tz="America/New_York", weekdays=ALL_DAYS)
    assert business_seconds_between(utc(2026, 11, 1, 4), utc(2026, 11, 2, 4), night) == 7 * H
    assert_utc(add_business_time(utc(2026, 11, 1, 4, 0), 7 * H, night), utc(2026, 11, 1, 11, 0))
    # 01:30 happens twice: the first (EDT, 05:30 UTC) is used, so 01:30-03:00 is 05:30-08:00 UTC.
    fold = hours(time(1, 30), time(3), tz="America/New_York", weekdays=ALL_DAYS)
    assert_utc(add_business_time(utc(2026, 11, 1, 4, 0), 0, fold), utc(2026, 11, 1, 5, 30))
    assert business_seconds_between(utc(2026, 11, 1, 4), utc(2026, 11, 2, 4), fold) == 2.5 * H


def test_gap_at_midnight_and_a_skipped_day() -> None:
    # America/Santiago, 2026-09-06 (Sun): 00:00 -04 -> 01:00 -03 at 04:00 UTC, so midnight does not exist.
    # Saturday's 00:00-06:00 is 04:00-10:00 UTC; Sunday's starts at 01:00 -03 (04:00 UTC), ends 09:00 UTC.
    santiago = hours(time(0), time(6), tz="America/Santiago", weekdays=ALL_DAYS)
    assert_utc(add_business_time(utc(2026, 9, 5, 12, 0), 0, santiago), utc(2026, 9, 6, 4, 0))
    assert business_seconds_between(utc(2026, 9, 5), utc(2026, 9, 6, 12), santiago) == 11 * H
    # Pacific/Apia skipped Fri 2011-12-30: 23:59:59 -10 on the 29th was followed by 00:00 +14 on the 31st
    # (at 10:00 UTC on the 30th). Thu 08:00-18:00 -10 is 18:00 UTC (29th) to 04:00 UTC (30th); the 30th has
    # no window; Sat 31 08:00-18:00 +14 is 18:00 UTC (30th) to 04:00 UTC (31st).
    apia = hours(time(8), time(18), tz="Pacific/Apia", weekdays=ALL_DAYS)
    assert_utc(add_business_time(utc(2011, 12, 29, 18, 0), 10 * H + 1, apia), utc(2011, 12, 30, 18, 0, 1))
    assert business_seconds_between(utc(2011, 12, 29, 12), utc(2011, 12, 31, 12), apia) == 20 * H


# --- longer spans ----------------------------------------------------------------------------------------


def test_business_seconds_between_across_weeks() -> None:
    # Mon 2026-01-05 to Mon 2026-01-26: three full weeks of 5 x 10h.
    assert business_seconds_between(utc(2026, 1, 5), utc(2026, 1, 26), OFFICE) == 150 * H
    # Wed 7 12:00 to Tue 27 10:00: Wed 6 + Thu 10 + Fri 10 + two weeks 100 + Mon 10 + Tue 2.
    assert business_seconds_between(utc(2026, 1, 7, 12), utc(2026, 1, 27, 10), OFFICE) == 138 * H
    with_holiday = hours(time(8), time(18), holidays=frozenset({date(2026, 1, 19), date(2026, 2, 2)}))
    assert business_seconds_between(utc(2026, 1, 7, 12), utc(2026, 1, 27, 10), with_holiday) == 128 * H
    # Berlin, Mon 2026-03-16 to Mon 2026-04-06 across the spring change: 15 days x 10h either side of it.
    berlin = hours(time(8), time(18), tz="Europe/Berlin")
    assert business_seconds_between(utc(2026, 3, 16), utc(2026, 4, 6), berlin) == 150 * H


def test_ninety_days_of_business_time_is_fast() -> None:
    # 90 x 24h = 2160h = 216 days of 10h. 215 = 43 weeks of 5 fill Mon 2026-01-05 .. Fri 2026-10-30;
    # day 216 is Mon 2026-11-02, used up at its 18:00.
    started = wallclock.perf_counter()
    assert_utc(add_business_time(utc(2026, 1, 5, 8, 0), 90 * 24 * H, OFFICE), utc(2026, 11, 2, 18, 0))
    assert business_seconds_between(utc(2026, 1, 5, 8, 0), utc(2026, 11, 2, 18, 0), OFFICE) == 90 * 24 * H
    assert wallclock.perf_counter() - started < 1.0


def test_no_working_time_raises_instead_of_looping() -> None:
    mondays = frozenset(date(2026, 1, 5) + timedelta(weeks=n) for n in range(4 * 53))  # into 2030
    cal = hours(time(8), time(18), weekdays=frozenset({0}), holidays=mondays)
    with pytest.raises(ValueError, match="no working time"):
        add_business_time(utc(2026, 1, 1), 1, cal)
    with pytest.raises(ValueError, match="no working time"):
        add_business_time(utc(2026, 1, 1), 0, cal)
    assert business_seconds_between(utc(2026, 1, 1), utc(2027, 1, 1), cal) == 0.0
    # Once the holidays run out there is time again: the first Monday after them is 2030-01-28.
    assert mondays and max(mondays) == date(2030, 1, 21)
    assert_utc(add_business_time(utc(2029, 6, 1), 0, cal), utc(2030, 1, 28, 8, 0))


# --- consistency -----------------------------------------------------------------------------------------

CALENDARS = [
    Calendar(),
    OFFICE,
    hours(time(8), time(18), tz="Europe/Berlin", holidays=frozenset({date(2026, 3, 30), date(2026, 10, 26)})),
    hours(time(0), time(6), tz="Europe/Berlin", weekdays=ALL_DAYS),
    hours(time(2, 30), time(4), tz="Europe/Berlin", weekdays=ALL_DAYS),
    hours(time(1, 30), time(3), tz="America/New_York", weekdays=ALL_DAYS),
    hours(time(9), time(17, 30), tz="Asia/Kolkata", weekdays=frozenset({6, 0, 1, 2, 3})),
    hours(time(0), time(23, 59, 59), tz="America/New_York", weekdays=frozenset({0, 2, 4, 6})),
]
DURATIONS = [0, 1e-6, 0.5, 1, 59.25, 1800, 3599.999999, 3600, 5 * H, 7 * H, 10 * H, 10 * H + 1, 86400, 200 * H]
# Around both Berlin and New York changes, every 97 minutes (not a divisor of an hour, to hit odd phases).
STARTS = [
    base + timedelta(minutes=97 * n)
    for base in (utc(2026, 3, 6), utc(2026, 3, 27), utc(2026, 10, 23), utc(2026, 10, 30))
    for n in range(0, 3 * 24 * 60 // 97)
]


@pytest.mark.parametrize("cal", CALENDARS, ids=lambda c: f"{c.kind}-{c.timezone}-{c.start}-{c.end}")
def test_add_and_between_are_consistent_and_monotonic(cal: Calendar) -> None:
    # hypothesis is not installed in this workspace, so a deterministic grid.
    for start in STARTS:
        previous = None
        for seconds in DURATIONS:
            deadline = add_business_time(start, seconds, cal)
            assert deadline >= start
            assert deadline.tzinfo is UTC
            assert abs(business_seconds_between(start, deadline, cal) - seconds) <= 1e-6, (start, seconds)
            if previous is not None:
                assert deadline >= previous, (start, seconds)
            previous = deadline


# --- construction, from_dict, to_dict ---------------------------------------------------------------------


def test_round_trip() -> None:
    cal = Calendar(
        kind="business_hours",
        timezone="Europe/Berlin",
        weekdays=frozenset({4, 0, 2}),
        start=time(7, 30),
        end=time(16, 45, 15),
        holidays=frozenset({date(2026, 12, 25), date(2026, 1, 1)}),
    )
    data = cal.to_dict()
    assert data == {
        "kind": "business_hours",
        "timezone": "Europe/Berlin",
        "weekdays": [0, 2, 4],
        "start": "07:30",
        "end": "16:45:15",
        "holidays": ["2026-01-01", "2026-12-25"],
    }
    assert Calendar.from_dict(json.loads(json.dumps(data))) == cal
    assert Calendar.from_dict(Calendar().to_dict()) == Calendar()
    odd = Calendar(start=time(8, 0, 0, 5000), end=time(9))
    assert odd.to_dict()["start"] == "08:00:00.005000"
    assert Calendar.from_dict(odd.to_dict()) == odd


def test_from_dict_short_forms() -> None:
    assert Calendar.from_dict({"kind": "24x7"}) == Calendar()
    assert Calendar.from_dict({"kind": "business_hours"}) == Calendar(kind="business_hours")
    assert Calendar.from_dict(
        {"kind": "business_hours", "timezone": "Asia/Kolkata", "start": "09:00", "end": "17:30:00"}
    ) == Calendar(kind="business_hours", timezone="Asia/Kolkata", start=time(9), end=time(17, 30))
    # Calendars are hashable (usable as cache keys) and lists given to the constructor become frozensets.
    cal = Calendar(kind="business_hours", weekdays=[1, 2], holidays=[date(2026, 1, 1)])  # type: ignore[arg-type]
    assert cal.weekdays == frozenset({1, 2})
    assert cal.holidays == frozenset({date(2026, 1, 1)})
    assert hash(cal) == hash(Calendar(kind="business_hours", weekdays=frozenset({1, 2}), holidays=cal.holidays))


VALID = {
    "kind": "business_hours",
    "timezone": "Europe/Berlin",
    "weekdays": [0, 1, 2, 3, 4],
    "start": "08:00",
    "end": "18:00",
    "holidays": ["2026-12-25"],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "weekdays"}, "kind must be one of"),
        ({"kind": None}, "kind must be one of"),
        ({"kind": ["24x7"]}, "kind must be one of"),
        ({"timezone": "Mars/Olympus"}, "not a known IANA time zone"),
        ({"timezone": "../../etc/passwd"}, "not a known IANA time zone"),
        ({"timezone": ""}, "not a known IANA time zone"),
        ({"timezone": 1}, "timezone must be a string"),
        ({"weekdays": [0, 7]}, "weekdays must be integers"),
        ({"weekdays": [-1]}, "weekdays must be integers"),
        ({"weekdays": ["1"]}, "weekdays must be integers"),
        ({"weekdays": [True]}, "weekdays must be integers"),
        ({"weekdays": [1.0]}, "weekdays must be integers"),
        ({"weekdays": [[1]]}, "weekdays must be a set"),
        ({"weekdays": []}, "weekdays must not be empty"),
        ({"weekdays": "01234"}, "weekdays must be a list"),
        ({"start": "8:00"}, "start must be a string 'HH:MM'"),
        ({"start": "08:00+01:00"}, "start must be a string 'HH:MM'"),
        ({"start": "0800"}, "start must be a string 'HH:MM'"),
        ({"start": 800}, "start must be a string 'HH:MM'"),
        ({"start": "25:00"}, "start is not a valid time"),
        ({"end": "18:60"}, "end is not a valid time"),
        ({"end": "24:00"}, "end is not a valid time"),
        ({"end": "08:00"}, "end .08:00. must be after start .08:00."),
        ({"start": "18:00", "end": "08:00"}, "must be after start"),
        ({"holidays": ["2026-13-01"]}, "holiday is not a valid date"),
        ({"holidays": ["2026-02-30"]}, "holiday is not a valid date"),
        ({"holidays": ["20261225"]}, "'YYYY-MM-DD' strings"),
        ({"holidays": ["2026-12-25T00:00"]}, "'YYYY-MM-DD' strings"),
        ({"holidays": [20261225]}, "'YYYY-MM-DD' strings"),
        ({"holidays": "2026-12-25"}, "holidays must be a list"),
        ({"holiday": ["2026-12-25"]}, "unknown keys \\['holiday'\\]"),
    ],
)
def test_from_dict_rejects(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Calendar.from_dict({**VALID, **change})


def test_from_dict_rejects_a_non_mapping_and_a_missing_kind() -> None:
    assert Calendar.from_dict(VALID).timezone == "Europe/Berlin"
    with pytest.raises(ValueError, match="must be a JSON object"):
        Calendar.from_dict(["kind", "24x7"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a 'kind'"):
        Calendar.from_dict({"timezone": "UTC"})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "8x5"},
        {"timezone": "Nowhere/Special"},
        {"weekdays": frozenset({7})},
        {"weekdays": frozenset()},
        {"start": time(18), "end": time(8)},
        {"start": time(8), "end": time(8)},
        {"start": time(8, tzinfo=UTC)},
        {"start": "08:00"},
        {"holidays": frozenset({datetime(2026, 12, 25, tzinfo=UTC)})},
        {"holidays": frozenset({"2026-12-25"})},
    ],
)
def test_constructor_validates(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="calendar"):
        Calendar(**kwargs)


@pytest.mark.parametrize("cal", [Calendar(), OFFICE], ids=["24x7", "business_hours"])
def test_bad_arguments(cal: Calendar) -> None:
    naive = datetime(2026, 1, 12, 9, 0)
    with pytest.raises(ValueError, match="timezone-aware"):
        add_business_time(naive, 60, cal)
    with pytest.raises(ValueError, match="timezone-aware"):
        business_seconds_between(naive, utc(2026, 1, 13), cal)
    with pytest.raises(ValueError, match="timezone-aware"):
        business_seconds_between(utc(2026, 1, 11), naive, cal)
    for seconds in (-1, -1e-9, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="seconds must be"):
            add_business_time(utc(2026, 1, 12), seconds, cal)
    with pytest.raises(ValueError, match="out of range"):
        add_business_time(utc(9999, 12, 30), 10 * 86400, cal)
