"""Subscription use cases: rules, rows and events in one transaction (the seam commits). Admins manage every
subscription; an integrator manages its own, and another's is 404."""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from itsm_shared.auth import Principal, Role
from itsm_shared.edits import FieldEdits, json_value
from itsm_shared.errors import Conflict, Forbidden, Invalid
from itsm_shared.pagination import Sort, keyset, page_of
from itsm_shared.records import Event
from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from webhook import signing, ssrf
from webhook.config import get_settings
from webhook.models import SUBSCRIPTIONS, Delivery, DeliveryStatus, Subscription
from webhook.schemas import (
    SecretRotated,
    SubscriptionCreate,
    SubscriptionCreated,
    SubscriptionEvent,
    SubscriptionRead,
    SubscriptionUpdate,
)

MANAGERS = frozenset({Role.ADMIN, Role.INTEGRATOR})
# How long a rotated-out secret keeps signing beside the new one.
ROTATION_OVERLAP = timedelta(hours=24)


def utcnow() -> datetime:
    return datetime.now(UTC)


def require(principal: Principal) -> None:
    if not principal.has(*MANAGERS):
        raise Forbidden(f"webhook subscriptions need one of the roles: {', '.join(sorted(MANAGERS))}")


def _owned_by(principal: Principal) -> list[Any]:
    return [] if principal.has(Role.ADMIN) else [col(Subscription.owner_id) == principal.id]


async def visible(
    session: AsyncSession, ref: uuid.UUID, principal: Principal, *, for_update: bool = False
) -> Subscription:
    """The subscription, for an admin or its owning integrator; else 403 or 404."""
    require(principal)
    return await SUBSCRIPTIONS.load(session, ref, for_update=for_update, where=_owned_by(principal))


def render(subscription: Subscription) -> SubscriptionRead:
    return SubscriptionRead.model_validate(subscription, from_attributes=True)


def endpoint(url: str) -> str:
    """The URL's origin only: its path and query may hold a credential."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return ""
    return f"{parsed.scheme}://{parsed.netloc.decode('ascii', 'replace')}"


def event_data(subscription: Subscription) -> dict[str, Any]:
    """The `data` of a subscription's events."""
    return SubscriptionEvent(
        **render(subscription).model_dump(include=set(SubscriptionEvent.model_fields) - {"endpoint"}),
        endpoint=endpoint(subscription.url),
    ).model_dump(mode="json")


def _changes(fields: dict[str, list[Any]]) -> dict[str, list[Any]]:
    changes = {name: values for name, values in fields.items() if name != "url"}
    if "url" in fields:
        changes["endpoint"] = [endpoint(v) if isinstance(v, str) else v for v in fields["url"]]
    return changes


async def _checked_url(url: str) -> str:
    try:
        return await ssrf.check(url, allow_private=get_settings().webhook_allow_private_networks)
    except ssrf.Refused as exc:
        raise Invalid(f"url {exc}", errors=[{"loc": ["body", "url"], "msg": str(exc)}]) from None


# ---------------------------------------------------------------- subscriptions


async def create_subscription(session: AsyncSession, body: SubscriptionCreate, actor: Principal) -> SubscriptionCreated:
    """The new subscription with its secret SEALED: the response a repeated Idempotency-Key replays is stored
    (24 hours), and must not hold the secret in clear; `reveal` opens it for the answer."""
    require(actor)
    url = await _checked_url(body.url)
    now = utcnow()
    subscription = Subscription(
        id=uuid.uuid4(),
        owner_id=actor.id,
        url=url,
        event_types=body.event_types,
        subjects=body.subjects,
        description=body.description,
        active=body.active,
        secret="",
        created_at=now,
        updated_at=now,
    )
    subscription.secret = signing.box().seal(subscription.id, signing.new_secret())
    session.add(subscription)
    await session.flush()
    await SUBSCRIPTIONS.record(
        session,
        subscription,
        actor=actor.actor,
        now=now,
        fields={},
        events=[Event("subscription_created")],
        data=event_data,
        bump=False,
    )
    return SubscriptionCreated(**render(subscription).model_dump(), secret=subscription.secret)


def reveal(created: dict[str, Any]) -> dict[str, Any]:
    """A create's answer (first or replayed) with its secret opened."""
    if isinstance(created.get("secret"), str) and isinstance(created.get("id"), str):
        created["secret"] = signing.box().open(uuid.UUID(created["id"]), created["secret"])
    return created


