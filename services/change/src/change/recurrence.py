"""The recurrence of a blackout window: one RFC 5545 RRULE, within limits that keep every expansion cheap.

A rule is read once (`compile_rule`, cached per rule, start and zone) into an explicit form; every expansion
(`expand`) then walks only the asked range, never from the rule's first occurrence:

- the rule: one FREQ, at most hourly (HOURLY, DAILY, WEEKLY, MONTHLY, YEARLY), each part once, only the parts
  a blackout needs (no BYSECOND; BYMINUTE with one value, so nothing finer than hourly), INTERVAL and COUNT
  bounded, COUNT and UNTIL not both; an occurrence at most `MAX_LENGTH` long;
- the rule must occur regularly: no gap between occurrences longer than a year (or two of its own intervals),
  checked on its first occurrences, so a rule that never or seldom matches (`BYMONTH=2;BYMONTHDAY=30`) is refused;
- an expansion starts at the period boundary of the rule (in its INTERVAL's phase) just before the range, every
  BY part written out so the moved start changes nothing; COUNT is folded into an UNTIL once, when compiled;
- dateutil walks a rule until an occurrence passes its UNTIL, or until year 9999 when none does. The Gregorian
  calendar repeats every 400 years (146,097 days, whole weeks), so each walk runs in a frame moved by a multiple
  of 400 years close to 9999: whatever the rule, the walk past the range is bounded;
- at most `limit` occurrences per expansion.

Dates here are naive wall-clock times in the window's zone (dateutil's arithmetic is wall-clock too); the caller
converts occurrences to instants."""

from __future__ import annotations

import calendar
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from dateutil.rrule import DAILY, HOURLY, MONTHLY, WEEKLY, YEARLY, rrule, rrulestr, weekday

FREQUENCIES = {"HOURLY": HOURLY, "DAILY": DAILY, "WEEKLY": WEEKLY, "MONTHLY": MONTHLY, "YEARLY": YEARLY}
PARTS = (
    "FREQ",
    "INTERVAL",
    "COUNT",
    "UNTIL",
    "BYDAY",
    "BYMONTHDAY",
    "BYMONTH",
    "BYHOUR",
    "BYMINUTE",
    "BYSETPOS",
    "WKST",
)
MAX_INTERVAL = 100
MAX_COUNT = 1000
MAX_LENGTH = timedelta(days=366)  # of one occurrence
MAX_OCCURRENCES = 10_000  # per expansion, unless the caller asks for fewer
# The longest range one expansion covers: beyond it the caller gets the first part only (and is told so).
MAX_SPAN = timedelta(days=5 * 366)
# How far the first occurrences are walked to check that the rule recurs regularly.
PROBE_SPAN = timedelta(days=2 * 366)
# How far a COUNT may reach (give an UNTIL beyond it).
MAX_COUNT_REACH = timedelta(days=100 * 365)

_CYCLE_YEARS = 400  # the Gregorian calendar repeats exactly after 400 years
_LAST_YEAR = 9998  # a frame's range ends before this year, so margins stay within datetime's range
_PERIOD = {
    YEARLY: timedelta(days=366),
    MONTHLY: timedelta(days=31),
    WEEKLY: timedelta(days=7),
    DAILY: timedelta(days=1),
    HOURLY: timedelta(hours=1),
}


class RecurrenceError(ValueError):
    """A rule a blackout window may not have; the message says why, for the client."""


@dataclass(frozen=True, eq=False)
class Rule:
    """A rule in explicit form: every BY part written out, COUNT folded into `until`."""

    freq: Any  # dateutil's frequency constant
    interval: int
    params: dict[str, Any]  # wkst and the BY parts, as rrule() takes them
    dtstart: datetime  # naive wall clock, the window's start
    until: datetime | None  # naive wall clock, inclusive

    def at(self, start: datetime, until: datetime | None) -> rrule:
        return rrule(self.freq, dtstart=start, until=until, interval=self.interval, **self.params)

    @property
    def max_gap(self) -> timedelta:
        return max(timedelta(days=366), 2 * self.interval * _PERIOD[self.freq])


@dataclass(frozen=True)
class Compiled:
    """What `compile_rule` made of a rule: the rule, or why it is refused (cached either way)."""

    rule: Rule | None
    error: str | None


def compile_rule(value: str, start: datetime, end: datetime, tz: ZoneInfo) -> Rule:
    """The window's rule in explicit form, anchored at its start (naive wall clock in `tz`); RecurrenceError when
    the rule breaks a limit. The work is bounded whatever the text; the result is cached."""
    compiled = _compiled(value, start, end, tz.key)
    if compiled.rule is None:
        raise RecurrenceError(compiled.error)
    return compiled.rule


