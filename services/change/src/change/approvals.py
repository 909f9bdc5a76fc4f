"""CAB approval: who decides on an RFC, the quorum its risk needs, and what a decision does to the RFC."""

from __future__ import annotations

from collections.abc import Sequence

from itsm_shared.auth import Principal, Role
from itsm_shared.edits import FieldEdits
from itsm_shared.errors import Conflict, Forbidden
from itsm_shared.records import Event
from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from change import service
from change.models import CHANGES, Approval, ChangeApproval, ChangeRequest, ChangeType, Decision, Risk, Status
from change.schemas import ApprovalCreate, ApprovalRead, ApprovalResult

# Approvals needed per risk: one for low and moderate, two from different people for high.
QUORUM = {Risk.LOW: 1, Risk.MODERATE: 1, Risk.HIGH: 2}


def approver_role(change: ChangeRequest) -> str:
    return Role.CHANGE_MANAGER if change.type == ChangeType.EMERGENCY else Role.CAB_MEMBER


async def approvals(session: AsyncSession, change: ChangeRequest) -> Sequence[ChangeApproval]:
    stmt = select(ChangeApproval).where(ChangeApproval.change_id == change.id)
    return (await session.exec(stmt.order_by(col(ChangeApproval.created_at), col(ChangeApproval.id)))).all()


async def _approvals_in_round(session: AsyncSession, change: ChangeRequest) -> int:
    approved = await session.exec(
        select(func.count())
        .select_from(ChangeApproval)
        .where(
            ChangeApproval.change_id == change.id,
            ChangeApproval.round == change.approval_round,
            ChangeApproval.decision == Decision.APPROVE,
        )
    )
    return int(approved.one())


async def decide(session: AsyncSession, ref: str, body: ApprovalCreate, actor: Principal) -> ApprovalResult:
    """Record one CAB decision on the RFC `ref`. A rejection returns the RFC to new; an approval that reaches
    the quorum of its risk approves it, and schedules it when its planned window is set and free (otherwise it
    waits in authorize, approved, for a PATCH to scheduled). The RFC is locked here, after the Idempotency-Key
    is taken, so a replay never waits on it."""
    change = await service.visible(session, ref, actor, for_update=True)
    role = approver_role(change)
    if not actor.has(role):
        who = "a change manager" if role == Role.CHANGE_MANAGER else "a CAB member"
        raise Forbidden(f"a {change.type} change is approved or rejected by {who}")
    if actor.id in (change.requested_by, change.assignee_id):
        raise Forbidden("nobody approves or rejects their own change")
    if change.status != Status.AUTHORIZE or change.approval != Approval.REQUESTED:
        raise Conflict(f"the change is not awaiting approval (status {change.status}, approval {change.approval})")
    if body.decision == Decision.REJECT and not (body.comment and body.comment.strip()):
        raise service.invalid("comment", "a rejection needs a comment")
    already = (
        await session.exec(
            select(ChangeApproval).where(
                ChangeApproval.change_id == change.id,
                ChangeApproval.round == change.approval_round,
                ChangeApproval.approver_id == actor.id,
            )
        )
    ).first()
    if already is not None:
        raise Conflict("you have already decided on this change in this approval round")
    current_risk = Risk(change.risk) if change.risk else Risk.HIGH
    now = service.utcnow()
    approval = ChangeApproval(
        change_id=change.id,
        round=change.approval_round,
        approver_id=actor.id,
        decision=body.decision,
        comment=body.comment,
        risk=current_risk,
        created_at=now,
    )
    session.add(approval)
    await session.flush()  # counted below
    edits = FieldEdits(change)
    count, required = await _approvals_in_round(session, change), QUORUM[current_risk]
    if body.decision == Decision.REJECT:
        edits.set("approval", Approval.REJECTED)
        edits.set("status", Status.NEW)
    elif count >= required:
        edits.set("approval", Approval.APPROVED)
        if change.planned_start and change.planned_end and change.configuration_items:
            try:
                await service.ensure_schedulable(session, change)
            except Conflict:
                pass  # approved, and waits in authorize until a free window is chosen
            else:
                edits.set("status", Status.SCHEDULED)
    decision = {
        "id": str(approval.id),
        "round": approval.round,
        "approver_id": str(actor.id),
        "decision": str(body.decision),
        "comment": body.comment,
        "risk": str(current_risk),
        "approvals": count,
        "required": required,
        "quorum_reached": body.decision == Decision.APPROVE and count >= required,
        "at": now.isoformat(),
    }
    # A decision changes the RFC even when no field does: a history row and a version of its own.
    changed = dict(edits.fields)
    action = "approved" if body.decision == Decision.APPROVE else "rejected"
    events = [
        *([Event("updated", changed)] if changed else []),
        Event(action, changed, extra={"approval_decision": decision}),
        *service.status_events(changed),
    ]
    fields = {**changed, "approval_decision": [None, decision]}
    await CHANGES.record(session, change, actor=actor.actor, now=now, fields=fields, events=events, data=service.data)
    read = ApprovalRead.model_validate(approval, from_attributes=True)
    return ApprovalResult(**read.model_dump(), change=service.render(change))
