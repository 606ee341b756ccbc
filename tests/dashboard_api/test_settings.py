"""Dashboard settings: defaults, what it reads from its neighbours, and refusals."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from zai_proxy import configuration
from zai_proxy.dashboard_api.settings import PACKAGED_STATIC, DashboardSettings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("DASHBOARD_", "LIMITER_", "RETENTION_")) or name in (
            "DATABASE_URL",
            "SCRAPE_INTERVAL",
            "LOG_LEVEL",
        ):
            monkeypatch.delenv(name)


def test_the_defaults_serve_port_3000_open_with_the_packaged_ui() -> None:
    settings = DashboardSettings()
    assert (settings.dashboard_host, settings.dashboard_port) == ("0.0.0.0", 3000)
    assert settings.token() == ""
    assert settings.dashboard_max_sse_clients == 100
    assert settings.dashboard_sse_heartbeat == 15
    assert settings.limiter_url == "http://127.0.0.1:8090"
    assert settings.static_dir() == PACKAGED_STATIC
    assert settings.database_url is None
    assert settings.stale_after() == 15


def test_it_reads_what_its_neighbours_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://dash@db/rollups")
    monkeypatch.setenv("SCRAPE_INTERVAL", "10")
    monkeypatch.setenv("LIMITER_ADMIN_TOKEN", "admin-secret")
    monkeypatch.setenv("RETENTION_5S", "3600")
    settings = DashboardSettings()
    assert settings.database_url == "postgresql://dash@db/rollups"
    assert settings.stale_after() == 30
    assert settings.limiter_admin_token.get_secret_value() == "admin-secret"
    assert settings.retention()[5] == 3600
    assert "admin-secret" not in repr(settings)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("LIMITER_URL", "127.0.0.1:8090", "LIMITER_URL must be http(s)://host:port"),
        ("DASHBOARD_TOKEN", "two words", "must not contain whitespace"),
        ("DASHBOARD_MAX_SSE_CLIENTS", "0", "greater than or equal to 1"),
        ("LOG_LEVEL", "chatty", "LOG_LEVEL must be"),
        ("DATABASE_URL", "mysql://u:pw@db/x", "unsupported database"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DashboardSettings()


def test_an_empty_limiter_url_means_no_limiter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIMITER_URL", "")
    assert DashboardSettings().limiter_url == ""


def test_readme_documents_the_dashboards_variables() -> None:
    table = configuration.rows()
    assert table["DASHBOARD_PORT"][0] == "`3000`"
    assert table["DASHBOARD_PORT"][2] == "dashboard"
    assert "dashboard" in table["DATABASE_URL"][2]
    # Owned and documented by the collector and the limiter, not repeated.
    assert "dashboard" not in table["SCRAPE_INTERVAL"][2]
    assert "dashboard" not in table["LIMITER_ADMIN_TOKEN"][2]


def test_the_command_refuses_bad_settings_in_one_line() -> None:
    env = {**os.environ, "DASHBOARD_PORT": "eighty"}
    result = subprocess.run(
        [sys.executable, "-m", "zai_proxy", "dashboard"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "zai-proxy dashboard: invalid configuration" in result.stderr
    assert "DASHBOARD_PORT" in result.stderr
