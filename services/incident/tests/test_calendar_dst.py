"""Business-time arithmetic of the SLA engine across daylight saving changes (Berlin, New York, a skipped day):
windows that shrink, grow, start in a gap or twice. Pure: no database, no broker.

Every expected instant is written out by hand (in UTC, with the local time and offset in a comment); none is
derived by calling the code under test another way. The dates used: calendar_support.py.
"""

from __future__ import annotations

from datetime import time

from incident.calendar import add_business_time, business_seconds_between

from .calendar_support import ALL_DAYS, H, assert_utc, hours, utc

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
