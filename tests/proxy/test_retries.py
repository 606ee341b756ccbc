"""Retries and error classes through a real proxy: what is retried, how, and what passes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.support import ServiceProcess, free_port, scrape, start_proxy
from zai_proxy.proxy.retries import RetryableAttempt, RetryPolicy, UpstreamAnswer
from zai_proxy.shared.outcomes import Outcome
from zai_proxy.simulator.process import SimulatorProcess

CHAT = {"model": "glm-4.6", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def proxy(upstream: SimulatorProcess) -> Iterator[ServiceProcess]:
    # The scripted 429s would teach the limiter a low rate; pin it so only retries show.
    env = {
        "MAX_RETRIES": "3",
        "RETRY_BACKOFF_BASE": "0.05",
        "RETRY_BACKOFF_MAX": "2",
        "RATE_LIMIT_MIN": "1000",
    }
    with start_proxy(upstream.url, env=env) as service:
        yield service


def failing_first(n: int, **script: str) -> dict[str, str]:
    """Headers that make the simulator fail the first n attempts of this request."""
    headers = {
        "x-sim-fail-first": str(n),
        "x-sim-key": uuid.uuid4().hex,
        "x-request-id": uuid.uuid4().hex,
    }
    headers.update({f"x-sim-{name.replace('_', '-')}": value for name, value in script.items()})
    return headers


def attempts_seen(upstream: SimulatorProcess, headers: dict[str, str]) -> int:
    record = httpx.get(f"{upstream.url}/_sim/requests/{headers['x-request-id']}").json()
    return int(record["seen"])


def retries(proxy: ServiceProcess, reason: str) -> float:
    return scrape(proxy.url).value("proxy_retry_attempts_total", reason=reason)


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        ({"zai_code": "1305"}, "rate_frequency"),
        ({"zai_code": "1303", "error_shape": "flat"}, "rate_frequency"),
        ({"zai_code": "1302"}, "rate_concurrency"),
        ({"zai_code": "1302", "error_shape": "anthropic"}, "rate_concurrency"),
        ({"zai_code": "1312"}, "rate_congestion"),
        ({"status": "429", "body": '{"error":{"message":"slow down"}}'}, "rate_frequency"),
        ({"status": "429", "body": "not json at all"}, "rate_frequency"),
        (
            {"status": "529", "body": '{"type":"error","error":{"type":"overloaded_error"}}'},
            "rate_congestion",
        ),
    ],
)
def test_retryable_429s_are_retried_until_they_succeed(
    proxy: ServiceProcess, upstream: SimulatorProcess, script: dict[str, str], reason: str
) -> None:
    before = retries(proxy, reason)
    errors_before = scrape(proxy.url).value("proxy_upstream_errors_total", type=reason)
    headers = failing_first(2, **script)
    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 200
    assert response.json()["object"] == "chat.completion"
    assert attempts_seen(upstream, headers) == 3
    assert retries(proxy, reason) == before + 2
    after = scrape(proxy.url).value("proxy_upstream_errors_total", type=reason)
    assert after == errors_before + 2


@pytest.mark.parametrize("code", ["1308", "1310"])
def test_quota_429s_pass_through_at_once_with_a_retry_after(
    proxy: ServiceProcess, upstream: SimulatorProcess, code: str
) -> None:
    headers = failing_first(5, zai_code=code)
    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 429
    assert code in response.text
    assert attempts_seen(upstream, headers) == 1
    # The reset time in the body (5 hours or a week away) becomes Retry-After.
    expected = 5 * 3600 if code == "1308" else 7 * 24 * 3600
    assert abs(int(response.headers["retry-after"]) - expected) < 120
    assert "x-ratelimit-source" not in response.headers


@pytest.mark.parametrize("status", ["500", "502", "503", "400", "404"])
def test_other_errors_pass_through_untouched(
    proxy: ServiceProcess, upstream: SimulatorProcess, status: str
) -> None:
    body = '{"error": {"message": "as the upstream said it"}}'
    headers = failing_first(1, status=status, body=body)
    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == int(status)
    assert response.text == body
    assert attempts_seen(upstream, headers) == 1


def test_when_retries_run_out_the_last_upstream_answer_passes(
    proxy: ServiceProcess, upstream: SimulatorProcess
) -> None:
    headers = failing_first(10, zai_code="1305")
    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "1305"
    assert attempts_seen(upstream, headers) == 4


def test_retry_after_is_honoured(proxy: ServiceProcess, upstream: SimulatorProcess) -> None:
    headers = failing_first(1, zai_code="1305", retry_after="1")
    started = time.monotonic()
    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 200
    assert time.monotonic() - started >= 1.0


def test_a_retry_after_beyond_the_longest_back_off_goes_back_to_the_client(
    proxy: ServiceProcess, upstream: SimulatorProcess
) -> None:
    headers = failing_first(1, zai_code="1305", retry_after="30")
    started = time.monotonic()
    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "30"
    assert time.monotonic() - started < 1.0
    assert attempts_seen(upstream, headers) == 1


def test_a_stream_is_retried_before_its_first_byte(
    proxy: ServiceProcess, upstream: SimulatorProcess
) -> None:
    headers = failing_first(2, zai_code="1302")
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions", json={**CHAT, "stream": True}, headers=headers
    )
    assert response.status_code == 200
    assert response.text.endswith("data: [DONE]\n\n")
    assert attempts_seen(upstream, headers) == 3


def test_empty_answers_are_retried_then_reported(
    proxy: ServiceProcess, upstream: SimulatorProcess
) -> None:
    before = retries(proxy, "network")
    headers = {"x-sim-empty": "1", "x-request-id": uuid.uuid4().hex}
    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 502
    assert "answered nothing" in response.json()["error"]["message"]
    assert attempts_seen(upstream, headers) == 4
    assert retries(proxy, "network") == before + 3


def test_network_errors_are_retried_then_answered_502() -> None:
    env = {"MAX_RETRIES": "2", "RETRY_BACKOFF_BASE": "0.01"}
    with start_proxy(f"http://127.0.0.1:{free_port()}", env=env) as proxy:
        response = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT)
        assert response.status_code == 502
        metrics = scrape(proxy.url)
    assert metrics.value("proxy_retry_attempts_total", reason="network") == 2
    assert metrics.value("proxy_upstream_errors_total", type="network") == 3


def test_a_client_that_leaves_stops_further_attempts(
    proxy: ServiceProcess, upstream: SimulatorProcess
) -> None:
    headers = failing_first(10, zai_code="1305", retry_after="1")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT, headers=headers, timeout=0.5)
    time.sleep(2.5)
    assert attempts_seen(upstream, headers) == 1


def test_the_proxy_answers_429_itself_when_the_limiter_wait_is_over_budget(
    upstream: SimulatorProcess,
) -> None:
    env = {
        "RATE_LIMIT_INITIAL": "1",
        "RATE_LIMIT_MIN": "0.5",
        "RATE_LIMIT_BURST": "0",
        "RATE_LIMIT_MAX_WAIT": "0.3",
    }
    with start_proxy(upstream.url, env=env) as proxy, httpx.Client() as client:
        answers = [client.post(f"{proxy.url}/v1/chat/completions", json=CHAT) for _ in range(3)]
        metrics = scrape(proxy.url)
    limited = [a for a in answers if a.status_code == 429]
    assert answers[0].status_code == 200
    assert limited, [a.status_code for a in answers]
    for answer in limited:
        assert answer.headers["x-ratelimit-source"] == "proxy"
        assert int(answer.headers["retry-after"]) >= 1
        assert answer.json()["error"]["code"] == "proxy_rate_limited"
    assert metrics.value("proxy_rate_limited_total") == len(limited)
    assert metrics.value("proxy_rate_limit_wait_seconds_count") >= 1
    # The refusals are counted as such, and their wait is kept apart from upstream answers.
    assert metrics.value("proxy_refusals_total", reason="proxy_rate_limited") == len(limited)
    duration = "proxy_request_duration_seconds_count"
    assert metrics.value(duration, origin="proxy") == len(limited)
    assert metrics.value(duration, origin="upstream") == len(answers) - len(limited)
    assert metrics.value("proxy_time_to_first_byte_seconds_count") == len(answers) - len(limited)


def test_a_1302_is_retried_without_back_off_and_other_429s_back_off() -> None:
    # The retry of a 1302 waits for a free slot in the limiter, not for a blind back-off.
    policy = RetryPolicy(max_retries=3, backoff_base=1.0, backoff_max=8.0)
    concurrency = RetryableAttempt(Outcome.RATE_CONCURRENCY)
    frequency = RetryableAttempt(Outcome.RATE_FREQUENCY)
    assert [policy.delay(concurrency, attempt) for attempt in (1, 2, 3)] == [0.0, 0.0, 0.0]
    assert max(policy.delay(frequency, 3) for _ in range(50)) > 1.0
    # A hint the upstream gave is still honoured.
    hinted = UpstreamAnswer(429, ((b"retry-after", b"2"),), b"")
    assert policy.delay(RetryableAttempt(Outcome.RATE_CONCURRENCY, answer=hinted), 1) == 2.0
