"""Several upstream keys: each its own pool; a key whose quota is spent is parked and the
request moves on, unseen by the client; all parked is one 429 naming why. Real processes:
the simulator with per-key limits (--keys), the proxy, and (for the admin API) the limiter
and Redis.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import ServiceProcess, own_prefix, scrape, start_limiter, start_proxy, wait_until
from zai_proxy.proxy.classify import KeyVerdict, key_verdict
from zai_proxy.shared.upstream_keys import DEFAULT_ALIAS, UpstreamKey, upstream_keys
from zai_proxy.simulator.process import SimulatorProcess, start_simulator

CHAT = {"model": "glm-4.6", "messages": [{"role": "user", "content": "hi"}]}
ALPHA, BETA, GAMMA = "sk-alpha-secret-0001", "sk-beta-secret-00002", "sk-gamma-secret-0003"
KEYS = f"alpha:{ALPHA},beta:{BETA},gamma:{GAMMA}"
SECRETS = (ALPHA, BETA, GAMMA)


def simulator(**limits: dict[str, object]) -> SimulatorProcess:
    keys = {"alpha": ALPHA, "beta": BETA, "gamma": GAMMA}
    spec = {name: {"key": keys[name], **extra} for name, extra in limits.items()}
    return start_simulator("--keys", json.dumps(spec))


def proxy_env(keys: str = KEYS, **extra: str) -> dict[str, str]:
    return {"ZAI_API_KEY": "", "ZAI_API_KEYS": keys, **extra}


def key_stats(upstream: SimulatorProcess) -> dict[str, dict[str, object]]:
    stats: dict[str, dict[str, object]] = httpx.get(f"{upstream.url}/_sim/stats").json()["keys"]
    return stats


def accepted(upstream: SimulatorProcess, name: str) -> int:
    return int(key_stats(upstream)[name]["accepted"])  # type: ignore[call-overload]


def refused(upstream: SimulatorProcess, name: str, code: str) -> int:
    return int(key_stats(upstream)[name]["rejected_429"].get(code, 0))  # type: ignore[attr-defined]


# --- configuration and verdicts --------------------------------------------------------------


def test_keys_get_aliases_and_pools_and_zai_api_key_is_the_default_alias(tmp_path: Path) -> None:
    file = tmp_path / "keys"
    file.write_text("# plan B\ngamma sk-gamma-secret-0003\n")
    keys = upstream_keys("sk-single-key-000", f"alpha:{ALPHA}, beta:{BETA}", file, "")
    assert [(k.alias, k.pool) for k in keys] == [
        (DEFAULT_ALIAS, keys[0].pool),
        ("alpha", "key-alpha"),
        ("beta", "key-beta"),
        ("gamma", "key-gamma"),
    ]
    # The single key keeps the pool it always had: a digest, never the key.
    assert keys[0].pool.startswith("key-") and "single" not in keys[0].pool
    assert [k.pool for k in upstream_keys("", f"alpha:{ALPHA}", None, "team")] == ["team-alpha"]
    assert "secret" not in repr(keys)
    assert upstream_keys("", "", None, "") == []
    assert isinstance(keys[1], UpstreamKey)


@pytest.mark.parametrize(
    "inline",
    [
        f"alpha:{ALPHA},alpha:{BETA}",  # an alias twice
        f"alpha:{ALPHA},beta:{ALPHA}",  # a key twice
        f"default:{ALPHA}",  # ZAI_API_KEY's alias
        "alpha:short",
        f"bad alias:{ALPHA}",
    ],
)
def test_bad_upstream_keys_are_refused_without_showing_a_key(inline: str) -> None:
    with pytest.raises(ValueError) as error:
        upstream_keys("sk-single-key-000", inline, None, "")
    assert "ZAI_API_KEYS" in str(error.value)
    assert not any(secret in str(error.value) for secret in (*SECRETS, "short"))


def zai(code: str, message: str = "") -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


@pytest.mark.parametrize(
    ("body", "hint", "verdict"),
    [
        (zai("1308"), 3600.0, KeyVerdict(True, 3600.0, "its 5-hour quota is spent (Z.ai 1308)")),
        (zai("1310"), 0.0, KeyVerdict(True, 1.0, "its weekly/monthly quota is spent (Z.ai 1310)")),
        (zai("1304"), None, KeyVerdict(True, 60.0, "its daily call limit is reached (Z.ai 1304)")),
        (zai("1113"), 30.0, KeyVerdict(True, math.inf, "its account is in arrears (Z.ai 1113)")),
        (zai("1309"), None, KeyVerdict(True, math.inf, "its plan has expired (Z.ai 1309)")),
        (zai("1311"), None, KeyVerdict(False, 0.0, "the model is not in its plan (Z.ai 1311)")),
        (zai("1305"), None, None),
        (b"not json", None, None),
    ],
)
def test_a_quota_class_answer_parks_its_key_until_its_reset_or_until_lifted(
    body: bytes, hint: float | None, verdict: KeyVerdict | None
) -> None:
    assert key_verdict(body, hint) == verdict


# --- routing on real processes ---------------------------------------------------------------


@pytest.fixture(scope="module")
def spent_alpha() -> Iterator[tuple[SimulatorProcess, ServiceProcess]]:
    """alpha's 5-hour quota holds two requests; beta and gamma have none."""
    with (
        simulator(alpha={"quota_requests": "5h=2"}, beta={}, gamma={}) as upstream,
        start_proxy(upstream.url, env=proxy_env()) as proxy,
    ):
        yield upstream, proxy


