"""The type filter of the log's queries: the patterns `type=` accepts and those it refuses."""

from __future__ import annotations

from typing import Any

import pytest
from audit import queries

# ---------------------------------------------------------------- type filter


@pytest.mark.parametrize(
    ("pattern", "parsed"),
    [
        ("incident.created", ("exact", "itsm.incident.created")),
        ("itsm.incident.created", ("exact", "itsm.incident.created")),
        ("incident.*", ("prefix", "itsm.incident.")),
        ("itsm.incident.*", ("prefix", "itsm.incident.")),
        ("*", None),
    ],
)
def test_type_patterns(pattern: str, parsed: Any) -> None:
    assert queries.parse_type_pattern(pattern) == parsed


@pytest.mark.parametrize("pattern", ["incident.%", "Incident.created", "incident.*.x", "", "incident created"])
def test_malformed_type_patterns_are_refused(pattern: str) -> None:
    from itsm_shared.errors import Invalid

    with pytest.raises(Invalid):
        queries.parse_type_pattern(pattern)
