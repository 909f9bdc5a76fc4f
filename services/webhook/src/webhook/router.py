from __future__ import annotations

import json
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from itsm_shared.auth import CurrentPrincipal
from itsm_shared.db import SessionDep
from itsm_shared.http import IdempotencyKey, check_if_match, create_once, etag, with_etag
from itsm_shared.openapi import documented
from itsm_shared.pagination import CommaSeparated, Cursor, Limit, Page, parse_sort, sort_by

from webhook import deliveries, service
from webhook.models import DeliveryStatus, Subscription
from webhook.schemas import (
    DeliveryRead,
    ReplayRead,
    ReplayRequest,
    SecretRotated,
    SubscriptionCreate,
    SubscriptionCreated,
    SubscriptionRead,
    SubscriptionUpdate,
)

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # answers that hold a signing secret


async def subscription_by_id(
    subscription_id: uuid.UUID, session: SessionDep, principal: CurrentPrincipal
) -> Subscription:
    return await service.visible(session, subscription_id, principal)


async def locked_subscription(
    subscription_id: uuid.UUID, session: SessionDep, principal: CurrentPrincipal
) -> Subscription:
    return await service.visible(session, subscription_id, principal, for_update=True)


SubscriptionDep = Annotated[Subscription, Depends(subscription_by_id)]
LockedSubscription = Annotated[Subscription, Depends(locked_subscription)]
Statuses = Annotated[list[DeliveryStatus] | None, Query(), CommaSeparated]


URL_RULES = {
    "body.url": "https (plain http only where ITSM_WEBHOOK_ALLOW_PRIVATE_NETWORKS is set), with a host that resolves to"
    " public addresses only (no loopback, private, link-local, multicast or metadata address)",
}


@router.post(
    "",
    status_code=201,
    response_model=SubscriptionCreated,
    summary="Subscribe an endpoint",
    responses=documented(etag=201, location=201, rules=URL_RULES),
)
async def create_subscription(
    session: SessionDep, data: SubscriptionCreate, principal: CurrentPrincipal, key: IdempotencyKey = None
) -> JSONResponse:
    response = await create_once(
        session,
        principal.actor,
        key,
        data,
        lambda: service.create_subscription(session, data, principal),
        location=router.prefix,
    )
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    created = service.reveal(json.loads(bytes(response.body)))
    return JSONResponse(created, status_code=response.status_code, headers={**headers, **NO_STORE})


@router.get("", response_model=Page[SubscriptionRead])
async def list_subscriptions(
    session: SessionDep,
    principal: CurrentPrincipal,
    limit: Limit = 50,
    cursor: Cursor = None,
    sort: Annotated[str, sort_by(service.SORTS)] = "-created_at",
    active: bool | None = None,
) -> Page[SubscriptionRead]:
    items, next_cursor = await service.list_subscriptions(
        session, principal, sort=parse_sort(sort, service.SORTS), limit=limit, cursor=cursor, active=active
    )
    return Page(items=items, next_cursor=next_cursor)


@router.get("/{subscription_id}", response_model=SubscriptionRead, responses=documented(etag=200))
async def get_subscription(subscription: SubscriptionDep, response: Response) -> SubscriptionRead:
    with_etag(response, subscription.version)
    return service.render(subscription)


@router.patch(
    "/{subscription_id}",
    response_model=SubscriptionRead,
    responses=documented(etag=200, if_match=True, rules=URL_RULES),
)
async def update_subscription(
    request: Request,
    subscription: LockedSubscription,
    session: SessionDep,
    principal: CurrentPrincipal,
    data: SubscriptionUpdate,
    response: Response,
) -> SubscriptionRead:
    check_if_match(request, subscription.version)
    updated = await service.update_subscription(session, subscription, data, principal)
    with_etag(response, updated.version)
    return updated


@router.delete("/{subscription_id}", status_code=204, responses=documented(if_match=True))
async def delete_subscription(
    request: Request, subscription: LockedSubscription, session: SessionDep, principal: CurrentPrincipal
) -> Response:
    check_if_match(request, subscription.version)
    await service.delete_subscription(session, subscription, principal)
    return Response(status_code=204)


@router.post(
    "/{subscription_id}/rotate-secret",
    response_model=SecretRotated,
    summary="A new signing secret",
    responses=documented(etag=200, if_match=True),
)
async def rotate_secret(
    request: Request, subscription: LockedSubscription, session: SessionDep, principal: CurrentPrincipal
) -> JSONResponse:
    check_if_match(request, subscription.version)
    rotated = await service.rotate_secret(session, subscription, principal)
    return JSONResponse(rotated.model_dump(mode="json"), headers={"ETag": etag(rotated.version), **NO_STORE})


@router.get("/{subscription_id}/deliveries", response_model=Page[DeliveryRead])
async def list_deliveries(
    session: SessionDep,
    subscription: SubscriptionDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    sort: Annotated[str, sort_by(deliveries.SORTS)] = "-created_at",
    status: Statuses = None,
    event_id: uuid.UUID | None = None,
) -> Page[DeliveryRead]:
    items, next_cursor = await deliveries.list_deliveries(
        session,
        subscription,
        sort=parse_sort(sort, deliveries.SORTS),
        limit=limit,
        cursor=cursor,
        status=status,
        event_id=event_id,
    )
    return Page(items=items, next_cursor=next_cursor)


@router.post("/{subscription_id}/deliveries/{delivery_id}/retry", status_code=202, response_model=DeliveryRead)
async def retry_delivery(delivery_id: uuid.UUID, session: SessionDep, subscription: SubscriptionDep) -> DeliveryRead:
    return await deliveries.retry_delivery(session, subscription, delivery_id)


@router.post("/{subscription_id}/replay", status_code=202, response_model=ReplayRead)
async def replay(session: SessionDep, subscription: SubscriptionDep, data: ReplayRequest) -> ReplayRead:
    return await deliveries.replay(session, subscription, data.since)
