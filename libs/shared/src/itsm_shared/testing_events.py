"""Test support for the CloudEvents envelope (CONTRACT §8): the attributes every event carries, extensions
included, and one check of an event against them that the service, library and end-to-end suites share."""

from __future__ import annotations

from typing import Any

# CONTRACT §8: the attributes every event carries (extensions included).
CONTRACT_ATTRIBUTES = (
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "data",
    "actorid",
    "correlationid",
    "sequence",
)


def contract_problems(event: dict[str, Any], *, source: str | None = None) -> list[str]:
    """What the event lacks of CONTRACT §8 (an empty list: nothing). With `source`, the event must come from it
    (e.g. "/itsm/auth")."""
    problems = [f"no {name}" for name in CONTRACT_ATTRIBUTES if event.get(name) in (None, "")]
    if not isinstance(event.get("sequence"), int) or isinstance(event.get("sequence"), bool):
        problems.append(f"sequence {event.get('sequence')!r} is not an integer")
    if event.get("specversion") != "1.0" or event.get("datacontenttype") != "application/json":
        problems.append("not a CloudEvent 1.0 with JSON data")
    if (source is not None and event.get("source") != source) or not isinstance(event.get("data"), dict):
        problems.append("source or data")
    return problems
