"""The upstream failure log: one warning per failure class and host per interval."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from zai_proxy.proxy.errors import UpstreamTimeout, UpstreamUnavailable
from zai_proxy.proxy.upstream import UpstreamFailureLog


def refused() -> UpstreamUnavailable:
    err = UpstreamUnavailable("the upstream refused or could not open a connection")
    err.__cause__ = aiohttp.ClientConnectorError(
        aiohttp.client_reqrep.ConnectionKey("up.example", 443, True, True, None, None, None),
        OSError(111, "Connect call failed"),
    )
    return err


def test_each_class_and_host_is_warned_once_an_interval_with_the_count_of_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    failures = UpstreamFailureLog(interval=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="zai_proxy.proxy"):
        for _ in range(5):
            failures.failed("https://up.example/api/paas/v4/chat/completions", refused())
        failures.failed("https://up.example/x", UpstreamTimeout("slow"))
        failures.failed("https://other.example/x", refused())
        now[0] = 61.0
        failures.failed("https://up.example/x", refused())
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 4, lines
    assert lines[0].startswith("upstream up.example: cannot connect (ClientConnectorError: ")
    assert lines[1] == "upstream up.example: timeout (slow)"
    assert lines[2].startswith("upstream other.example: cannot connect")
    assert lines[3].endswith("; 4 more since the last warning")
