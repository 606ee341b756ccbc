"""The 2-minute soak: bench/soak.py drives mixed plain and streamed traffic with scripted
faults through two proxies sharing a real Redis with the limiter, scraped by the collector;
memory, descriptors and Redis keys stay flat, and every answer is the expected one.

The 30-minute run is the same script with its default duration (not in CI).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOAK = ROOT / "bench" / "soak.py"
DURATION_S = 120
RATE = 60.0
# Start-up, the settle wait after the load and the report, on a busy machine.
RUN_TIMEOUT_S = DURATION_S + 150
STOP_TIMEOUT_S = 30
JUDGED = ("proxy-0", "proxy-1", "limiter", "collector")
KINDS = (
    "plain",
    "streamed",
    "slow",
    "client_disconnect",
    "429_quota",
    "429_retried",
    "429_exhausted",
    "5xx",
    "reset_stream",
    "reset_plain",
    "stall",
)
MIN_PER_KIND = 10  # the rarest kind averages ~80 in two minutes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(RUN_TIMEOUT_S + STOP_TIMEOUT_S + 30)]


def run_soak(redis_url: str) -> tuple[int, str, str]:
    """bench/soak.py --json in its own process group, stopped with all its children on a
    timeout (Ctrl-C first, so that it stops its services itself)."""
    command = [sys.executable, str(SOAK), "--duration", str(DURATION_S), "--rate", str(RATE)]
    command += ["--json", "--redis-url", redis_url]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGINT)
        try:
            stdout, stderr = process.communicate(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
        pytest.fail(f"the soak did not end within {RUN_TIMEOUT_S} s:\n{stderr[-4000:]}")
    return process.returncode, stdout, stderr


@pytest.fixture(scope="module")
def soak(real_redis_url: str) -> tuple[int, dict[str, Any], str]:
    """Exit status, JSON summary and progress output of one 2-minute soak."""
    returncode, stdout, stderr = run_soak(real_redis_url)
    try:
        summary = json.loads(stdout)
    except ValueError:
        pytest.fail(f"no summary (exit {returncode}):\n{stderr[-4000:]}")
    return returncode, summary, stderr


@pytest.fixture(scope="module")
def summary(soak: tuple[int, dict[str, Any], str]) -> dict[str, Any]:
    return soak[1]


def test_the_soak_passes_its_own_thresholds(soak: tuple[int, dict[str, Any], str]) -> None:
    returncode, summary, stderr = soak
    print(stderr[stderr.find("soak:") :])
    assert summary["problems"] == []
    assert summary["passed"]
    assert returncode == 0


def test_traffic_flowed_with_every_kind_of_fault(summary: dict[str, Any]) -> None:
    requests = summary["requests"]
    assert requests["total"] >= 0.8 * RATE * DURATION_S
    rare = {kind: n for kind in KINDS if (n := requests["sent"].get(kind, 0)) < MIN_PER_KIND}
    assert rare == {}
    assert summary["collector"]["written"] > 0


def test_every_answer_is_the_one_expected_for_its_kind(summary: dict[str, Any]) -> None:
    requests = summary["requests"]
    assert requests["unexpected_total"] == 0, requests["examples"]


def test_resident_memory_of_each_process_stays_flat(summary: dict[str, Any]) -> None:
    for name in JUDGED:
        rss = summary["processes"][name]["rss_mb"]
        assert rss["growth"] <= rss["limit"], (name, rss)
        assert rss["slope_per_hour"] * rss["span_s"] / 3600 <= rss["limit"], (name, rss)
    for name in ("proxy-0", "proxy-1"):
        rss = summary["processes"][name]["rss_mb"]
        assert rss["kb_per_request"] <= summary["thresholds"]["rss_per_request_kb"], (name, rss)


def test_open_descriptors_return_to_their_start_once_the_load_ends(
    summary: dict[str, Any],
) -> None:
    allowed = summary["thresholds"]["fd_growth"]
    for name in JUDGED:
        fds = summary["processes"][name]["fds"]
        assert fds["growth"] <= allowed, (name, fds)
        assert fds["settled"] <= fds["start"] + allowed, (name, fds)


def test_redis_keys_stay_within_the_schema_and_all_expire(summary: dict[str, Any]) -> None:
    redis = summary["redis"]
    assert redis["keys"]["max"] <= redis["bound"], redis
    assert redis["without_ttl"] == []
    assert any(":t:" in family for family in redis["families"])  # the limiter was used (ticks)


def test_no_log_line_shows_the_upstream_key_or_a_traceback(summary: dict[str, Any]) -> None:
    logs = summary["logs"]
    assert logs["lines"] > 0  # the access log is on: every service wrote
    assert logs["upstream_key"] == 0
    assert logs["tracebacks"] == 0