def test_a_spent_key_is_parked_and_its_requests_move_to_the_others_unseen(
    spent_alpha: tuple[SimulatorProcess, ServiceProcess],
) -> None:
    upstream, proxy = spent_alpha
    answers = [httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT) for _ in range(30)]
    assert [a.status_code for a in answers] == [200] * 30
    # alpha took its two, answered 1308 once, and was never asked again: parked.
    assert accepted(upstream, "alpha") == 2
    assert refused(upstream, "alpha", "1308") == 1
    assert accepted(upstream, "beta") + accepted(upstream, "gamma") == 28
    assert accepted(upstream, "beta") > 0 and accepted(upstream, "gamma") > 0

    def parked_metrics() -> bool:
        return scrape(proxy.url).value("proxy_upstream_key_parked", key="alpha") == 1

    wait_until(parked_metrics, timeout=5)
    metrics = scrape(proxy.url)
    until = metrics.value("proxy_upstream_key_parked_until_timestamp_seconds", key="alpha")
    assert abs(until - (time.time() + 5 * 3600)) < 120  # the reset the 1308 named (UTC+8)
    assert metrics.value("proxy_upstream_key_parked", key="beta") == 0
    assert metrics.value("proxy_upstream_key_attempts_total", key="alpha") == 3
    assert {s["key"] for s in metrics.series("proxy_upstream_key_rate")} == {
        "alpha",
        "beta",
        "gamma",
    }


def test_no_upstream_key_appears_in_metrics_or_logs(
    spent_alpha: tuple[SimulatorProcess, ServiceProcess],
) -> None:
    _, proxy = spent_alpha
    httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT)
    text = httpx.get(f"{proxy.url}/metrics").text
    log = proxy.log()
    assert "key=alpha parked" in log
    for secret in SECRETS:
        assert secret not in text
        assert secret not in log


def test_when_every_key_is_parked_the_client_gets_one_429_with_the_earliest_reset() -> None:
    # alpha's window resets in 5 hours, beta's in one: after one request each, both spent.
    with (
        simulator(alpha={"quota_requests": "5h=1"}, beta={"quota_requests": "1h=1"}) as upstream,
        start_proxy(upstream.url, env=proxy_env(f"alpha:{ALPHA},beta:{BETA}")) as proxy,
    ):
        first = [httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT) for _ in range(2)]
        assert [a.status_code for a in first] == [200, 200]
        answer = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT)
        assert answer.status_code == 429
        assert answer.headers["x-ratelimit-source"] == "proxy"
        assert abs(int(answer.headers["retry-after"]) - 3600) < 120
        error = answer.json()["error"]
        assert error["code"] == "upstream_keys_parked"
        assert "alpha: its 5-hour quota is spent (Z.ai 1308)" in error["message"]
        assert "beta: its 5-hour quota is spent (Z.ai 1308)" in error["message"]
        # The Anthropic dialect gets its own error shape.
        messages = httpx.post(f"{proxy.url}/v1/messages", json={**CHAT, "max_tokens": 5})
        assert messages.status_code == 429
        assert messages.json()["error"]["type"] == "rate_limit_error"
        # Each key answered its quota once; the parked proxy asked neither again.
        assert refused(upstream, "alpha", "1308") + refused(upstream, "beta", "1308") == 2
        assert not any(secret in answer.text for secret in SECRETS)


def test_a_model_outside_a_key_s_plan_moves_the_request_without_parking_the_key() -> None:
    with (
        simulator(alpha={"refuse_code": 1311}, beta={}) as upstream,
        start_proxy(upstream.url, env=proxy_env(f"alpha:{ALPHA},beta:{BETA}")) as proxy,
    ):
        answers = [httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT) for _ in range(8)]
        assert [a.status_code for a in answers] == [200] * 8
        assert accepted(upstream, "beta") == 8
        assert refused(upstream, "alpha", "1311") >= 2  # still asked: not parked
        assert scrape(proxy.url).value("proxy_upstream_key_parked", key="alpha") == 0


