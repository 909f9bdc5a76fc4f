"""Risk from the `risk_assessment` questionnaire, the way ServiceNow's risk calculator combines a weighted
assessment with risk conditions: every source proposes a risk and the highest one wins.

- The weighted score: each answer carries a weight; the sum falls in a band (< 25 low, 25..59 moderate,
  >= 60 high; the maximum is 150).
- The rules: a named condition on the answers that sets a minimum risk whatever the score.

The questions, answers and weights are served at `GET /api/v1/changes/risk-questionnaire` and written down in
the README; change them here only with the README."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from change.models import Risk

ORDER = {Risk.LOW: 0, Risk.MODERATE: 1, Risk.HIGH: 2}

# question -> (the question as asked, {answer: weight})
QUESTIONS: Mapping[str, tuple[str, Mapping[str, int]]] = {
    "business_impact": (
        "How badly is the business hurt if the change fails?",
        {"none": 0, "low": 5, "medium": 15, "high": 30},
    ),
    "affected_users": (
        "How many users are affected while it is implemented?",
        {"none": 0, "few": 5, "many": 15, "all": 25},
    ),
    "outage_required": ("Does the implementation need a service outage?", {"no": 0, "yes": 15}),
    "tested": (
        "Was it tested in an environment like production?",
        {"fully": 0, "partially": 10, "not_tested": 25},
    ),
    "backout": ("Can the change be backed out?", {"simple": 0, "complex": 15, "not_possible": 30}),
    "experience": (
        "Has this kind of change been done successfully before?",
        {"routine": 0, "done_before": 5, "first_time": 15},
    ),
    "business_hours": ("Is it implemented during business hours?", {"no": 0, "yes": 10}),
}

# (lowest score, risk), highest band first.
BANDS: tuple[tuple[int, Risk], ...] = ((60, Risk.HIGH), (25, Risk.MODERATE), (0, Risk.LOW))


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    risk: Risk
    applies: Callable[[Mapping[str, str]], bool]


RULES: tuple[Rule, ...] = (
    Rule(
        "no_backout",
        "a change that cannot be backed out is high risk",
        Risk.HIGH,
        lambda a: a["backout"] == "not_possible",
    ),
    Rule(
        "untested_high_impact",
        "high business impact without full testing is high risk",
        Risk.HIGH,
        lambda a: a["business_impact"] == "high" and a["tested"] != "fully",
    ),
    Rule(
        "outage_for_everyone",
        "an outage affecting all users is high risk",
        Risk.HIGH,
        lambda a: a["outage_required"] == "yes" and a["affected_users"] == "all",
    ),
    Rule(
        "untested",
        "an untested change is at least moderate risk",
        Risk.MODERATE,
        lambda a: a["tested"] == "not_tested",
    ),
    Rule(
        "outage",
        "a change needing an outage is at least moderate risk",
        Risk.MODERATE,
        lambda a: a["outage_required"] == "yes",
    ),
    Rule(
        "first_time",
        "a kind of change never done before is at least moderate risk",
        Risk.MODERATE,
        lambda a: a["experience"] == "first_time",
    ),
)


class RiskAssessment(BaseModel):
    """The answers; every question must be answered."""

    model_config = ConfigDict(extra="forbid")

    business_impact: Literal["none", "low", "medium", "high"]
    affected_users: Literal["none", "few", "many", "all"]
    outage_required: Literal["no", "yes"]
    tested: Literal["fully", "partially", "not_tested"]
    backout: Literal["simple", "complex", "not_possible"]
    experience: Literal["routine", "done_before", "first_time"]
    business_hours: Literal["no", "yes"]


@dataclass(frozen=True)
class Result:
    risk: Risk
    score: int
    score_risk: Risk
    rules: tuple[str, ...]  # the rules that applied


def highest(*risks: Risk) -> Risk:
    return max(risks, key=lambda r: ORDER[r])


def assess(answers: Mapping[str, str]) -> Result:
    score = sum(QUESTIONS[q][1][answers[q]] for q in QUESTIONS)
    score_risk = next(risk for floor, risk in BANDS if score >= floor)
    matched = [rule for rule in RULES if rule.applies(answers)]
    return Result(
        risk=highest(score_risk, *(rule.risk for rule in matched)),
        score=score,
        score_risk=score_risk,
        rules=tuple(rule.name for rule in matched),
    )


def questionnaire() -> dict[str, Any]:
    return {
        "questions": [
            {"name": name, "question": text, "answers": [{"value": a, "weight": w} for a, w in answers.items()]}
            for name, (text, answers) in QUESTIONS.items()
        ],
        "bands": [{"min_score": floor, "risk": str(risk)} for floor, risk in BANDS],
        "rules": [{"name": r.name, "description": r.description, "risk": str(r.risk)} for r in RULES],
        "combination": "the highest risk proposed by the score band or any applying rule",
    }
