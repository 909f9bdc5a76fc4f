"""Business-time arithmetic of the SLA engine: 24x7, business hours in UTC and in other time zones, holidays,
longer spans, and adding and measuring agreeing on every calendar. Pure: no database, no broker.

Every expected instant is written out by hand (in UTC, with the local time and offset in a comment); none is
derived by calling the code under test another way. The dates used: calendar_support.py.
"""

from __future__ import annotations

import time as wallclock
from datetime import UTC, date, datetime, time, timedelta, timezone

import pytest
from incident.calendar import Calendar, add_business_time, business_seconds_between

from .calendar_support import ALL_DAYS, BERLIN, NEW_YORK, OFFICE, H, assert_utc, hours, utc

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
