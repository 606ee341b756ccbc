"""Dashboard settings, read from the environment (see README's environment table).

The dashboard reads the collector's database, so it shares ``DATABASE_URL`` (through
``DatabaseSettings``) and reads the collector's ``SCRAPE_INTERVAL`` and ``RETENTION_*``
and the limiter's ``LIMITER_ADMIN_TOKEN``: those are documented by their owners and
marked ``exclude=True`` here.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from zai_proxy.collector.settings import DAY, LOG_LEVELS, DatabaseSettings

# The web helper's `npm run build` writes the UI here (packaged as package data).
PACKAGED_STATIC = Path(__file__).with_name("static")


class DashboardSettings(DatabaseSettings):
    """Settings of the dashboard: where it listens, who may read, how it streams."""

    model_config = SettingsConfigDict(
        env_file=None, extra="ignore", case_sensitive=False, hide_input_in_errors=True
    )

    dashboard_host: str = Field(default="0.0.0.0", description="Dashboard listen address.")
    dashboard_port: int = Field(
        default=3000, ge=0, le=65535, description="Dashboard listen port (API and web UI)."
    )
    dashboard_token: SecretStr = Field(
        default=SecretStr(""),
        description=(
            "Read token for everything but /healthz (`Authorization: Bearer`, `?token=`); "
            "unset: open."
        ),
    )
    dashboard_max_sse_clients: int = Field(
        default=100, ge=1, le=100_000, description="Live (SSE) clients at once; beyond: 503."
    )
    dashboard_sse_heartbeat: float = Field(
        default=15.0, gt=0, le=300, description="Seconds between SSE heartbeat comments."
    )
    dashboard_sse_backlog: int = Field(
        default=32,
        ge=1,
        le=10_000,
        description="Batches of new rounds an SSE client may fall behind before it is dropped.",
    )
    dashboard_poll_interval: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Seconds between the dashboard's checks of the database for new rounds.",
    )
    dashboard_static_dir: str = Field(
        default="",
        description="Folder of the built web UI; empty: the one packaged with zai-proxy.",
    )
    limiter_url: str = Field(
        default="http://127.0.0.1:8090",
        description=(
            "Limiter whose state the dashboard shows (its `/state`, with LIMITER_ADMIN_TOKEN); "
            "empty: none."
        ),
    )
    log_level: str = Field(default="INFO", description="Log level of every service.")
    # Documented by their owners (LimiterSettings, CollectorSettings).
    limiter_admin_token: SecretStr = Field(default=SecretStr(""), exclude=True)
    scrape_interval: float = Field(default=5.0, gt=0, le=60, exclude=True)
    retention_5s: float = Field(default=DAY, gt=0, exclude=True)
    retention_1m: float = Field(default=7 * DAY, gt=0, exclude=True)
    retention_1h: float = Field(default=90 * DAY, gt=0, exclude=True)

    @field_validator("dashboard_token")
    @classmethod
    def _token(cls, value: SecretStr) -> SecretStr:
        token = value.get_secret_value()
        if token != token.strip() or any(c.isspace() for c in token):
            # A header cannot carry it intact; most likely a copy-paste accident.
            raise ValueError("DASHBOARD_TOKEN must not contain whitespace")
        return value

    @field_validator("limiter_url")
    @classmethod
    def _limiter_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"LIMITER_URL must be http(s)://host:port, not {value!r}")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {value!r}")
        return level

    @model_validator(mode="after")
    def _retention(self) -> DashboardSettings:
        if not self.retention_5s <= self.retention_1m <= self.retention_1h:
            raise ValueError("RETENTION_5S <= RETENTION_1M <= RETENTION_1H must hold")
        return self

    def token(self) -> str:
        """The read token; empty: the dashboard is open."""
        return self.dashboard_token.get_secret_value()

    def static_dir(self) -> Path:
        """Where the built web UI is read from."""
        return Path(self.dashboard_static_dir) if self.dashboard_static_dir else PACKAGED_STATIC

    def retention(self) -> dict[int, float]:
        """Resolution (seconds) → how long the collector keeps its rows."""
        return {5: self.retention_5s, 60: self.retention_1m, 3600: self.retention_1h}

    def stale_after(self) -> float:
        """Seconds without a new point after which a variant counts as stale."""
        return 3 * self.scrape_interval
