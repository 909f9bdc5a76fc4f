"""The impact-by-urgency priority matrix (CONTRACT §4, ServiceNow's default), shared by incidents and problems."""

from __future__ import annotations

from collections.abc import Mapping

# impact 1 (high) .. 3 (low), urgency 1 (high) .. 3 (low) -> priority 1 (critical) .. 5 (planning)
MATRIX: Mapping[tuple[int, int], int] = {
    (1, 1): 1,
    (1, 2): 2,
    (2, 1): 2,
    (1, 3): 3,
    (2, 2): 3,
    (3, 1): 3,
    (2, 3): 4,
    (3, 2): 4,
    (3, 3): 5,
}


def priority(impact: int, urgency: int) -> int:
    return MATRIX[(impact, urgency)]
