"""Standard-change templates: the catalogue of pre-approved, low-risk changes that change managers keep (as in
ServiceNow's standard change catalogue), and the rules of a standard change (issue #11, point 9).

A standard change skips the CAB because change management approved the way it is done, once, as a template. So a
standard change is raised from an active template (its plans are the template's, its configuration items among
the template's when the template names any, its risk low), or by a change manager, who answers for it; a writer
cannot make an RFC standard by declaring it. Templates are versioned and published through the shared write path
(`TEMPLATES`), without history rows."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from itsm_shared.auth import Principal, Role
from itsm_shared.edits import FieldEdits
from itsm_shared.errors import Conflict, Forbidden, Invalid, NotFound
from itsm_shared.pagination import Sort, keyset, page_of
from itsm_shared.records import Event
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from change.models import TEMPLATES, ChangeRequest, ChangeType, Risk, StandardChangeTemplate
from change.schemas import TemplateCreate, TemplateRead, TemplateUpdate

SORTS = {"created_at": StandardChangeTemplate.created_at, "name": StandardChangeTemplate.name}
PLANS = ("implementation_plan", "backout_plan", "test_plan")
# The fields of a standard change its template governs: a write touching one is checked again.
GOVERNED = frozenset({"type", "standard_template_id", *PLANS, "configuration_items", "risk"})


def _invalid(field: str, message: str) -> Invalid:
    return Invalid(message, errors=[{"loc": ["body", field], "msg": message}])


# ---------------------------------------------------------------- the catalogue


def require_change_manager(actor: Principal) -> None:
    if not actor.has(Role.CHANGE_MANAGER):
        raise Forbidden("standard-change templates are written by change managers")


def render(template: StandardChangeTemplate) -> TemplateRead:
    return TemplateRead.model_validate(template, from_attributes=True)


def _data(template: StandardChangeTemplate) -> dict[str, Any]:
    return render(template).model_dump(mode="json")


async def get_template(
    session: AsyncSession, template_id: uuid.UUID, *, for_update: bool = False
) -> StandardChangeTemplate:
    return await TEMPLATES.load(session, template_id, for_update=for_update)


async def list_templates(
    session: AsyncSession, *, sort: Sort, limit: int, cursor: str | None, active: bool | None
) -> tuple[list[TemplateRead], str | None]:
    stmt = select(StandardChangeTemplate)
    if active is not None:
        stmt = stmt.where(StandardChangeTemplate.active == active)
    rows = (await session.exec(keyset(stmt, sort, StandardChangeTemplate.id, limit, cursor))).all()
    items, next_cursor = page_of(rows, sort, limit, value_of=lambda t: getattr(t, sort.name), id_of=lambda t: t.id)
    return [render(t) for t in items], next_cursor


async def create_template(session: AsyncSession, body: TemplateCreate, actor: Principal) -> TemplateRead:
    require_change_manager(actor)
    now = datetime.now(UTC)
    template = StandardChangeTemplate(**body.model_dump(), created_by=actor.id, created_at=now, updated_at=now)
    session.add(template)
    await session.flush()
    created = [Event("created")]
    await TEMPLATES.record(
        session, template, actor=actor.actor, now=now, fields={}, events=created, data=_data, bump=False
    )
    return render(template)


async def update_template(
    session: AsyncSession, template: StandardChangeTemplate, body: TemplateUpdate, actor: Principal
) -> TemplateRead:
    """Changes to a template apply to the changes raised from it afterwards; those raised before keep their plans."""
    require_change_manager(actor)
    now = datetime.now(UTC)
    values = body.model_dump(exclude_unset=True)
    for name in ("name", "implementation_plan", "backout_plan", "active", "configuration_items"):
        if name in values and values[name] is None:
            raise _invalid(name, f"{name} cannot be null")
    edits = FieldEdits(template)
    for name, value in values.items():
        edits.set(name, value)
    if edits:
        updated = [Event("updated", edits.fields)]
        await TEMPLATES.record(session, template, actor=actor.actor, now=now, fields={}, events=updated, data=_data)
    return render(template)


async def delete_template(session: AsyncSession, template: StandardChangeTemplate, actor: Principal) -> None:
    """A template changes were raised from stays (they name it): set it inactive instead."""
    require_change_manager(actor)
    now = datetime.now(UTC)
    used = select(col(ChangeRequest.id)).where(ChangeRequest.standard_template_id == template.id).limit(1)
    if (await session.exec(used)).first() is not None:
        raise Conflict("changes were raised from this template: set it inactive (active: false) instead")
    deleted = [Event("deleted")]
    await TEMPLATES.record(session, template, actor=actor.actor, now=now, fields={}, events=deleted, data=_data)
    await session.delete(template)


# ---------------------------------------------------------------- the rules of a standard change


async def check_standard(
    session: AsyncSession,
    change: ChangeRequest,
    edits: FieldEdits,
    actor: Principal,
    *,
    sent: Collection[str],
    creating: bool = False,
) -> None:
    """The rules of a standard change, on a create or on an update touching what they govern, once the fields are
    set through `edits` (risk included). `sent` are the fields the request gave. Adopting a template (raising
    the change from it, or naming it later) copies its plans to the change; a plan sent that differs from the
    template's, or an item outside the template's items, is 422."""
    if change.type != ChangeType.STANDARD:
        if change.standard_template_id is not None:
            if "standard_template_id" in sent:
                raise _invalid("standard_template_id", "a standard-change template goes with type standard")
            edits.set("standard_template_id", None)  # no longer standard
        return
    if not creating and not GOVERNED.intersection(edits.fields) and "standard_template_id" not in sent:
        return
    if change.standard_template_id is None:
        if not actor.has(Role.CHANGE_MANAGER):
            raise Forbidden(
                "a standard change is raised from an active standard-change template (standard_template_id); "
                "only a change manager raises or edits one without a template"
            )
    else:
        await _follow_template(
            session, change, edits, sent, adopted=creating or bool({"type", "standard_template_id"} & set(edits.fields))
        )
    if change.risk not in (None, Risk.LOW):
        raise _invalid(
            "risk_assessment", f"a standard change is low risk, this one is {change.risk}: raise a normal one"
        )


async def _follow_template(
    session: AsyncSession, change: ChangeRequest, edits: FieldEdits, sent: Collection[str], *, adopted: bool
) -> None:
    assert change.standard_template_id is not None
    try:
        template = await get_template(session, change.standard_template_id)
    except NotFound:
        raise _invalid("standard_template_id", "no such standard-change template") from None
    if adopted and not template.active:
        raise _invalid("standard_template_id", "this standard-change template is inactive")
    for name in PLANS:
        expected = getattr(template, name)
        if name in sent and getattr(change, name) != expected:
            raise _invalid(name, f"a standard change follows its template's {name}")
        if adopted:
            edits.set(name, expected)
    allowed = set(template.configuration_items)
    outside = [ci for ci in change.configuration_items if ci not in allowed]
    if allowed and outside and (adopted or "configuration_items" in edits):
        raise _invalid("configuration_items", f"outside the template's configuration items: {', '.join(outside)}")
