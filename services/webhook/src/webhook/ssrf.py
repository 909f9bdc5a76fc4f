"""Where a webhook may be sent: https to public addresses only, checked when a subscription is saved and again
before every attempt (DNS can change). Unless ITSM_WEBHOOK_ALLOW_PRIVATE_NETWORKS is true (development and tests,
which also allows plain http).

Before an attempt the host is resolved, every address it resolves to is checked, and the connection goes to a
checked address (the URL's host replaced by it; Host header and TLS SNI, so the certificate check too, keep the
name): a DNS answer that changes between the check and the connection (rebinding) cannot redirect it."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Instance metadata services: link-local or private already, some not (Azure's wire server, Oracle's), named so a
# future change of Python's address tables cannot let one through.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean ...
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
        "168.63.129.16",  # Azure wire server
    )
)
MAX_URL = 2048
# Without the development setting; with it, plain http too.
SECURE_SCHEMES: tuple[str, ...] = ("https",)


class Refused(ValueError):
    """The URL, or an address its host resolves to, is not allowed; the message says why."""


def forbidden(address: IPAddress) -> str | None:
    """Why an address is refused, or None for a public unicast one."""
    ip: IPAddress = address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES or address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for test, what in (
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_reserved, "a reserved address"),
        (ip.is_private, "a private address"),
        (not ip.is_global, "not a public address"),
    ):
        if test:
            return what
    return None


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (through the event loop's resolver, off the loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


Resolver = Callable[[str, int], Awaitable[list[str]]]


def parse(url: str, *, allow_private: bool) -> httpx.URL:
    """The URL if its shape is allowed (scheme, host, no credentials), else `Refused`."""
    if len(url) > MAX_URL:
        raise Refused(f"longer than {MAX_URL} characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise Refused(f"not a URL: {exc}") from None
    schemes = ("https", "http") if allow_private else SECURE_SCHEMES
    if parsed.scheme not in schemes:
        raise Refused(f"must be {' or '.join(schemes)}")
    if not parsed.host:
        raise Refused("has no host")
    if parsed.userinfo:
        raise Refused("must not carry credentials (put them in the path or query of the URL)")
    if parsed.fragment:
        raise Refused("must not have a fragment")
    return parsed


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def public_addresses(url: httpx.URL, resolver: Resolver | None = None) -> list[IPAddress]:
    """The addresses of the URL's host, all checked; `Refused` when one is not public or none resolves."""
    host, port = url.host, url.port or (443 if url.scheme == "https" else 80)
    literal = _literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            found = await (resolver or resolve)(host, port)
        except (OSError, UnicodeError) as exc:
            raise Refused(f"host {host} does not resolve ({type(exc).__name__})") from None
        addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]
    if not addresses:
        raise Refused(f"host {host} does not resolve")
    for address in addresses:
        reason = forbidden(address)
        if reason is not None:
            raise Refused(f"{address} is {reason}" if literal else f"host {host} resolves to {address}, {reason}")
    return addresses


async def check(url: str, *, allow_private: bool, resolver: Resolver | None = None) -> str:
    """A subscription's URL, checked when it is saved; returns it as given."""
    parsed = parse(url, allow_private=allow_private)
    if not allow_private:
        await public_addresses(parsed, resolver)
    return url


@dataclass(frozen=True)
class Target:
    """Where one attempt connects: the URL (with a checked address for host), and what keeps the name."""

    url: httpx.URL
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, Any] = field(default_factory=dict)


async def targets(url: str, *, allow_private: bool, resolver: Resolver | None = None) -> list[Target]:
    """The connections to try, in order, for one attempt: each checked address of the host, pinned."""
    parsed = parse(url, allow_private=allow_private)
    if allow_private:
        return [Target(parsed)]
    name = parsed.host
    port = parsed.port
    host_header = name if port is None else f"{name}:{port}"
    if ":" in name:  # an IPv6 literal keeps its brackets in the Host header
        host_header = f"[{name}]" if port is None else f"[{name}]:{port}"
    pinned = []
    for address in await public_addresses(parsed, resolver):
        extensions: dict[str, Any] = {}
        if parsed.scheme == "https" and _literal(name) is None:
            extensions["sni_hostname"] = name  # TLS names the host, and its certificate is checked against it
        pinned.append(Target(parsed.copy_with(host=str(address)), {"Host": host_header}, extensions))
    return pinned
