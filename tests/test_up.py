"""`zai-proxy up` and `zai-proxy demo` as real processes, read over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support import TEST_KEY, free_port, interrupt, scrape, wait_http, wait_until
from zai_proxy.simulator.process import SimulatorProcess, start_simulator


@pytest.fixture(scope="module")
def upstream() -> Iterator[SimulatorProcess]:
    with start_simulator() as simulator:
        yield simulator


def stack_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ZAI_", "REDIS_", "DATABASE_", "COLLECTOR_", "LIMITER_"))
    }
    env.update(
        PROXY_PORT=str(free_port()),
        LIMITER_PORT=str(free_port()),
        COLLECTOR_PORT=str(free_port()),
        DASHBOARD_PORT=str(free_port()),
        DEMO_SIMULATOR_PORT=str(free_port()),
        DEMO_CANARY_PORT=str(free_port()),
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp / 'zai.db'}",
        SCRAPE_INTERVAL="1",
        LIMITER_ADMIN_TOKEN="admin-secret",
    )
    env.update(extra)
    return env


@contextmanager
def running(command: str, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen, Path]]:
    log = Path(tempfile.mkstemp(prefix=f"zai-{command}-", suffix=".log")[1])
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "zai_proxy", command], env=env, stdout=out, stderr=out
        )
    try:
        yield process, log
    finally:
        interrupt(process)


def url(env: dict[str, str], service: str) -> str:
    return f"http://127.0.0.1:{env[f'{service}_PORT']}"


def test_up_serves_proxy_limiter_collector_and_dashboard_and_stops_on_ctrl_c(
    upstream: SimulatorProcess, tmp_path: Path
) -> None:
    env = stack_env(
        tmp_path,
        ZAI_API_KEY=TEST_KEY,
        ZAI_TARGET_URL=f"{upstream.url}/api/paas/v4",
        ZAI_ANTHROPIC_URL=f"{upstream.url}/api/anthropic",
    )
    with running("up", env) as (process, log):
        wait_http(f"{url(env, 'DASHBOARD')}/healthz", timeout=40, process=process)
        # The collector counts from its first look at the proxy on (its first round).
        collector = url(env, "COLLECTOR")
        wait_until(lambda: httpx.get(f"{collector}/ready").status_code == 200, timeout=20)
        banner = log.read_text()
        for part in ("proxy (production)", "limiter", "collector", "dashboard"):
            assert part in banner
        assert str(tmp_path / "zai.db") in banner

        chat = {"model": "glm-4.6", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"x-sim-prompt-tokens": "100", "x-sim-completion-tokens": "20"}
        for _ in range(10):
            answer = httpx.post(f"{url(env, 'PROXY')}/v1/chat/completions", json=chat,
                                headers=headers)  # fmt: skip
            assert answer.status_code == 200

        limiter = scrape(url(env, "LIMITER"))
        assert limiter.value("limiter_leader") == 1
        state = httpx.get(
            f"{url(env, 'LIMITER')}/state", headers={"authorization": "Bearer admin-secret"}
        ).json()
        assert state["pools"], state
        assert state["tick_seconds"] == 0.25  # RATE_LIMIT_TICK's default
        # Ten requests and not one refused: no limit learned, no concurrency cap.
        for pool in state["pools"].values():
            assert (pool["ceiling"], pool["concurrency_limit"]) == (None, None), state

        def stored_tokens() -> float:
            history = httpx.get(f"{url(env, 'DASHBOARD')}/api/metrics?range=5m").json()
            return sum(p["tokens_in_total"] for p in history["series"].get("production", []))

        # Every token sent, exactly, once the collector's rounds have covered them.
        wait_until(lambda: stored_tokens() >= 1000, timeout=20)
        time.sleep(2.5)
        assert stored_tokens() == 1000
        limiter_view = httpx.get(f"{url(env, 'DASHBOARD')}/api/limiter").json()
        assert limiter_view["available"] is True

        status = subprocess.run(
            [sys.executable, "-m", "zai_proxy", "status"], env=env, capture_output=True,
            timeout=30, text=True,
        )  # fmt: skip
        assert status.returncode == 0, status.stdout + status.stderr
        for part in ("proxy", "limiter", "collector", "dashboard"):
            assert part in status.stdout
        assert "last minute" in status.stdout
        production = next(
            line for line in status.stdout.splitlines() if line.startswith("production")
        )
        assert production.split()[1] == "10"  # requests in the last minute

        process.send_signal(signal.SIGINT)
        assert process.wait(20) == 0
    assert "Traceback" not in log.read_text()


def test_demo_shows_traffic_tokens_both_variants_and_the_limiter_learning(tmp_path: Path) -> None:
    env = stack_env(tmp_path, ACCESS_LOG_FILE=str(tmp_path / "access.log"))
    with running("demo", env) as (process, log):
        wait_http(f"{url(env, 'DASHBOARD')}/healthz", timeout=40, process=process)

        def both_variants_have_traffic() -> bool:
            status = httpx.get(f"{url(env, 'DASHBOARD')}/api/status").json()
            latest = [v.get("latest") or {} for v in status["variants"].values()]
            return len(latest) == 2 and all(p.get("tokens_in_total", 0) > 0 for p in latest)

        wait_until(both_variants_have_traffic, timeout=40)
        # The limiter has learned a ceiling near the hidden limit (30/s at the start).
        wait_until(lambda: scrape(url(env, "LIMITER")).value("limiter_ceiling") > 0, timeout=40)
        ceiling = scrape(url(env, "LIMITER")).value("limiter_ceiling")
        assert 10 < ceiling < 60, ceiling
        # Not a terminal: a plain progress line every few seconds (tests/test_demo.py).
        wait_until(lambda: "demo 00:" in log.read_text(), timeout=20)
        process.send_signal(signal.SIGINT)
        assert process.wait(20) == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ZAI_API_KEY": ""}, "ZAI_API_KEY is not set"),
        ({"ZAI_TARGET_URL": "ftp://nowhere"}, "ZAI_TARGET_URL"),
        ({"DATABASE_URL": "sqlite+aiosqlite:////proc/forbidden/zai.db"}, "zai.db"),
    ],
)
def test_up_refuses_bad_configuration_with_one_clear_line(
    tmp_path: Path, change: dict[str, str], message: str
) -> None:
    env = stack_env(tmp_path, **{"ZAI_API_KEY": TEST_KEY, **change})
    result = subprocess.run(
        [sys.executable, "-m", "zai_proxy", "up"], env=env, capture_output=True, timeout=60
    )
    assert result.returncode == 2
    err = result.stderr.decode()
    assert message in err
    assert "Traceback" not in err


def test_up_refuses_a_taken_port_with_one_clear_line(tmp_path: Path) -> None:
    env = stack_env(tmp_path, ZAI_API_KEY=TEST_KEY)
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", int(env["DASHBOARD_PORT"])))
        holder.listen()
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "zai_proxy", "up"], env=env, capture_output=True, timeout=60
        )
    assert result.returncode == 2
    err = result.stderr.decode()
    assert f"port {env['DASHBOARD_PORT']} (dashboard) is already in use" in err
    assert "Traceback" not in err
    assert time.monotonic() - started < 30


def test_up_composes_the_parts_settings_with_its_defaults_only_where_the_environment_is_silent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from zai_proxy.limiter.controller import DEFAULT_TICK_SECONDS
    from zai_proxy.up import DEMO_DATABASE_URL, DEMO_KEY, compose

    for name in list(os.environ):
        if name.startswith(("ZAI_", "REDIS_", "DATABASE_", "COLLECTOR_", "LIMITER_", "RATE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RATE_LIMIT_INITIAL", "3")
    monkeypatch.setenv("LIMITER_ADMIN_TOKEN", "mine")
    config = compose(demo=True, host="127.0.0.2", port=9999)
    production, canary = config.proxies
    assert production.zai_api_key.get_secret_value() == DEMO_KEY
    assert production.proxy_port == 9999 and canary.deployment_variant == "canary"
    assert production.zai_target_url.startswith("http://127.0.0.2:")
    assert config.limits.rate_limit_initial == 3  # set: kept
    # Unset, and the demo has no limiter defaults of its own: the limiter's.
    assert config.limits.rate_limit_tick == DEFAULT_TICK_SECONDS
    assert config.limits.zai_api_key == production.zai_api_key  # the pool is the proxies'
    assert config.limits.limiter_admin_token.get_secret_value() == "mine"
    assert config.dashboard.limiter_admin_token.get_secret_value() == "mine"
    assert config.collector.database_url == config.dashboard.database_url == DEMO_DATABASE_URL
    assert config.collector.collector_targets == (
        f"http://127.0.0.2:9999,http://127.0.0.2:{canary.proxy_port}"
    )
    # Nothing was written to the environment for the parts to read.
    assert "ZAI_API_KEY" not in os.environ and "COLLECTOR_TARGETS" not in os.environ