async def update_subscription(
    session: AsyncSession, subscription: Subscription, body: SubscriptionUpdate, actor: Principal
) -> SubscriptionRead:
    require(actor)
    values = body.model_dump(exclude_unset=True)
    for required in ("url", "event_types", "active"):
        if required in values and values[required] is None:
            raise Invalid(f"{required} cannot be null", errors=[{"loc": ["body", required], "msg": "required"}])
    if "url" in values and values["url"] != subscription.url:
        values["url"] = await _checked_url(values["url"])
    edits = FieldEdits(subscription)
    for name, value in values.items():
        edits.set(name, value)
    if "active" in edits:
        if subscription.active:  # enabled again: a fresh start
            edits.set("disabled_reason", None)
            edits.set("failing_since", None)
        else:
            await cancel_pending(session, subscription.id)
    if not edits:
        return render(subscription)
    now = utcnow()
    await SUBSCRIPTIONS.record(
        session,
        subscription,
        actor=actor.actor,
        now=now,
        fields={},
        events=[Event("subscription_updated", _changes(edits.fields))],
        data=event_data,
    )
    return render(subscription)


async def delete_subscription(session: AsyncSession, subscription: Subscription, actor: Principal) -> None:
    """Gone with its deliveries and their log (the rows cascade); the event says who deleted it."""
    require(actor)
    await SUBSCRIPTIONS.emit(session, subscription, "subscription_deleted", event_data(subscription), actor.actor)
    await session.delete(subscription)
    await session.flush()


async def rotate_secret(session: AsyncSession, subscription: Subscription, actor: Principal) -> SecretRotated:
    """A new secret; the one it replaces signs beside it for 24 hours (a secret rotated out before is dropped)."""
    require(actor)
    now = utcnow()
    secret = signing.new_secret()
    subscription.previous_secret = subscription.secret
    subscription.previous_secret_expires_at = now + ROTATION_OVERLAP
    subscription.secret = signing.box().seal(subscription.id, secret)
    await SUBSCRIPTIONS.record(
        session,
        subscription,
        actor=actor.actor,
        now=now,
        fields={},
        events=[Event("secret_rotated", extra={"previous_secret_expires_at": json_value(now + ROTATION_OVERLAP)})],
        data=event_data,
    )
    return SecretRotated(
        id=subscription.id,
        secret=secret,
        previous_secret_expires_at=now + ROTATION_OVERLAP,
        version=subscription.version,
    )


def signing_secrets(
    subscription_id: uuid.UUID, current: str, previous: str | None, until: datetime | None
) -> list[str]:
    """The secrets that sign now, decrypted: the current one, and the previous one during its overlap."""
    box = signing.box()
    found = [box.open(subscription_id, current)]
    if previous is not None and until is not None and until > utcnow():
        with contextlib.suppress(signing.SecretKeyError):  # sealed under a lost key: the new secret signs alone
            found.append(box.open(subscription_id, previous))
    return found


SORTS = {"created_at": Subscription.created_at}


async def list_subscriptions(
    session: AsyncSession, principal: Principal, *, sort: Sort, limit: int, cursor: str | None, active: bool | None
) -> tuple[list[SubscriptionRead], str | None]:
    require(principal)
    stmt = select(Subscription).where(*_owned_by(principal))
    if active is not None:
        stmt = stmt.where(col(Subscription.active) == active)
    rows = (await session.exec(keyset(stmt, sort, Subscription.id, limit, cursor))).all()
    items, next_cursor = page_of(rows, sort, limit, value_of=lambda s: getattr(s, sort.name), id_of=lambda s: s.id)
    return [render(s) for s in items], next_cursor


# ---------------------------------------------------------------- what deliveries do to a subscription


async def cancel_pending(session: AsyncSession, subscription_id: uuid.UUID) -> None:
    """A disabled or deactivated subscription's deliveries stop (kept in the log; a replay catches up)."""
    await session.execute(
        update(Delivery)
        .where(col(Delivery.subscription_id) == subscription_id, col(Delivery.status) == DeliveryStatus.PENDING)
        .values(status=DeliveryStatus.CANCELLED, next_attempt_at=None)
    )


async def disable(session: AsyncSession, subscription: Subscription, reason: str, now: datetime) -> None:
    """Disabled by its deliveries (410 Gone, or failing too long): `webhook.subscription_disabled`."""
    if not subscription.active:
        return
    subscription.active = False
    subscription.disabled_reason = reason[:200]
    await cancel_pending(session, subscription.id)
    await SUBSCRIPTIONS.record(
        session,
        subscription,
        actor="system",
        now=now,
        fields={},
        events=[Event("subscription_disabled", extra={"reason": subscription.disabled_reason})],
        data=event_data,
    )


def ensure_active(subscription: Subscription) -> None:
    if not subscription.active:
        raise Conflict("the subscription is not active: PATCH it with active true first")