@lru_cache(maxsize=512)
def _compiled(value: str, start: datetime, end: datetime, tz_name: str) -> Compiled:
    try:
        if end - start > MAX_LENGTH:
            raise RecurrenceError(f"a recurring window lasts at most {MAX_LENGTH.days} days")
        parts = _parts(value)
        return Compiled(_explicit(parts, start, ZoneInfo(tz_name)), None)
    except RecurrenceError as exc:
        return Compiled(None, str(exc))


def _parts(value: str) -> dict[str, str]:
    body = value.strip()
    if body.upper().startswith("RRULE:"):
        body = body[len("RRULE:") :]
    if any(c in body for c in "\r\n:"):
        raise RecurrenceError("give one RRULE only (e.g. FREQ=WEEKLY;BYDAY=FR); the window's start is its DTSTART")
    parts: dict[str, str] = {}
    for item in filter(None, body.split(";")):
        name, _, part = item.partition("=")
        name = name.strip().upper()
        if not part.strip():
            raise RecurrenceError(f"invalid RRULE part {item!r}")
        if name in parts:
            raise RecurrenceError(f"{name} appears twice in the RRULE")
        if name not in PARTS:
            raise RecurrenceError(
                f"{name} is not supported in a blackout window's RRULE (supported: {', '.join(PARTS)})"
            )
        parts[name] = part.strip()
    if "FREQ" not in parts:
        raise RecurrenceError("the RRULE needs a FREQ")
    if parts["FREQ"].upper() not in FREQUENCIES:
        raise RecurrenceError("blackout windows recur at most hourly: FREQ is HOURLY, DAILY, WEEKLY, MONTHLY or YEARLY")
    if "COUNT" in parts and "UNTIL" in parts:
        raise RecurrenceError("give COUNT or UNTIL, not both")
    for name, top in (("INTERVAL", MAX_INTERVAL), ("COUNT", MAX_COUNT)):
        if name in parts and not (parts[name].isdigit() and 1 <= int(parts[name]) <= top):
            raise RecurrenceError(f"{name} is a whole number from 1 to {top}")
    if "BYMINUTE" in parts and "," in parts["BYMINUTE"]:
        raise RecurrenceError("blackout windows recur at most hourly: BYMINUTE takes one minute")
    return parts


def _explicit(parts: dict[str, str], start: datetime, tz: ZoneInfo) -> Rule:
    text = ";".join(f"{name}={part}" for name, part in parts.items())
    try:
        parsed = rrulestr(text, dtstart=start.replace(tzinfo=tz))
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise RecurrenceError(f"invalid RRULE: {exc}") from exc
    if not isinstance(parsed, rrule):
        raise RecurrenceError("give one RRULE only")
    return _checked(_rule_of(parsed, start, tz), getattr(parsed, "_count", None))


def _rule_of(parsed: Any, start: datetime, tz: ZoneInfo) -> Rule:
    """The parsed rule's attributes as dateutil applies them (its private state: the public API has no way to
    read them), including those it derives from the start (the weekday of a weekly rule, the day of a monthly
    one, the time of day), so that a rule moved to another start is the same rule."""
    until = parsed._until.astimezone(tz).replace(tzinfo=None) if parsed._until else None
    return Rule(
        freq=parsed._freq,
        interval=parsed._interval,
        params=_by_parts(parsed),
        dtstart=start.replace(microsecond=0),
        until=until,
    )


def _by_parts(parsed: Any) -> dict[str, Any]:
    monthdays = tuple(parsed._bymonthday) + tuple(parsed._bynmonthday)
    weekdays = [weekday(d) for d in parsed._byweekday or ()] + [weekday(d, n) for d, n in parsed._bynweekday or ()]
    return {
        "wkst": parsed._wkst,
        "bysetpos": parsed._bysetpos,
        "bymonth": parsed._bymonth,
        "bymonthday": monthdays or None,
        "byweekday": weekdays or None,
        "byhour": parsed._byhour,
        "byminute": parsed._byminute,
        "bysecond": parsed._bysecond,
    }


