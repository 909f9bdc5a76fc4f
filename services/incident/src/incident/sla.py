"""SLA clocks: start, pause, resume, stop, retarget, and the thresholds the scheduler fires."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from incident.calendar import Calendar, add_business_time, business_seconds_between
from incident.models import ClockKind, ClockState, SlaClock, SlaPolicy

WARNING_FRACTION = 0.75


def calendar_of(clock: SlaClock) -> Calendar:
    return Calendar.from_dict(clock.calendar)


def _pauses(clock: SlaClock) -> Iterator[tuple[datetime, datetime | None]]:
    for start, end in clock.pauses:
        assert start is not None
        yield datetime.fromisoformat(start), datetime.fromisoformat(end) if end else None


def elapsed(clock: SlaClock, now: datetime) -> float:
    """Business seconds the clock has run by `now`, under its current calendar."""
    cal = calendar_of(clock)
    end = clock.stopped_at or now
    total = business_seconds_between(clock.started_at, end, cal)
    for start, stop in _pauses(clock):
        total -= business_seconds_between(start, min(stop or end, end), cal)
    return max(total, 0.0)


def _schedule(clock: SlaClock, now: datetime) -> None:
    """Recompute due and warning moments and the scheduler's next wake-up from the clock's state."""
    if clock.state != ClockState.RUNNING:
        clock.due_at = clock.due_at if clock.state == ClockState.STOPPED else None
        clock.warning_at = None if clock.state == ClockState.PAUSED else clock.warning_at
        clock.next_fire_at = None
        return
    cal = calendar_of(clock)
    spent = elapsed(clock, now)
    # A threshold already behind us falls due now, so the scheduler fires it at once.
    clock.due_at = add_business_time(now, clock.target_seconds - spent, cal) if spent < clock.target_seconds else now
    warn_after = WARNING_FRACTION * clock.target_seconds
    clock.warning_at = add_business_time(now, warn_after - spent, cal) if spent < warn_after else now
    pending = [t for t, done in ((clock.warning_at, clock.warned), (clock.due_at, clock.breached)) if not done]
    clock.next_fire_at = min(pending) if pending else None


def start(incident_id: uuid.UUID, kind: ClockKind, policy: SlaPolicy, now: datetime) -> SlaClock:
    minutes = policy.response_minutes if kind == ClockKind.RESPONSE else policy.resolution_minutes
    clock = SlaClock(
        incident_id=incident_id,
        kind=kind,
        target_seconds=minutes * 60.0,
        calendar=policy.calendar,
        started_at=now,
    )
    _schedule(clock, now)
    return clock


def pause(clock: SlaClock, now: datetime) -> None:
    if clock.state != ClockState.RUNNING:
        return
    clock.pauses = [*clock.pauses, [now.isoformat(), None]]
    clock.state = ClockState.PAUSED
    _schedule(clock, now)


def resume(clock: SlaClock, now: datetime) -> None:
    """Resume a paused clock, or restart a stopped resolution clock when its incident is reopened: the time
    it was stopped counts as paused."""
    if clock.state == ClockState.PAUSED:
        *done, (since, _) = clock.pauses
        clock.pauses = [*done, [since, now.isoformat()]]
    elif clock.state == ClockState.STOPPED and clock.stopped_at is not None:
        clock.pauses = [*clock.pauses, [clock.stopped_at.isoformat(), now.isoformat()]]
        clock.stopped_at = None
    else:
        return
    clock.state = ClockState.RUNNING
    _schedule(clock, now)


def stop(clock: SlaClock, now: datetime) -> None:
    if clock.state == ClockState.STOPPED:
        return
    if clock.state == ClockState.PAUSED:
        *done, (since, _) = clock.pauses
        clock.pauses = [*done, [since, now.isoformat()]]
    clock.state = ClockState.STOPPED
    clock.stopped_at = now
    clock.breached = clock.breached or elapsed(clock, now) >= clock.target_seconds
    _schedule(clock, now)


def retarget(clock: SlaClock, policy: SlaPolicy, now: datetime) -> None:
    """A priority change: the new target and calendar apply from the clock's original start."""
    if clock.state == ClockState.STOPPED:
        return
    minutes = policy.response_minutes if clock.kind == ClockKind.RESPONSE else policy.resolution_minutes
    clock.target_seconds = minutes * 60.0
    clock.calendar = policy.calendar
    _schedule(clock, now)


def crossed(clock: SlaClock, now: datetime) -> list[str]:
    """Thresholds due by `now` and not yet fired, marked fired: 'warning', then 'breached'."""
    fired: list[str] = []
    if clock.state != ClockState.RUNNING:
        clock.next_fire_at = None
        return fired
    if not clock.warned and clock.warning_at is not None and clock.warning_at <= now:
        clock.warned = True
        fired.append("warning")
    if not clock.breached and clock.due_at is not None and clock.due_at <= now:
        clock.breached = True
        clock.warned = True
        fired.append("breached")
    _schedule(clock, now)
    return fired


def view(clock: SlaClock, now: datetime) -> dict[str, Any]:
    spent = elapsed(clock, now)
    return {
        "target_seconds": clock.target_seconds,
        "due_at": clock.due_at,
        "elapsed_seconds": round(spent, 3),
        "percentage": round(100 * spent / clock.target_seconds, 2) if clock.target_seconds else None,
        "state": clock.state,
        "paused": clock.state == ClockState.PAUSED,
        "breached": clock.breached or spent >= clock.target_seconds,
        "met": clock.state == ClockState.STOPPED and not clock.breached,
        "started_at": clock.started_at,
        "stopped_at": clock.stopped_at,
    }
