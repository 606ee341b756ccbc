"""Targets: static URLs and DNS names, re-resolved every round, scraped as real proxies.

The proxies listen on one port at several loopback addresses (127.0.0.1, 127.0.0.2 and
::1), so a name that resolves to several of those addresses stands for several replicas,
as a Kubernetes headless Service does. The resolver is injected where the answers have to
change; ``localhost`` goes through the system's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.collector.processes import proxy, running
from tests.support import free_port
from zai_proxy.collector import metrics as m
from zai_proxy.collector import migrate
from zai_proxy.collector.service import CollectorService
from zai_proxy.collector.settings import CollectorSettings
from zai_proxy.collector.targets import (
    Resolve,
    ScrapeTarget,
    TargetDiscovery,
    parse_target,
    parse_targets,
    system_resolver,
)
from zai_proxy.simulator.process import start_simulator

# Parsing


@pytest.mark.parametrize(
    ("entry", "url", "dns"),
    [
        ("http://10.0.0.5:8080", "http://10.0.0.5:8080/metrics", False),
        ("http://proxy-0.example:8080/", "http://proxy-0.example:8080/metrics", False),
        ("https://proxy.example/custom/metrics", "https://proxy.example:443/custom/metrics", False),
        ("http://[fd00::7]:8080", "http://[fd00::7]:8080/metrics", False),
        ("dns+http://zai-proxy-headless:8080", "http://zai-proxy-headless:8080/metrics", True),
        ("dns+http://proxy.svc:9000/stats", "http://proxy.svc:9000/stats", True),
    ],
)
def test_an_entry_names_an_exposition_url(entry: str, url: str, dns: bool) -> None:
    spec = parse_target(entry, "proxy")

    assert spec.url_for(spec.host) == url
    assert spec.dns is dns


def test_a_dns_entry_scrapes_each_address_at_its_port_and_path() -> None:
    spec = parse_target("dns+http://proxies:8080/m", "proxy")

    assert spec.url_for("10.1.2.3") == "http://10.1.2.3:8080/m"
    assert spec.url_for("fd00::1") == "http://[fd00::1]:8080/m"


def test_a_list_is_comma_separated_and_may_be_empty() -> None:
    specs = parse_targets(" http://a:1 , dns+http://b:2,,", "limiter")

    assert [str(s) for s in specs] == ["http://a:1/metrics", "dns+http://b:2/metrics"]
    assert {s.kind for s in specs} == {"limiter"}
    assert parse_targets("", "limiter") == []


@pytest.mark.parametrize(
    "entry",
    [
        "proxy:8080",
        "ftp://proxy:21",
        "dns+tcp://proxy:8080",
        "http://:8080",
        "http://proxy:99999",
        "http://proxy:8080/metrics?x=1",
        "http://user:secret@proxy:8080",
    ],
)
def test_a_malformed_entry_is_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="target"):
        parse_target(entry, "proxy")


# Discovery without processes


class Answers:
    """A resolver whose answers the test sets; an exception instance is raised instead."""

    def __init__(self, answer: list[str] | Exception) -> None:
        self.answer = answer
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        if isinstance(self.answer, Exception):
            raise self.answer
        return list(self.answer)


async def test_static_targets_are_kept_as_given_and_names_resolved_every_round() -> None:
    answers = Answers(["10.0.0.2", "10.0.0.1"])
    specs = parse_targets("http://static:80,dns+http://proxies:8080", "proxy")
    discovery = TargetDiscovery(specs, resolve=answers)

    first = await discovery.discover()
    answers.answer = ["10.0.0.3"]
    second = await discovery.discover()

    assert [t.url for t in first.targets] == [
        "http://static:80/metrics",
        "http://10.0.0.1:8080/metrics",
        "http://10.0.0.2:8080/metrics",
    ]
    assert [t.url for t in second.targets] == [
        "http://static:80/metrics",
        "http://10.0.0.3:8080/metrics",
    ]
    assert answers.asked == [("proxies", 8080), ("proxies", 8080)]


async def test_a_name_that_stops_resolving_keeps_its_last_answer_and_reports_it() -> None:
    answers = Answers(["10.0.0.1"])
    [spec] = parse_targets("dns+http://proxies:8080", "proxy")
    discovery = TargetDiscovery([spec], resolve=answers)
    await discovery.discover()

    answers.answer = OSError("Name or service not known")
    found = await discovery.discover()

    assert found.targets == [ScrapeTarget("http://10.0.0.1:8080/metrics", "proxy")]
    assert found.errors == {spec: "Name or service not known"}


async def test_a_name_that_never_resolved_gives_no_target() -> None:
    [spec] = parse_targets("dns+http://nowhere:8080", "proxy")
    discovery = TargetDiscovery([spec], resolve=Answers([]))

    found = await discovery.discover()

    assert found.targets == []
    assert found.errors == {spec: "no addresses"}


async def test_an_address_named_twice_is_scraped_once() -> None:
    specs = parse_targets("http://10.0.0.1:8080,dns+http://proxies:8080", "proxy")
    discovery = TargetDiscovery(specs, resolve=Answers(["10.0.0.1", "10.0.0.2"]))

    found = await discovery.discover()

    assert [t.url for t in found.targets] == [
        "http://10.0.0.1:8080/metrics",
        "http://10.0.0.2:8080/metrics",
    ]


async def test_the_system_resolver_finds_localhost() -> None:
    assert "127.0.0.1" in await system_resolver("localhost", 80)


# Real proxies behind a name


PORT = free_port()
ADDRESSES = {"127.0.0.1": "production", "127.0.0.2": "production", "::1": "canary"}


@pytest.fixture(scope="module")
def replicas() -> Iterator[None]:
    """Three proxies on one port: two production replicas and a canary."""
    with start_simulator() as sim:
        processes = [
            proxy(sim.url, variant, host=host, port=PORT) for host, variant in ADDRESSES.items()
        ]
        with running(*processes):
            yield


async def collector_service(
    tmp_path: Path, targets: str, resolve: Resolve = system_resolver
) -> CollectorService:
    """A collector in this process (its rounds run by the test), on a migrated SQLite file."""
    database_url = f"sqlite:///{tmp_path / 'rollups.db'}"
    await migrate.upgrade(database_url)
    settings = CollectorSettings(
        collector_targets=targets,
        collector_limiter_targets="",
        scrape_interval=1,
        database_url=database_url,
    )
    service = CollectorService(settings, resolve=resolve)
    await service.open()
    return service


async def test_localhost_is_resolved_by_the_system_and_scraped(
    replicas: None, tmp_path: Path
) -> None:
    service = await collector_service(tmp_path, f"dns+http://localhost:{PORT}")
    try:
        await service.run_round(1000.0)
    finally:
        await service.stop()

    assert [(s.url, s.up) for s in service.targets.values()] == [
        (f"http://127.0.0.1:{PORT}/metrics", True)
    ]


async def test_replicas_behind_a_name_are_followed_as_they_come_and_go(
    replicas: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    answers = Answers(["127.0.0.2"])
    service = await collector_service(tmp_path, f"dns+http://proxies.test:{PORT}", answers)
    slot = 1000.0

    async def two_rounds() -> dict[str, int]:
        # The first scrape of a new address is its baseline; the second yields figures.
        nonlocal slot
        for _ in range(2):
            slot += 1
            snapshots = await service.run_round(slot)
        return {s.variant: s.replicas for s in snapshots}

    try:
        one = await two_rounds()
        answers.answer = ["127.0.0.1", "127.0.0.2", "::1"]
        all_three = await two_rounds()
        targets_of_all_three = set(service.targets)
        answers.answer = ["::1", "127.0.0.2"]
        two_left = await two_rounds()
        targets_left = set(service.targets)
        caplog.set_level(logging.WARNING, logger="zai_proxy.collector")
        answers.answer = OSError("temporary failure in name resolution")
        unresolved = await two_rounds()
        dns_errors = service.registry.get_sample_value(
            m.SCRAPE_ERRORS, {"kind": "proxy", "reason": "dns"}
        )
    finally:
        await service.stop()

    assert one == {"production": 1}
    assert all_three == {"production": 2, "canary": 1}
    assert targets_of_all_three == {
        f"http://127.0.0.1:{PORT}/metrics",
        f"http://127.0.0.2:{PORT}/metrics",
        f"http://[::1]:{PORT}/metrics",
    }
    assert two_left == {"production": 1, "canary": 1}
    # The address that left is forgotten, not kept as a target that is down.
    assert targets_left == {f"http://127.0.0.2:{PORT}/metrics", f"http://[::1]:{PORT}/metrics"}
    assert unresolved == two_left  # the last answer still stands
    assert dns_errors == 2
    assert caplog.text.count("does not resolve") == 1
