"""The dashboard's per-client figures against ground truth: what each client saw.

`zai-proxy up` (proxy, limiter, collector, dashboard API) with two client keys runs
against the simulator; ``ide`` sends answers, ``ci`` (batch, two requests a minute) sends
more than its budget allows. Once the collector has rolled them up, ``/api/metrics``'s
``clients`` (the Clients panel's figures) must equal what each client counted: its
answers, its 2xx, its refusals by reason, its class, and the tokens of the usage it was
answered with.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support import ServiceProcess, launch_stack, wait_until
from zai_proxy.simulator.process import SimulatorProcess, start_simulator

IDE, CI = "sk-client-ide-000001", "sk-client-ci-0000002"
CHAT = {"model": "glm-4.6", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
IDE_REQUESTS, CI_REQUESTS, CI_BUDGET = 7, 5, 2


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[ServiceProcess, SimulatorProcess]]:
    with start_simulator() as simulator:
        clients = f"ide:{IDE},ci:{CI} class=batch rpm={CI_BUDGET}"
        service = launch_stack(simulator.url, {"SCRAPE_INTERVAL": "1", "PROXY_API_KEYS": clients})
        try:
            yield service, simulator
        finally:
            service.stop(timeout=20)
        assert "Traceback" not in service.log()


def shown(stack: ServiceProcess) -> dict[str, Any]:
    dashboard = f"http://127.0.0.1:{stack.env['DASHBOARD_PORT']}"
    answer = httpx.get(f"{dashboard}/api/metrics", params={"range": "5m"}, timeout=10)
    answer.raise_for_status()
    clients: dict[str, Any] = answer.json()["clients"]
    return clients


@pytest.mark.timeout(120)
def test_each_clients_figures_are_what_it_saw(
    stack: tuple[ServiceProcess, SimulatorProcess],
) -> None:
    service, simulator = stack
    seen: dict[str, dict[str, Any]] = {
        name: {"requests": 0, "ok": 0, "refused": 0, "tokens_in": 0, "tokens_out": 0}
        for name in ("ide", "ci")
    }
    for name, key, count in (("ide", IDE, IDE_REQUESTS), ("ci", CI, CI_REQUESTS)):
        for _ in range(count):
            answer = httpx.post(
                f"{service.url}/v1/chat/completions",
                json=CHAT,
                headers={"authorization": f"Bearer {key}"},
                timeout=30,
            )
            mine = seen[name]
            mine["requests"] += 1
            if answer.status_code == 200:
                mine["ok"] += 1
                usage = answer.json()["usage"]
                mine["tokens_in"] += usage["prompt_tokens"]
                mine["tokens_out"] += usage["completion_tokens"]
            else:
                assert answer.status_code == 429
                assert answer.headers["x-proxy-error"] == "client_budget_exceeded"
                mine["refused"] += 1
    assert seen["ci"]["ok"] == CI_BUDGET and seen["ci"]["refused"] == CI_REQUESTS - CI_BUDGET
    served = httpx.get(f"{simulator.url}/_sim/stats").json()["accepted"]
    assert served == IDE_REQUESTS + CI_BUDGET  # the upstream's count: refusals never left

    def rolled_up() -> bool:
        clients = shown(service)
        return all(
            clients.get(name, {}).get("requests") == mine["requests"] for name, mine in seen.items()
        )

    started = time.monotonic()
    wait_until(rolled_up, timeout=30, interval=0.5)
    clients = shown(service)
    for name, mine in seen.items():
        figures = clients[name]
        assert figures["requests"] == mine["requests"], (name, figures)
        assert figures["requests_2xx"] == mine["ok"], (name, figures)
        assert figures["admitted"] == mine["ok"], (name, figures)
        assert figures["refused"] == mine["refused"], (name, figures)
        assert figures["tokens_in"] == mine["tokens_in"], (name, figures)
        assert figures["tokens_out"] == mine["tokens_out"], (name, figures)
    assert clients["ci"]["refused_by"] == {"client_budget_rpm": CI_REQUESTS - CI_BUDGET}
    assert clients["ci"]["admitted_by_class"] == {"batch": CI_BUDGET}
    assert clients["ide"]["admitted_by_class"] == {"interactive": IDE_REQUESTS}
    assert clients["ide"]["refused_by"] == {}
    print(f"rolled up in {time.monotonic() - started:.1f} s")
