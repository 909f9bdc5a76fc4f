"""Calendars of the SLA engine as values: construction and its checks, from_dict and to_dict (the JSON form of
an SLA policy's calendar), and the arguments the business-time functions refuse. Pure: no database, no broker."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time
from typing import Any

import pytest
from incident.calendar import Calendar, add_business_time, business_seconds_between

from .calendar_support import OFFICE, utc

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