def test_when_no_key_has_the_model_the_upstream_answer_passes() -> None:
    with (
        simulator(alpha={"refuse_code": 1311}, beta={"refuse_code": 1311}) as upstream,
        start_proxy(upstream.url, env=proxy_env(f"alpha:{ALPHA},beta:{BETA}")) as proxy,
    ):
        answer = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT)
        assert (answer.status_code, answer.json()["error"]["code"]) == (429, "1311")
        assert refused(upstream, "alpha", "1311") + refused(upstream, "beta", "1311") == 2


def test_an_operator_parks_and_lifts_a_key_through_the_limiter_for_every_replica(
    real_redis_url: str,
) -> None:
    admin = {"authorization": "Bearer admin-secret"}
    with (
        own_prefix(real_redis_url) as prefix,
        simulator(alpha={}, gamma={"refuse_code": 1113}) as upstream,
    ):
        env = proxy_env(
            f"alpha:{ALPHA},gamma:{GAMMA}",
            REDIS_URL=real_redis_url,
            REDIS_PREFIX=prefix,
            LIMITER_ADMIN_TOKEN="admin-secret",
        )
        with start_limiter(env) as limiter, start_proxy(upstream.url, env=env) as proxy:
            for _ in range(6):
                assert httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT).status_code == 200
            # gamma (arrears) answered once and is parked until lifted, for every replica.
            assert refused(upstream, "gamma", "1113") == 1
            state = httpx.get(f"{limiter.url}/state", headers=admin).json()["pools"]
            assert state["key-gamma"]["key"] == "gamma"
            assert state["key-gamma"]["parked"]["until"] is None
            assert "arrears" in state["key-gamma"]["parked"]["reason"]

            parked = httpx.post(f"{limiter.url}/park", json={"key": "alpha"}, headers=admin)
            assert parked.json()["pool"] == "key-alpha"
            answer = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT)
            assert answer.status_code == 429
            assert "alpha: parked by an operator" in answer.json()["error"]["message"]
            assert answer.headers["retry-after"] == "300"  # both until lifted

            lifted = httpx.post(f"{limiter.url}/lift", json={"key": "alpha"}, headers=admin)
            assert lifted.json() == {"pool": "key-alpha", "lifted": True}
            wait_until(
                lambda: (
                    httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT).status_code == 200
                ),
                timeout=8,
                interval=0.5,
            )
            unknown = httpx.post(f"{limiter.url}/lift", json={"key": "nobody"}, headers=admin)
            assert unknown.status_code == 400

            # `zai-proxy status` lists the pools by key alias, with their parking.
            def status() -> str:
                port = limiter.url.rsplit(":", 1)[1]
                done = subprocess.run(
                    [sys.executable, "-m", "zai_proxy", "status"],
                    env={**os.environ, "LIMITER_PORT": port},
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                return done.stdout

            wait_until(lambda: "until lifted" in status(), timeout=10, interval=0.5)
            rows = {line.split()[0]: line.split() for line in status().splitlines() if line}
            assert rows["key-gamma"][1] == "gamma" and rows["key-gamma"][-2:] == ["until", "lifted"]
            assert rows["key-alpha"][1] == "alpha" and rows["key-alpha"][-1] == "no"
            for secret in SECRETS:
                assert secret not in limiter.log() and secret not in proxy.log()


def test_a_key_one_replica_parked_is_skipped_by_the_others_without_asking_the_upstream(
    real_redis_url: str,
) -> None:
    with (
        own_prefix(real_redis_url) as prefix,
        simulator(alpha={"quota_requests": "5h=1"}, beta={}) as upstream,
    ):
        env = proxy_env(f"alpha:{ALPHA},beta:{BETA}", REDIS_URL=real_redis_url, REDIS_PREFIX=prefix)
        with (
            start_proxy(upstream.url, env=env) as first,
            start_proxy(upstream.url, env=env) as second,
        ):
            # The first replica spends alpha's quota and meets its 1308.
            for _ in range(4):
                assert httpx.post(f"{first.url}/v1/chat/completions", json=CHAT).status_code == 200
            assert refused(upstream, "alpha", "1308") == 1
            # The second never sends alpha anything more: the store refuses it as parked.
            for _ in range(6):
                assert httpx.post(f"{second.url}/v1/chat/completions", json=CHAT).status_code == 200
            assert refused(upstream, "alpha", "1308") == 1
            assert accepted(upstream, "alpha") == 1
            wait_until(
                lambda: scrape(second.url).value("proxy_upstream_key_parked", key="alpha") == 1,
                timeout=5,
            )
