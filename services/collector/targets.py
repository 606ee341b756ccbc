"""What the collector scrapes: static URLs, and DNS names whose every address is scraped.

``COLLECTOR_TARGETS`` is a comma-separated list of entries:

- ``http://host:port`` (or ``https://``): that one endpoint; its ``/metrics`` unless the
  entry names another path;
- ``dns+http://name:port``: every address ``name`` resolves to (A and AAAA), each scraped
  at that port; the name is resolved again every round, so the replicas behind a
  Kubernetes headless Service are followed as they come and go.

When a name does not resolve, the round uses its last answer (a DNS hiccup must not look
like every replica vanishing) and reports the error; a name that never resolved yields no
target. The resolver is a parameter, so tests give answers that change.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

TargetKind = Literal["proxy", "limiter"]
# (host, port) → the addresses it resolves to.
Resolve = Callable[[str, int], Awaitable[list[str]]]

DEFAULT_PATH = "/metrics"
DNS_PREFIX = "dns+"
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class ScrapeTarget:
    """One endpoint to scrape: its exposition URL and what kind of service answers there."""

    url: str
    kind: TargetKind


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """One configured entry: a fixed endpoint, or a DNS name standing for all its addresses."""

    kind: TargetKind
    scheme: str  # http or https
    host: str
    port: int
    path: str
    dns: bool

    def url_for(self, host: str) -> str:
        """The exposition URL of this entry at ``host`` (a name or an address)."""
        shown = f"[{host}]" if ":" in host else host  # an IPv6 address
        return f"{self.scheme}://{shown}:{self.port}{self.path}"

    def __str__(self) -> str:
        return (DNS_PREFIX if self.dns else "") + self.url_for(self.host)


def parse_targets(text: str, kind: TargetKind) -> list[TargetSpec]:
    """The entries of a comma-separated target list; ValueError names a bad one."""
    return [parse_target(entry.strip(), kind) for entry in text.split(",") if entry.strip()]


def parse_target(entry: str, kind: TargetKind) -> TargetSpec:
    """One entry: ``http(s)://host:port[/path]`` or ``dns+http(s)://name:port[/path]``."""
    dns = entry.startswith(DNS_PREFIX)
    parts = urlsplit(entry.removeprefix(DNS_PREFIX))
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"target {entry!r} is not http(s)://host:port or dns+http(s)://name:port")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"target {entry!r} must not carry credentials, a query or a fragment")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError as exc:
        raise ValueError(f"target {entry!r}: {exc}") from None
    path = parts.path if parts.path not in ("", "/") else DEFAULT_PATH
    return TargetSpec(kind, parts.scheme, parts.hostname, port, path, dns)


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address (IPv4 and IPv6) the system resolver gives for ``host``."""
    loop = asyncio.get_running_loop()
    answers = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(sockaddr[0]) for _family, _type, _proto, _name, sockaddr in answers]


@dataclass(slots=True)
class Discovery:
    """One round's targets, and the DNS entries that failed to resolve (→ the reason)."""

    targets: list[ScrapeTarget] = field(default_factory=list)
    errors: dict[TargetSpec, str] = field(default_factory=dict)


class TargetDiscovery:
    """Turns the configured entries into each round's targets, re-resolving DNS names."""

    def __init__(
        self,
        specs: Iterable[TargetSpec],
        *,
        resolve: Resolve = system_resolver,
        timeout: float = 2.0,
    ) -> None:
        self.specs = list(specs)
        self.timeout = timeout
        self._resolve = resolve
        # The last good answer of each DNS entry: used while its name does not resolve.
        self._last: dict[TargetSpec, list[str]] = {}

    async def discover(self) -> Discovery:
        """The targets of this round (static ones as given), without duplicates, in order."""
        named = [spec for spec in self.specs if spec.dns]
        answers = await asyncio.gather(*(self._addresses(spec) for spec in named))
        addresses = dict(zip(named, answers, strict=True))
        found = Discovery()
        seen: set[str] = set()
        for spec in self.specs:
            hosts = [spec.host]
            if spec.dns:
                result = addresses[spec]
                if isinstance(result, str):
                    found.errors[spec] = result
                    hosts = self._last.get(spec, [])
                else:
                    hosts = result
            for host in hosts:
                url = spec.url_for(host)
                if url not in seen:
                    seen.add(url)
                    found.targets.append(ScrapeTarget(url, spec.kind))
        return found

    async def _addresses(self, spec: TargetSpec) -> list[str] | str:
        # A list of addresses, or the reason the name did not resolve.
        try:
            answer = await asyncio.wait_for(self._resolve(spec.host, spec.port), self.timeout)
        except TimeoutError:
            return f"no answer within {self.timeout:g} s"
        except OSError as exc:
            return str(exc) or type(exc).__name__
        unique = sorted(set(answer))
        if not unique:
            return "no addresses"
        self._last[spec] = unique
        return unique
