"""Who may publish what on the events exchange, and the check a consumer makes before it believes an event.

Each service connects to RabbitMQ as a broker user of its own, `<broker_user_prefix><service>`, and sets the AMQP
`user_id` property of everything it publishes to that user; RabbitMQ refuses a message whose `user_id` is not the
user of the connection publishing it, so a `user_id` that arrives is the publisher, whatever the body says. Its
topic permissions on the events exchange let it publish only its own routing keys (`ROLES`; deploy and tests grant
them through `itsm_shared.broker_users`). RabbitMQ checks those when a message is published to the exchange, not
when it reaches the exchange through an exchange-to-exchange binding, so the consumers do not rely on them: before
any handler runs, `refusal` checks that

- the message has a `user_id`, and came through the events exchange (or is a replay: below);
- its `source` is `/itsm/<service>` of the service that user belongs to;
- that service publishes events of this type (`ROLES`), and it is the publisher the queue expects, if it names one;
- it arrived with the routing key of its type (the key the topic permission checked);
- its type matches one of the queue's bindings (an event of another type sent straight to the queue is refused).

Replays: the audit service's `POST /replay` republishes stored events to a queue through the default exchange, as
its own user. The log stored each of them only after this same check, so an event arriving through the default
exchange from the audit user is believed for its `source` (its type and the queue's bindings are still checked);
through the default exchange from anyone else it is refused. Only the audit user may write to the default exchange.

What fails the check is parked (`<queue>.dlq`, reason `untrusted: ...`), never applied.

The standard library only: deploy/k8s/helm_values.py reads the table without the workspace installed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from itsm_shared.settings import ServiceSettings

EVERYTHING = "#"
# The service whose broker user replays stored events to queues through the default exchange.
REPLAYER = "audit"
# How far a consumer lets an entity's `sequence` run ahead of the highest it has applied for it: a larger jump is
# not an edit history but a forged or corrupt event, which would otherwise hide every later event of the entity.
MAX_SEQUENCE_GAP = 1000

_SOURCE = re.compile(r"/itsm/([a-z][a-z0-9_]*)")


@dataclass(frozen=True)
class Role:
    """What one service's broker user may do with events: `publishes`, the first words of the routing keys it
    publishes (`change` publishes `change.*`, `blackout_window.*`, ...); `binds`, those of the keys it may bind
    a queue to. `#` in either: any."""

    publishes: tuple[str, ...]
    binds: tuple[str, ...] = ()


# The trust model's table (README, Security). A service missing here publishes `<name>.*` and may bind any key.
ROLES: dict[str, Role] = {
    "auth": Role(publishes=("auth",)),
    "incident": Role(publishes=("incident",), binds=("problem",)),
    "problem": Role(publishes=("problem",), binds=("incident",)),
    "change": Role(publishes=("change", "blackout_window", "standard_change_template")),
    "audit": Role(publishes=(), binds=(EVERYTHING,)),
    "webhook": Role(publishes=("webhook",), binds=(EVERYTHING,)),
}


def role(service: str) -> Role:
    return ROLES.get(service) or Role(publishes=(service,), binds=(EVERYTHING,))


def broker_user(settings: ServiceSettings, service: str) -> str:
    """The broker user of `service` in this deployment."""
    return f"{settings.broker_user_prefix}{service}"


def connection_user(amqp_url: str) -> str:
    """The user an AMQP URL logs in as (RabbitMQ's default, guest, when it names none)."""
    user = urlsplit(amqp_url).username
    return unquote(user) if user else "guest"


def topic_matches(pattern: str, key: str) -> bool:
    """Whether a topic binding `pattern` matches routing key `key` (`*`: one word, `#`: zero or more)."""

    def match(p: Sequence[str], k: Sequence[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and (p[0] in ("*", k[0])) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))


@dataclass(frozen=True)
class Delivery:
    """What the broker says about a message: the validated `user_id`, the exchange it was published to (`""`: the
    default exchange), and the routing key it was published with."""

    user_id: str | None
    exchange: str | None
    routing_key: str | None

    @classmethod
    def of(cls, message: Any) -> Delivery:
        """From an aio-pika incoming message (FastStream's `raw_message`)."""
        return cls(message.user_id, message.exchange, message.routing_key)


def refusal(
    settings: ServiceSettings,
    *,
    source: str,
    type: str,
    delivery: Delivery,
    bindings: Iterable[str],
    publisher: str | None = None,
) -> str | None:
    """Why this event must not be believed (see the module's text), or None. `publisher`: the one service whose
    events the queue takes (None: any service, each for its own types)."""
    user = delivery.user_id
    if not user:
        return "no user_id: the publisher is unknown (each service sets its broker user's)"
    claimed = _SOURCE.fullmatch(source)
    if claimed is None:
        return f"source {source[:100]!r} is not /itsm/<service>"
    service = claimed[1]
    key = type.removeprefix("itsm.")  # the routing key of the type (itsm_shared.events.routing_key)
    if delivery.exchange == "":
        if user != broker_user(settings, REPLAYER):
            return f"sent straight to the queue by {user!r}: only {REPLAYER} replays through the default exchange"
    else:
        if delivery.exchange != settings.exchange:
            return f"published to exchange {delivery.exchange!r}, not to {settings.exchange!r}"
        if user != broker_user(settings, service):
            return f"source {source} but published by broker user {user!r}, not {broker_user(settings, service)!r}"
        if delivery.routing_key != key:
            return f"type {type} published with routing key {delivery.routing_key!r}"
    if publisher is not None and service != publisher:
        return f"this queue takes events of {publisher} only, not of {service}"
    if not {key.split(".", 1)[0], EVERYTHING} & set(role(service).publishes):
        return f"{service} does not publish {type}"
    bound = list(bindings)
    if not any(topic_matches(pattern, key) for pattern in bound):
        return f"this queue takes {', '.join(bound)}, not {type}"
    return None


def sequence_refusal(sequence: int, seen: int | None) -> str | None:
    """Why an event's `sequence` cannot be applied after the highest one applied for its entity (None: none yet),
    or None: at most MAX_SEQUENCE_GAP ahead of it."""
    ceiling = (seen or 0) + MAX_SEQUENCE_GAP
    if sequence > ceiling:
        return f"sequence {sequence} is more than {MAX_SEQUENCE_GAP} ahead of the highest applied ({seen or 0})"
    return None