def _checked(rule: Rule, count: int | None) -> Rule:
    """Refuse a rule without occurrences or with a gap longer than its `max_gap` (`_probe`); fold a COUNT into
    the UNTIL of its last occurrence, which must come within `MAX_COUNT_REACH`."""
    _probe(rule, count)
    if count is None:
        return rule
    years = _CYCLE_YEARS * max(0, (_LAST_YEAR - _CYCLE_YEARS - rule.dtstart.year) // _CYCLE_YEARS)
    reach = _moved(rule.dtstart, years) + MAX_COUNT_REACH
    walk = rule.at(_moved(rule.dtstart, years), reach)
    last = [occurrence for occurrence, _ in zip(walk, range(count), strict=False)]
    if len(last) < count:
        raise RecurrenceError(f"COUNT={count} reaches more than {MAX_COUNT_REACH.days // 365} years ahead: give UNTIL")
    return replace(rule, until=_moved(last[-1], -years))


def _probe(rule: Rule, count: int | None) -> None:
    """Walk the rule's first occurrences, over `PROBE_SPAN` (or up to its COUNT or UNTIL) plus its longest
    allowed gap, on the same calendar shortly before year 9999 (where dateutil's walk ends even for a rule that
    never matches): at least one occurrence, and no gap longer than `max_gap`."""
    span = PROBE_SPAN + rule.max_gap
    years = _probe_frame(rule.dtstart.year, span.days // 365 + 2)
    start = _moved(rule.dtstart, years)
    until = _moved(rule.until, years) if rule.until else None
    params = rule.params
    if rule.freq == HOURLY and rule.interval == 1:  # one hour a day shows the same days, at 1/24 of the cost
        params = {**params, "byhour": (min(params["byhour"] or (rule.dtstart.hour,)),)}
    walk = rrule(rule.freq, dtstart=start, until=until, count=count, interval=rule.interval, **params)
    previous, seen = start, 0
    for occurrence in walk:
        if occurrence - previous > rule.max_gap:
            raise RecurrenceError(f"the RRULE leaves more than {rule.max_gap.days} days between occurrences")
        previous, seen = occurrence, seen + 1
        if occurrence - start > PROBE_SPAN:
            return  # it recurs regularly as far as the probe looks
    # The walk ended: by its COUNT or UNTIL, or at year 9999 because the rule stopped matching.
    if not seen:
        raise RecurrenceError("the RRULE has no occurrence")
    if count is None and (until is None or until - previous > rule.max_gap):
        raise RecurrenceError(f"the RRULE leaves more than {rule.max_gap.days} days between occurrences")


def _probe_frame(year: int, needed: int) -> int:
    """Years to add to `year` for a year as late as leaves `needed` years before 9999 with the same calendar (the
    weekday of 1 January, leap or not, the same place in the leap cycle), after the last century without a leap
    day (9900), so the walk to 9999 is short. Rules with long gaps need more room: the exact 400-year frame."""
    first, leap = date(year, 1, 1).weekday(), calendar.isleap(year)
    for candidate in range(9999 - needed, 9900, -1):
        same_place = candidate % 4 == year % 4 and calendar.isleap(candidate) == leap
        if same_place and date(candidate, 1, 1).weekday() == first:
            return candidate - year
    return _CYCLE_YEARS * max(0, (_LAST_YEAR - _CYCLE_YEARS - year) // _CYCLE_YEARS)


def expand(rule: Rule, lo: datetime, hi: datetime, limit: int = MAX_OCCURRENCES) -> tuple[list[datetime], bool]:
    """The starts (naive wall clock) of the rule's occurrences in `[lo, hi]`, at most `limit` of them, and whether
    the list was cut (by `limit`, or because the range is longer than `MAX_SPAN`)."""
    cut = hi - lo > MAX_SPAN
    if cut:
        hi = lo + MAX_SPAN
    if rule.until is not None:
        hi = min(hi, rule.until)
    lo = max(lo, rule.dtstart)
    if hi < lo or hi.year > _LAST_YEAR:
        return [], cut
    years = _CYCLE_YEARS * max(0, (_LAST_YEAR - hi.year) // _CYCLE_YEARS)
    found: list[datetime] = []
    for occurrence in rule.at(_moved(rebased(rule, lo), years), _moved(hi, years)):
        start = _moved(occurrence, -years)
        if start < lo:
            continue
        if len(found) == limit:
            return found, True
        found.append(start)
    return found, cut


def rebased(rule: Rule, target: datetime) -> datetime:
    """The latest start for the rule at or before `target` that yields exactly its occurrences from there on: the
    boundary of the rule's period (year, month, week from WKST, day, hour) in its INTERVAL's phase, never before
    the rule's own start."""
    d, step = rule.dtstart, rule.interval
    if target <= d:
        return d

    def phase(periods: int) -> int:
        return periods // step * step

    if rule.freq == YEARLY:
        moved = datetime(d.year + phase(target.year - d.year), 1, 1)
    elif rule.freq == MONTHLY:
        years, month = divmod(d.month - 1 + phase((target.year - d.year) * 12 + target.month - d.month), 12)
        moved = datetime(d.year + years, month + 1, 1)
    elif rule.freq == WEEKLY:
        wkst = int(rule.params["wkst"])

        def week_start(x: datetime) -> datetime:
            return datetime.combine(x.date() - timedelta(days=(x.weekday() - wkst) % 7), time())

        moved = week_start(d) + timedelta(weeks=phase((week_start(target) - week_start(d)).days // 7))
    elif rule.freq == DAILY:
        moved = datetime.combine(d.date() + timedelta(days=phase((target.date() - d.date()).days)), time())
    else:
        hour = d.replace(minute=0, second=0)
        moved = hour + timedelta(hours=phase((target - hour) // timedelta(hours=1)))
    return max(moved, d)


def _moved(value: datetime, years: int) -> datetime:
    """`value` `years` later; a multiple of 400 years keeps the day of the week, leap days and all."""
    return value.replace(year=value.year + years) if years else value
