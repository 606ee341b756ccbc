"""Collector settings: defaults as documented, and clear refusals of what cannot work."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from zai_proxy.collector.settings import CollectorSettings

DAY = 86400.0


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "COLLECTOR_TARGETS",
        "COLLECTOR_LIMITER_TARGETS",
        "SCRAPE_INTERVAL",
        "SCRAPE_TIMEOUT",
        "DATABASE_URL",
        "MODEL_PRICES",
        "RATE_LIMIT_POOL",
    ):
        monkeypatch.delenv(name, raising=False)


def test_the_defaults_scrape_the_local_proxy_and_limiter_every_five_seconds() -> None:
    settings = CollectorSettings()

    assert [str(t) for t in settings.proxy_targets()] == ["http://127.0.0.1:8080/metrics"]
    assert [str(t) for t in settings.limiter_targets()] == ["http://127.0.0.1:8090/metrics"]
    assert settings.scrape_interval == 5.0
    assert settings.timeout() == 4.0
    assert settings.retention() == {5: DAY, 60: 7 * DAY, 3600: 90 * DAY}
    assert settings.collector_port == 8091
    assert settings.pool() is None


def test_the_environment_sets_targets_timing_and_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLLECTOR_TARGETS", "dns+http://proxies:8080, http://10.0.0.9:8080")
    monkeypatch.setenv("COLLECTOR_LIMITER_TARGETS", "")
    monkeypatch.setenv("SCRAPE_INTERVAL", "2")
    monkeypatch.setenv("SCRAPE_TIMEOUT", "1.5")
    monkeypatch.setenv("RATE_LIMIT_POOL", "team-a")

    settings = CollectorSettings()

    assert [str(t) for t in settings.proxy_targets()] == [
        "dns+http://proxies:8080/metrics",
        "http://10.0.0.9:8080/metrics",
    ]
    assert settings.limiter_targets() == []
    assert settings.timeout() == 1.5
    assert settings.pool() == "team-a"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"scrape_interval": 2, "scrape_timeout": 2}, "must be shorter than SCRAPE_INTERVAL"),
        ({"scrape_interval": 7}, "must divide 60 seconds evenly"),
        ({"scrape_interval": 0.1}, "greater than or equal to 0.5"),
        ({"collector_targets": ""}, "COLLECTOR_TARGETS names no target"),
        ({"collector_targets": "proxy:8080"}, "is not http(s)://host:port"),
        ({"collector_limiter_targets": "dns+tcp://x:1"}, "is not http(s)://host:port"),
        ({"model_prices": '{"glm-4.6": {"input": 1}}'}, "output required"),
        ({"retention_1m": 3 * 3600, "retention_5s": 4 * 3600}, "RETENTION_5S <= RETENTION_1M"),
        ({"database_url": "sqlite:///:memory:"}, "in-memory SQLite"),
    ],
)
def test_settings_that_cannot_work_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        CollectorSettings(**values)

    assert message in str(raised.value)


def test_the_database_password_is_shown_neither_in_the_repr_nor_in_a_refusal() -> None:
    settings = CollectorSettings(database_url="postgresql://collector:hunter2@db/rollups")
    with pytest.raises(ValidationError) as raised:
        CollectorSettings(database_url="mysql://collector:hunter2@db/rollups")

    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(raised.value)
    assert "collector:***@db" in str(raised.value)
