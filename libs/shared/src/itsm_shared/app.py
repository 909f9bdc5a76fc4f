"""The one way every service process is assembled: settings, logs, engine, broker, outbox relay, token
verifier, error handlers, health, metrics, docs. A service supplies its routers, consumers and hooks."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from faststream.rabbit import RabbitBroker
from faststream.specification import AsyncAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from itsm_shared import faults
from itsm_shared.auth import JWKSCache, KeySource, TokenVerifier
from itsm_shared.broker import declare_dead_letter_queue, declare_topology, events_exchange, make_broker
from itsm_shared.db import make_engine, session_factory
from itsm_shared.docs import docs_router
from itsm_shared.errors import install_error_handlers
from itsm_shared.events import CloudEvent, routing_key
from itsm_shared.logs import configure_logging
from itsm_shared.observability import health_router, install_request_context
from itsm_shared.openapi import describe_responses
from itsm_shared.relay_process import RelayProcess
from itsm_shared.settings import ServiceSettings
from itsm_shared.trust import broker_user, connection_user

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What a running service holds; hooks and consumers get it."""

    name: str
    settings: ServiceSettings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    broker: RabbitBroker
    relay: RelayProcess
    # Set once the broker is connected, the topology declared and the subscribers started.
    broker_started: asyncio.Event = field(default_factory=asyncio.Event)
    extras: dict[str, Any] = field(default_factory=dict)


Hook = Callable[[Runtime], Coroutine[Any, Any, None]]


@dataclass
class ServiceSpec:
    name: str
    title: str
    api_prefix: str
    routers: Sequence[APIRouter]
    settings: ServiceSettings
    # Registers subscribers on the broker before it starts; returns their queue names.
    consumers: Callable[[Runtime], list[str]] | None = None
    # The auth service reads its own keys; every other service uses the JWKS URL.
    key_source: Callable[[Runtime], KeySource] | None = None
    on_startup: Sequence[Hook] = ()
    # Long-running loops (schedulers); cancelled at shutdown.
    background: Sequence[Hook] = ()
    # Event types this service publishes, with the model of their `data`, for the AsyncAPI document.
    publishes: Mapping[str, Any] = field(default_factory=dict)
    # Whether the service has an outbox table for the relay to publish from (the audit log publishes nothing).
    outbox: bool = True


async def _connect_broker(rt: Runtime, queues: list[str]) -> None:
    delay = 0.5
    while True:
        try:
            await rt.broker.connect()
            await declare_topology(rt.broker, rt.settings)
            for queue in queues:
                await declare_dead_letter_queue(rt.broker, rt.settings, queue)
            await rt.broker.start()
            rt.broker_started.set()
            log.info("broker connected", extra={"queues": queues})
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("broker unavailable, retrying: %s", exc)
            with contextlib.suppress(Exception):
                await rt.broker.stop()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)


