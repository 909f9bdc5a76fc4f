"""The change calendar as iCalendar (RFC 5545), built with the icalendar library, for calendar clients that
subscribe to it: one VEVENT per change (stable UID, SEQUENCE = the RFC's version, so an update replaces the
event) and one per blackout occurrence, all in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from icalendar import Calendar, Event

from change.models import Status
from change.schemas import CalendarRead

CONFIRMED = frozenset({Status.SCHEDULED, Status.IMPLEMENT, Status.REVIEW, Status.CLOSED})
UID_DOMAIN = "change.itsm"


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def render(calendar: CalendarRead, *, now: datetime) -> bytes:
    cal = Calendar()
    cal.add("prodid", "-//ITSM//Change calendar//EN")
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("method", "PUBLISH")
    cal.add("x-wr-calname", "Change schedule")
    cal.add("x-wr-caldesc", "Changes and blackout windows")
    # How often subscribers should refresh (RFC 7986, and the older Apple/Microsoft name).
    cal.add("refresh-interval", timedelta(minutes=15), parameters={"VALUE": "DURATION"})
    cal.add("x-published-ttl", "PT15M")
    for change in calendar.changes:
        event = Event()
        event.add("uid", f"{change.id}@{UID_DOMAIN}")
        event.add("dtstamp", _utc(now))
        event.add("dtstart", _utc(change.planned_start))
        event.add("dtend", _utc(change.planned_end))
        event.add("summary", f"{change.number}: {change.title}")
        event.add(
            "description",
            f"{change.type} change, status {change.status}, risk {change.risk or 'not assessed'}\n"
            f"Configuration items: {', '.join(change.configuration_items) or 'none'}",
        )
        event.add("location", ", ".join(change.configuration_items))
        event.add("status", "CONFIRMED" if change.status in CONFIRMED else "TENTATIVE")
        event.add("categories", ["CHANGE", change.type.upper()])
        event.add("sequence", change.version)
        event.add("transp", "OPAQUE")
        event.add("x-itsm-change-number", change.number)
        event.add("x-itsm-change-status", change.status)
        cal.add_component(event)
    for blackout in calendar.blackout_windows:
        event = Event()
        event.add("uid", f"blackout-{blackout.id}-{_utc(blackout.start):%Y%m%dT%H%M%SZ}@{UID_DOMAIN}")
        event.add("dtstamp", _utc(now))
        event.add("dtstart", _utc(blackout.start))
        event.add("dtend", _utc(blackout.end))
        event.add("summary", f"Blackout: {blackout.name}")
        scope = ", ".join(blackout.configuration_items) or "all configuration items"
        event.add("description", f"No changes ({scope}); time zone {blackout.timezone}")
        event.add("status", "CONFIRMED")
        event.add("categories", ["BLACKOUT"])
        event.add("transp", "OPAQUE")
        event.add("x-itsm-blackout-window-id", str(blackout.id))
        cal.add_component(event)
    data: bytes = cal.to_ical()
    return data
