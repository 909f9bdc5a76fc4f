"""SLA clocks (`incident.sla`) on plain SlaClock/SlaPolicy objects with explicit instants. No database.

Every expected instant is written out by hand, in UTC, with the local time in a comment where the calendar is
not in UTC. Dates used (all 2026): 01-09 Fri, 01-10 Sat, 01-12 Mon, 01-13 Tue; 03-27 Fri, 03-29 Sun (Berlin
springs forward at 01:00 UTC, CET UTC+1 -> CEST UTC+2), 03-30 Mon; 10-25 Sun (Berlin falls back at 01:00 UTC).
January: New York is EST (UTC-5), Tokyo is JST (UTC+9) all year.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from incident import sla
from incident.calendar import Calendar, business_seconds_between
from incident.models import ClockKind, ClockState, SlaClock, SlaPolicy

H = 3600.0
RESPONSE, RESOLUTION = ClockKind.RESPONSE, ClockKind.RESOLUTION
ALWAYS: dict[str, Any] = {"kind": "24x7"}


def business(tz: str = "UTC", start: str = "08:00", end: str = "17:00", **extra: Any) -> dict[str, Any]:
    return {"kind": "business_hours", "timezone": tz, "weekdays": [0, 1, 2, 3, 4], "start": start, "end": end} | extra


OFFICE = business()  # UTC, Mon-Fri 08:00-17:00: nine hours a day


def utc(month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, second, us, tzinfo=UTC)


def policy(response_minutes: float, resolution_minutes: float, calendar: dict[str, Any] = ALWAYS) -> SlaPolicy:
    return SlaPolicy(
        priority=3,
        name="test",
        response_minutes=response_minutes,
        resolution_minutes=resolution_minutes,
        calendar=calendar,
    )


def clock(kind: ClockKind, target: SlaPolicy, at: datetime) -> SlaClock:
    return sla.start(uuid.uuid4(), kind, target, at)


# --- start ---------------------------------------------------------------------------------------------------


def test_start_on_24x7_sets_due_warning_and_next_fire() -> None:
    p = policy(60, 240)
    response = clock(RESPONSE, p, utc(1, 12, 9))
    assert response.target_seconds == 3600 and response.state == ClockState.RUNNING and response.pauses == []
    assert response.due_at == utc(1, 12, 10)
    assert response.warning_at == utc(1, 12, 9, 45)  # 75 % of an hour
    assert response.next_fire_at == utc(1, 12, 9, 45)
    resolution = clock(RESOLUTION, p, utc(1, 12, 9))
    assert resolution.target_seconds == 4 * H
    assert (resolution.warning_at, resolution.due_at) == (utc(1, 12, 12), utc(1, 12, 13))
    view = sla.view(response, utc(1, 12, 9, 30))
    assert view["elapsed_seconds"] == 1800 and view["percentage"] == 50.0
    assert (view["paused"], view["breached"], view["met"], view["state"]) == (False, False, False, "running")


def test_fractional_minutes_are_seconds() -> None:
    p = policy(0.05, 0.1)  # 3 s and 6 s
    response, resolution = clock(RESPONSE, p, utc(1, 12, 9)), clock(RESOLUTION, p, utc(1, 12, 9))
    assert response.target_seconds == 3.0 and resolution.target_seconds == 6.0
    assert response.warning_at == utc(1, 12, 9, 0, 2, 250000) and response.due_at == utc(1, 12, 9, 0, 3)
    assert resolution.warning_at == utc(1, 12, 9, 0, 4, 500000) and resolution.due_at == utc(1, 12, 9, 0, 6)


def test_start_out_of_hours_counts_from_the_next_opening() -> None:
    response = clock(RESPONSE, policy(60, 240, OFFICE), utc(1, 10, 10))  # Saturday
    assert response.due_at == utc(1, 12, 9)  # Monday 08:00 + 1 h
    assert response.warning_at == utc(1, 12, 8, 45)
    assert sla.elapsed(response, utc(1, 11, 23)) == 0.0


# --- pause, resume, stop -------------------------------------------------------------------------------------


def test_pause_and_resume_move_due_by_exactly_the_paused_time() -> None:
    s = clock(RESOLUTION, policy(60, 240), utc(1, 12, 9))  # due 13:00
    sla.pause(s, utc(1, 12, 10))
    assert s.state == ClockState.PAUSED and s.next_fire_at is None
    assert s.due_at is None and s.warning_at is None  # no due moment while paused
    assert sla.view(s, utc(1, 12, 11))["paused"] is True
    assert sla.elapsed(s, utc(1, 12, 11, 30)) == 1 * H  # frozen at the pause
    sla.pause(s, utc(1, 12, 10, 30))  # pausing a paused clock changes nothing
    assert s.pauses == [[utc(1, 12, 10).isoformat(), None]]

    sla.resume(s, utc(1, 12, 11, 30))  # paused 1.5 h
    assert s.state == ClockState.RUNNING
    assert s.pauses == [[utc(1, 12, 10).isoformat(), utc(1, 12, 11, 30).isoformat()]]
    assert s.due_at == utc(1, 12, 14, 30) and s.warning_at == utc(1, 12, 13, 30)
    assert s.next_fire_at == utc(1, 12, 13, 30)
    assert sla.elapsed(s, utc(1, 12, 12, 30)) == 2 * H
    sla.resume(s, utc(1, 12, 12))  # resuming a running clock changes nothing
    assert s.due_at == utc(1, 12, 14, 30)

    sla.pause(s, utc(1, 12, 13))
    sla.resume(s, utc(1, 12, 13, 15))  # another 15 minutes
    assert s.due_at == utc(1, 12, 14, 45) and s.warning_at == utc(1, 12, 13, 45)
    assert sla.crossed(s, utc(1, 12, 13, 45)) == ["warning"]

    sla.stop(s, utc(1, 12, 14))
    # Ran 09:00-10:00, 11:30-13:00, 13:15-14:00: 3 h 15 min.
    assert sla.elapsed(s, utc(1, 12, 20)) == 3.25 * H
    assert s.state == ClockState.STOPPED and s.stopped_at == utc(1, 12, 14) and s.next_fire_at is None
    assert s.due_at == utc(1, 12, 14, 45)  # a met clock keeps the due it met
    view = sla.view(s, utc(1, 12, 20))
    assert (view["met"], view["breached"], view["paused"]) == (True, False, False)


def test_stop_while_paused_closes_the_pause() -> None:
    s = clock(RESOLUTION, policy(60, 240), utc(1, 12, 9))
    sla.pause(s, utc(1, 12, 10))
    sla.stop(s, utc(1, 12, 11))
    assert s.pauses == [[utc(1, 12, 10).isoformat(), utc(1, 12, 11).isoformat()]]
    assert s.stopped_at == utc(1, 12, 11) and s.state == ClockState.STOPPED
    assert sla.elapsed(s, utc(1, 13, 9)) == 1 * H
    assert sla.view(s, utc(1, 13, 9))["met"] is True
    sla.pause(s, utc(1, 12, 12))  # a stopped clock neither pauses
    assert s.state == ClockState.STOPPED and len(s.pauses) == 1


def test_clock_paused_across_a_weekend_on_business_hours() -> None:
    # Fri 15:00 + 4 business hours: 2 h on Friday (to 17:00), 2 h on Monday from 08:00.
    s = clock(RESOLUTION, policy(60, 240, OFFICE), utc(1, 9, 15))
    assert s.due_at == utc(1, 12, 10) and s.warning_at == utc(1, 12, 9)
    sla.pause(s, utc(1, 9, 16))  # after 1 h
    assert sla.elapsed(s, utc(1, 10, 12)) == 1 * H
    sla.resume(s, utc(1, 12, 9))  # Monday 09:00: 65 wall-clock hours, 2 business hours (Fri 16-17, Mon 8-9)
    assert s.due_at == utc(1, 12, 12) and s.warning_at == utc(1, 12, 11)
    assert business_seconds_between(utc(1, 12, 10), s.due_at, Calendar.from_dict(OFFICE)) == 2 * H
    assert sla.elapsed(s, utc(1, 12, 9)) == 1 * H


def test_holidays_are_skipped() -> None:
    cal = business(holidays=["2026-01-12"])  # Monday off
    s = clock(RESOLUTION, policy(60, 240, cal), utc(1, 9, 15))
    # 2 h on Friday, Saturday/Sunday/Monday off, 2 h on Tuesday from 08:00.
    assert s.due_at == utc(1, 13, 10) and s.warning_at == utc(1, 13, 9)
    assert sla.elapsed(s, utc(1, 12, 23, 59)) == 2 * H


def test_non_utc_time_zones() -> None:
    ny = business("America/New_York", "09:00", "17:00")  # 14:00-22:00 UTC in January
    s = clock(RESOLUTION, policy(60, 600, ny), utc(1, 12, 13))  # Mon 08:00 EST: before opening
    # Monday 09:00-17:00 EST gives 8 h (14:00-22:00 UTC), Tuesday 09:00 EST (14:00 UTC) + 2 h.
    assert s.due_at == utc(1, 13, 16)  # Tue 11:00 EST
    assert s.warning_at == utc(1, 12, 21, 30)  # 7.5 h: Mon 16:30 EST
    assert sla.elapsed(s, utc(1, 12, 15)) == 1 * H

    tokyo = business("Asia/Tokyo", "09:00", "18:00")
    r = clock(RESPONSE, policy(60, 600, tokyo), utc(1, 11, 23, 30))  # Sunday in UTC, Mon 08:30 JST
    assert r.due_at == utc(1, 12, 1)  # Mon 10:00 JST
    assert r.warning_at == utc(1, 12, 0, 45)  # Mon 09:45 JST


def test_daylight_saving_spring_forward_in_berlin() -> None:
    berlin = business("Europe/Berlin", "08:00", "18:00")
    # Fri 2026-03-27 16:00 CET (15:00 UTC) + 4 h: Friday to 18:00 CET (17:00 UTC) is 2 h; the clocks change on
    # Sunday; Monday opens at 08:00 CEST = 06:00 UTC, + 2 h = 08:00 UTC. (A fixed UTC+1 would say 09:00 UTC.)
    s = clock(RESOLUTION, policy(60, 240, berlin), utc(3, 27, 15))
    assert s.due_at == utc(3, 30, 8)
    assert s.warning_at == utc(3, 30, 7)  # 3 h: Mon 09:00 CEST
    # Paused from Fri 17:00 CET (16:00 UTC) to Mon 09:00 CEST (07:00 UTC): 1 h Friday + 1 h Monday.
    sla.pause(s, utc(3, 27, 16))
    sla.resume(s, utc(3, 30, 7))
    assert s.due_at == utc(3, 30, 10)  # Mon 12:00 CEST: 3 h left from 09:00 CEST

    # A window that contains the change: 00:00-06:00 local on Sun 29 March is 23:00 UTC (28th) to 04:00 UTC,
    # five real hours. 5.5 h from its start: 5 h that night, 0.5 h from Mon 00:00 CEST = Sun 22:00 UTC.
    nights = {"kind": "business_hours", "timezone": "Europe/Berlin", "weekdays": list(range(7)), "start": "00:00",
              "end": "06:00"}  # fmt: skip
    n = clock(RESOLUTION, policy(60, 330, nights), utc(3, 28, 23))
    assert n.due_at == utc(3, 29, 22, 30)  # Mon 00:30 CEST
    assert n.warning_at == utc(3, 29, 3, 7, 30)  # 4 h 7.5 min after 23:00 UTC: 05:07:30 CEST


def test_daylight_saving_fall_back_in_berlin() -> None:
    # 00:00-06:00 local on Sun 25 October is 22:00 UTC (24th) to 05:00 UTC: seven real hours.
    nights = {"kind": "business_hours", "timezone": "Europe/Berlin", "weekdays": list(range(7)), "start": "00:00",
              "end": "06:00"}  # fmt: skip
    n = clock(RESOLUTION, policy(60, 390, nights), utc(10, 24, 22))  # 6.5 h from 00:00 CEST
    assert n.due_at == utc(10, 25, 4, 30)  # 05:30 CET, not 06:30
    assert n.warning_at == utc(10, 25, 2, 52, 30)  # 4.875 h: 03:52:30 CET
    sla.pause(n, utc(10, 25, 0, 30))  # 02:30 CEST, after 2.5 h
    sla.resume(n, utc(10, 25, 1, 30))  # 02:30 CET: the wall clock reads the same, one working hour has passed
    # 4 h left from 01:30 UTC: 3.5 h to 05:00 UTC (06:00 CET), then 0.5 h from Mon 00:00 CET (Sun 23:00 UTC).
    assert n.due_at == utc(10, 25, 23, 30)
    assert n.warning_at == utc(10, 25, 3, 52, 30)  # 2.375 h after 01:30 UTC: 04:52:30 CET


# --- priority change -------------------------------------------------------------------------------------------


def test_retarget_recomputes_from_the_original_start() -> None:
    p2, p1 = policy(30, 480), policy(15, 240)
    r, s = clock(RESPONSE, p2, utc(1, 12, 9)), clock(RESOLUTION, p2, utc(1, 12, 9))
    assert (r.due_at, s.due_at) == (utc(1, 12, 9, 30), utc(1, 12, 17))
    sla.retarget(r, p1, utc(1, 12, 9, 10))
    sla.retarget(s, p1, utc(1, 12, 10))
    assert r.target_seconds == 900 and r.due_at == utc(1, 12, 9, 15) and r.warning_at == utc(1, 12, 9, 11, 15)
    assert s.target_seconds == 4 * H and s.due_at == utc(1, 12, 13) and s.warning_at == utc(1, 12, 12)
    assert s.next_fire_at == utc(1, 12, 12)
    # And back to a longer target: again from 09:00, not from the moment of the change.
    sla.retarget(s, p2, utc(1, 12, 11))
    assert s.due_at == utc(1, 12, 17)


def test_retarget_from_24x7_to_business_hours() -> None:
    s = clock(RESOLUTION, policy(60, 480), utc(1, 9, 15))  # Fri 15:00, 24x7: due Fri 23:00
    assert s.due_at == utc(1, 9, 23)
    sla.retarget(s, policy(60, 240, OFFICE), utc(1, 9, 16))
    # From Fri 15:00 under office hours: 2 h on Friday, 2 h on Monday.
    assert s.calendar == OFFICE
    assert s.due_at == utc(1, 12, 10) and s.warning_at == utc(1, 12, 9)
    assert sla.elapsed(s, utc(1, 10, 12)) == 2 * H  # counted under the new calendar from the start


def test_retarget_to_a_target_already_exceeded_falls_due_at_once() -> None:
    s = clock(RESOLUTION, policy(60, 240, OFFICE), utc(1, 9, 15))  # due Mon 10:00 in office hours
    now = utc(1, 10, 12)  # Saturday noon: 21 h since the start on a 24x7 calendar
    sla.retarget(s, policy(15, 480), now)
    # 8 h of 24x7 from Fri 15:00 ran out at Fri 23:00 (warning at 6 h: 21:00): both are behind us.
    assert s.due_at == utc(1, 9, 23) and s.warning_at == utc(1, 9, 21)
    assert s.next_fire_at is not None and s.next_fire_at <= now
    assert sla.view(s, now)["breached"] is True
    assert sla.crossed(s, now) == ["warning", "breached"]
    assert s.next_fire_at is None and sla.crossed(s, now + timedelta(hours=1)) == []


def test_retarget_past_the_warning_only_fires_the_warning_at_once() -> None:
    s = clock(RESOLUTION, policy(60, 480), utc(1, 12, 9))
    now = utc(1, 12, 15, 30)  # 6.5 h in
    sla.retarget(s, policy(60, 420), now)  # 7 h: warning at 5.25 h (14:15), due 16:00
    assert s.warning_at == utc(1, 12, 14, 15) and s.due_at == utc(1, 12, 16)
    assert sla.crossed(s, now) == ["warning"]
    assert s.next_fire_at == utc(1, 12, 16)


def test_retarget_a_paused_clock() -> None:
    s = clock(RESOLUTION, policy(60, 240), utc(1, 12, 9))
    sla.pause(s, utc(1, 12, 10))
    sla.retarget(s, policy(60, 120), utc(1, 12, 11))
    assert s.state == ClockState.PAUSED and s.target_seconds == 2 * H and s.next_fire_at is None
    sla.resume(s, utc(1, 12, 12))  # 1 h ran before the pause, 1 h is left
    assert s.due_at == utc(1, 12, 13) and s.warning_at == utc(1, 12, 12, 30)


def test_retarget_leaves_a_stopped_clock_alone() -> None:
    r = clock(RESPONSE, policy(60, 240), utc(1, 12, 9))
    sla.stop(r, utc(1, 12, 9, 20))
    sla.retarget(r, policy(15, 240), utc(1, 12, 9, 30))
    assert r.target_seconds == 3600 and r.due_at == utc(1, 12, 10)
    assert sla.view(r, utc(1, 12, 12))["met"] is True


# --- thresholds ------------------------------------------------------------------------------------------------


def test_crossed_fires_warning_then_breach_once_each() -> None:
    r = clock(RESPONSE, policy(60, 240), utc(1, 12, 9))
    assert sla.crossed(r, utc(1, 12, 9, 44, 59)) == []
    assert sla.crossed(r, utc(1, 12, 9, 45)) == ["warning"]
    assert r.warned and not r.breached and r.next_fire_at == utc(1, 12, 10)
    assert sla.crossed(r, utc(1, 12, 9, 50)) == []
    assert sla.crossed(r, utc(1, 12, 10)) == ["breached"]
    assert r.breached and r.next_fire_at is None
    assert sla.crossed(r, utc(1, 12, 11)) == []
    assert r.due_at == utc(1, 12, 10)


def test_crossed_late_fires_both_in_order() -> None:
    r = clock(RESPONSE, policy(60, 240), utc(1, 12, 9))
    assert sla.crossed(r, utc(1, 12, 10, 30)) == ["warning", "breached"]
    assert sla.crossed(r, utc(1, 12, 10, 31)) == []


def test_a_breached_clock_keeps_its_due_moment() -> None:
    # The scheduler fires a little after the due moment, and the clock may pause and resume afterwards: the due
    # moment shown (and sent in the event) stays the instant the target ran out.
    s = clock(RESOLUTION, policy(60, 240), utc(1, 12, 9))
    assert sla.crossed(s, utc(1, 12, 13, 0, 0, 300000)) == ["warning", "breached"]
    assert s.due_at == utc(1, 12, 13) and s.warning_at == utc(1, 12, 12)
    sla.pause(s, utc(1, 12, 14))
    assert s.due_at == utc(1, 12, 13)
    sla.resume(s, utc(1, 12, 15))
    assert s.due_at == utc(1, 12, 13) and s.next_fire_at is None
    assert sla.crossed(s, utc(1, 12, 16)) == []


def test_a_threshold_crossed_before_a_stop_still_fires_once() -> None:
    # The clock stops 0.2 s after its due moment, before the scheduler's next tick: the breach still fires.
    r = clock(RESPONSE, policy(60, 240), utc(1, 12, 9))
    sla.stop(r, utc(1, 12, 10, 0, 0, 200000))
    view = sla.view(r, utc(1, 12, 10, 0, 1))
    assert (view["breached"], view["met"]) == (True, False)
    assert r.next_fire_at == utc(1, 12, 9, 45)  # overdue: the scheduler takes it at once
    assert sla.crossed(r, utc(1, 12, 10, 0, 1)) == ["warning", "breached"]
    assert r.next_fire_at is None and sla.crossed(r, utc(1, 12, 11)) == []
    assert r.due_at == utc(1, 12, 10)

    # Stopped between warning and due: the warning fires, the breach never does.
    met = clock(RESPONSE, policy(60, 240), utc(1, 12, 9))
    sla.stop(met, utc(1, 12, 9, 50))
    assert met.next_fire_at == utc(1, 12, 9, 45)
    assert sla.crossed(met, utc(1, 12, 9, 50, 1)) == ["warning"]
    assert met.next_fire_at is None and sla.crossed(met, utc(1, 12, 12)) == []
    assert sla.view(met, utc(1, 12, 12))["met"] is True

    # Stopped before the warning: nothing ever fires.
    early = clock(RESPONSE, policy(60, 240), utc(1, 12, 9))
    sla.stop(early, utc(1, 12, 9, 10))
    assert early.next_fire_at is None and sla.crossed(early, utc(1, 12, 12)) == []


def test_a_threshold_crossed_before_a_pause_still_fires() -> None:
    r = clock(RESPONSE, policy(60, 240), utc(1, 12, 9))
    sla.pause(r, utc(1, 12, 9, 50))  # warning (09:45) due, not yet fired
    assert r.next_fire_at == utc(1, 12, 9, 45)
    assert sla.crossed(r, utc(1, 12, 9, 50, 1)) == ["warning"]
    assert r.next_fire_at is None  # the breach waits for the resume
    sla.resume(r, utc(1, 12, 10, 50))
    assert r.due_at == utc(1, 12, 11) and r.next_fire_at == utc(1, 12, 11)
    assert sla.crossed(r, utc(1, 12, 11)) == ["breached"]


# --- reopen ------------------------------------------------------------------------------------------------------


def test_reopen_resumes_a_stopped_resolution_clock_the_stopped_time_paused() -> None:
    s = clock(RESOLUTION, policy(60, 240), utc(1, 12, 9))
    sla.stop(s, utc(1, 12, 10))  # resolved after 1 h
    assert sla.view(s, utc(1, 12, 11))["met"] is True and s.next_fire_at is None
    sla.resume(s, utc(1, 12, 12))  # reopened two hours later
    assert s.state == ClockState.RUNNING and s.stopped_at is None
    assert s.pauses == [[utc(1, 12, 10).isoformat(), utc(1, 12, 12).isoformat()]]
    assert sla.elapsed(s, utc(1, 12, 12)) == 1 * H
    assert s.due_at == utc(1, 12, 15) and s.warning_at == utc(1, 12, 14)
    assert sla.crossed(s, utc(1, 12, 14)) == ["warning"]
    sla.stop(s, utc(1, 12, 14, 30))  # 3.5 h in all
    assert sla.elapsed(s, utc(1, 12, 20)) == 3.5 * H and sla.view(s, utc(1, 12, 20))["met"] is True

    # On office hours: resolved Fri 16:00, reopened Mon 09:00: two business hours stopped, due moves by two.
    o = clock(RESOLUTION, policy(60, 240, OFFICE), utc(1, 9, 15))  # due Mon 10:00
    sla.stop(o, utc(1, 9, 16))
    sla.resume(o, utc(1, 12, 9))
    assert o.due_at == utc(1, 12, 12)
