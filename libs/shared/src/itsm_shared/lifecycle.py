"""One state machine for every record with a status (incident, problem, change): the edges, the fields a target
state needs, and the next states `GET …/transitions` lists. Each service configures one with its table; a
service with more rules (change's approval gate) extends it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from itsm_shared.errors import Conflict, Invalid
from itsm_shared.schemas import Transition


@dataclass(frozen=True)
class StateMachine:
    noun: str  # "an incident": how messages name the record
    transitions: Mapping[str, frozenset[str]]
    # What moving to a state needs, in the same request or already on the record.
    required: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # The values a required field may take, e.g. {"hold_reason": HoldReason}.
    choices: Mapping[str, type[StrEnum]] = field(default_factory=dict)

    def edges(self, current: str, values: Mapping[str, Any]) -> frozenset[str]:
        """The states a record in `current` (with `values`) may move to."""
        return self.transitions[current]

    def present(self, values: Mapping[str, Any], name: str) -> bool:
        return bool(values.get(name))

    def refusal(self, current: str, target: str, allowed: frozenset[str]) -> Conflict:
        names = ", ".join(sorted(allowed)) or "none: it is final"
        return Conflict(f"{self.noun} cannot go from {current} to {target} (allowed: {names})")

    def needs(self, target: str) -> tuple[str, ...]:
        return self.required.get(target, ())

    def check(self, current: str, target: str, values: Mapping[str, Any]) -> None:
        """409 for an edge the model does not have; 422 when the target's required fields are missing or a
        required field has a value outside its choices. `values` is the record merged with the request."""
        allowed = self.edges(current, values)
        if target not in allowed:
            raise self.refusal(current, target, allowed)
        needed = self.needs(target)
        missing = [f for f in needed if not self.present(values, f)]
        if missing:
            raise Invalid(
                f"moving to {target} needs {', '.join(missing)}",
                errors=[{"loc": ["body", f], "msg": f"required to move to {target}"} for f in missing],
            )
        for name in needed:
            if (options := self.choices.get(name)) is not None and values.get(name) not in set(options):
                raise Invalid(f"unknown {name}", errors=[{"loc": ["body", name], "msg": f"one of {sorted(options)}"}])

    def next_states(self, current: str, values: Mapping[str, Any]) -> list[Transition]:
        return [
            Transition(status=str(goal), required_fields=list(self.needs(goal)))
            for goal in sorted(self.edges(current, values))
        ]
