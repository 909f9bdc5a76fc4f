"""The running services agree with the table of services (deploy/services.toml): the queues each consumes
from (the e2e teardown deletes exactly those) and its api_prefix, where its docs are reached through the
gateway."""

from __future__ import annotations

import httpx
import service_table as services
import stack as stack_module


def declared_queues(stack: stack_module.Stack, name: str) -> set[str]:
    """The queues a running service consumes from, as its AsyncAPI document names them, unprefixed."""
    prefix = stack.settings.queue_prefix
    document = httpx.get(f"{stack.settings.service_url(name)}/asyncapi.json", timeout=10).json()
    found: set[str] = set()
    for channel in document.get("channels", {}).values():
        queue = channel.get("bindings", {}).get("amqp", {}).get("queue", {}).get("name")
        if isinstance(queue, str):
            assert queue.startswith(prefix), f"{name} consumes from {queue}, outside the stack's prefix {prefix}"
            found.add(queue.removeprefix(prefix))
    return found


def test_each_service_consumes_from_the_queues_of_the_table(stack: stack_module.Stack) -> None:
    for name in stack.services:
        assert declared_queues(stack, name) == set(services.get(name).queues), name


async def test_each_service_answers_under_its_prefixes_through_the_gateway(
    http: httpx.AsyncClient, stack: stack_module.Stack
) -> None:
    for name in stack.services:
        service = services.get(name)
        spec = await http.get(f"{service.api_prefix}/openapi.json")
        assert spec.status_code == 200, name
        paths = set(spec.json()["paths"])
        for prefix in service.prefixes:
            assert any(path == prefix or path.startswith(f"{prefix}/") for path in paths), (name, prefix)
        assert (await http.get(service.docs_path)).status_code == 200, name