def create_app(spec: ServiceSpec) -> FastAPI:
    settings = spec.settings

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(spec.name, settings.log_level)
        faults.arm(settings.fault_point)
        if (user := connection_user(settings.amqp_url)) != broker_user(settings, spec.name):
            log.warning(
                "connecting to the broker as %r, not as the service's own user %r: consumers refuse its events",
                user,
                broker_user(settings, spec.name),
            )
        engine = make_engine(
            settings.database_url,
            pool_size=settings.db_pool_size,
            statement_timeout_ms=settings.db_statement_timeout_ms,
        )
        sessions = session_factory(engine)
        broker = make_broker(settings)
        broker_started = asyncio.Event()
        # The relay runs in a process of its own (itsm_shared.relay_process), once the topology is declared.
        relay = RelayProcess(service=spec.name, settings=settings, user_id=connection_user(settings.amqp_url))
        rt = Runtime(spec.name, settings, engine, sessions, broker, relay, broker_started)
        app.state.runtime = rt
        app.state.sessions = sessions
        queues = spec.consumers(rt) if spec.consumers else []
        _document_publications(rt, spec.publishes)
        jwks: JWKSCache | None = None
        if spec.key_source:
            keys = spec.key_source(rt)
        else:
            keys = jwks = JWKSCache(settings.jwks_url, refresh_seconds=settings.jwks_refresh_seconds)
        app.state.verifier = TokenVerifier(keys, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
        for hook in spec.on_startup:
            await hook(rt)
        tasks = [asyncio.create_task(_connect_broker(rt, queues), name="broker-connect")]
        tasks += [asyncio.create_task(loop(rt), name=getattr(loop, "__name__", "loop")) for loop in spec.background]
        if spec.outbox:
            relay.start(broker_started)
        # What start-up built (modules, models, routes, the engine) lives as long as the process: out of the
        # collector's sight, a full collection no longer walks it, which took a request's p99 from about 10 to 50-90 ms.
        gc.collect()
        gc.freeze()
        # A young-generation collection after 10,000 net new objects, not Python's 700: 32 requests in flight keep
        # more than 700 alive between them, so under wrk the incident process collected every fifth create, for
        # nothing (1,247 collections found 15 objects: the rest die by reference counting), 0.1 ms a create, 6 % of
        # its CPU (gc.callbacks). At 10,000: no collection in 5,400 creates, the same RSS; its CPU per create 1.42-1.82
        # ms against 1.60-2.26 in 8 alternated pairs (7 lower). Six alternated pairs of bench/incident_create.py: 5
        # lower, but as a multiple of the bare app's CPU in the same run 3.41x after against 3.37x before (means),
        # within the spread. The older generations still follow at 10 of the younger.
        gc.set_threshold(10_000, 10, 10)
        log.info("service started", extra={"service": spec.name})
        try:
            yield
        finally:
            await relay.stop()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            with contextlib.suppress(Exception):
                await broker.stop()
            if jwks:
                await jwks.aclose()
            await engine.dispose()

    app = FastAPI(title=spec.title, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    install_error_handlers(app)
    describe_responses(app)  # the document states what those handlers and the gateway answer
    install_request_context(app)

    async def database_ready() -> None:
        async with app.state.runtime.engine.connect() as conn:
            await asyncio.wait_for(conn.execute(text("SELECT 1")), timeout=2)

    async def broker_ready() -> None:
        rt: Runtime = app.state.runtime
        if not rt.broker_started.is_set() or not await rt.broker.ping(timeout=2):
            raise ConnectionError("broker unreachable")

    app.include_router(health_router({"database": database_ready, "broker": broker_ready}))
    # Before the service's routes: `/api/v1/incidents/docs` must not be taken for an incident `{ref}`.
    _install_docs(app, spec)
    for router in spec.routers:
        app.include_router(router)
    return app


def _document_publications(rt: Runtime, publishes: Mapping[str, Any]) -> None:
    """Publishers that only describe events in /asyncapi.json; the outbox relay does the publishing."""
    for event_type, data_model in publishes.items():
        rt.broker.publisher(
            routing_key=routing_key(event_type),
            exchange=events_exchange(rt.settings),
            title=event_type,
            description=f"CloudEvent `{event_type}` (structured JSON, application/cloudevents+json)",
            schema=CloudEvent[data_model],  # type: ignore[valid-type]
            persist=True,
        )


def _install_docs(app: FastAPI, spec: ServiceSpec) -> None:
    """Docs and specs also under the API prefix, so they are reachable through the gateway. The docs pages (`/docs`,
    `<api_prefix>/docs`) serve Swagger UI's files themselves (itsm_shared.docs)."""
    docs = APIRouter(include_in_schema=False)
    openapi_path = f"{spec.api_prefix}/openapi.json"

    @docs.get(openapi_path)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    pages = {"/docs": "/openapi.json", f"{spec.api_prefix}/docs": openapi_path}
    docs.include_router(docs_router(title=f"{spec.title} docs", pages=pages))

    async def asyncapi() -> JSONResponse:
        document = AsyncAPI(app.state.runtime.broker, title=f"{spec.title} events", version="1.0.0")
        return JSONResponse(document.to_specification().to_jsonable())

    docs.add_api_route("/asyncapi.json", asyncapi, methods=["GET"])
    docs.add_api_route(f"{spec.api_prefix}/asyncapi.json", asyncapi, methods=["GET"])
    app.include_router(docs)
