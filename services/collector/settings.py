"""Collector settings, read from the environment (see README's environment table)."""

from __future__ import annotations

import math

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from zai_proxy.collector.database import normalise_url
from zai_proxy.collector.pricing import PriceTable, parse_prices, price_table
from zai_proxy.collector.store import DEFAULT_BUFFER_SNAPSHOTS
from zai_proxy.collector.targets import TargetSpec, parse_targets

HOUR = 3600.0
DAY = 24 * HOUR
# Without SCRAPE_TIMEOUT a scrape may take this share of the interval.
DEFAULT_TIMEOUT_SHARE = 0.8
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class DatabaseSettings(BaseSettings):
    """Where the rollups live: read by the collector and by ``zai-proxy migrate``."""

    # hide_input_in_errors: a refused DATABASE_URL must not be echoed with its password.
    model_config = SettingsConfigDict(
        env_file=None, extra="ignore", case_sensitive=False, hide_input_in_errors=True
    )

    database_url: str | None = Field(
        default=None,
        repr=False,  # it may hold a password
        description="Rollup database (sqlite:///path, postgresql://...); unset: ./zai-proxy.db.",
    )

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            normalise_url(value)  # ValueError with the password masked
            return value
        return None


class CollectorSettings(DatabaseSettings):
    """Settings of the collector: what it scrapes, how often, and where it writes."""

    metrics_token: SecretStr = Field(
        default=SecretStr(""),
        exclude=True,  # documented by the proxy, which requires it
    )
    collector_targets: str = Field(
        default="http://127.0.0.1:8080",
        description=(
            "Proxies the collector scrapes, comma-separated: `http://host:port` (its /metrics), "
            "or `dns+http://name:port`: every address of `name`, resolved each round."
        ),
    )
    collector_limiter_targets: str = Field(
        default="http://127.0.0.1:8090",
        description="Limiters the collector scrapes (same syntax); empty: none.",
    )
    scrape_interval: float = Field(
        default=5.0,
        ge=0.5,
        le=60,
        description="Seconds between scrape rounds (one snapshot per variant each); divides 60.",
    )
    scrape_timeout: float | None = Field(
        default=None,
        gt=0,
        description="Seconds a scrape may take, shorter than the interval; unset: 0.8 x interval.",
    )
    model_prices: str = Field(
        default="",
        description=(
            'Per-model prices over the defaults, USD per million tokens, JSON: `{"glm-4.6": '
            '{"input": 0.6, "output": 2.2, "cache_read": 0.11, "cache_write": 0}}`.'
        ),
    )
    retention_5s: float = Field(
        default=DAY, ge=300, description="Seconds 5 s snapshots are kept (a day)."
    )
    retention_1m: float = Field(
        default=7 * DAY, ge=2 * HOUR, description="Seconds 1 min rollups are kept (7 days)."
    )
    retention_1h: float = Field(
        default=90 * DAY, ge=DAY, description="Seconds 1 h rollups are kept (90 days)."
    )
    collector_buffer_max: int = Field(
        default=DEFAULT_BUFFER_SNAPSHOTS,
        ge=1,
        le=1_000_000,
        description="Snapshots kept in memory while the database is down (then the oldest go).",
    )
    collector_host: str = Field(default="0.0.0.0", description="Collector listen address.")
    collector_port: int = Field(
        default=8091, ge=0, le=65535, description="Collector listen port (/health, /metrics)."
    )
    log_level: str = Field(default="INFO", description="Log level of every service.")
    # Documented by LimiterSettings: which pool's limiter figures the snapshots carry.
    rate_limit_pool: str = Field(default="", exclude=True)

    @field_validator("collector_targets", "collector_limiter_targets")
    @classmethod
    def _targets(cls, value: str) -> str:
        parse_targets(value, "proxy")  # ValueError naming the bad entry
        return value

    @field_validator("model_prices")
    @classmethod
    def _prices(cls, value: str) -> str:
        if value.strip():
            parse_prices(value)
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {value!r}")
        return level

    @model_validator(mode="after")
    def _timing(self) -> CollectorSettings:
        # Snapshots must tile the minute, or a 1 min rollup would take a share of a
        # snapshot that straddles its end.
        per_minute = 60 / self.scrape_interval
        if not math.isclose(per_minute, round(per_minute), abs_tol=1e-9):
            raise ValueError(
                f"SCRAPE_INTERVAL must divide 60 seconds evenly, not {self.scrape_interval}"
            )
        if self.timeout() >= self.scrape_interval:
            raise ValueError(
                f"SCRAPE_TIMEOUT ({self.scrape_timeout}) must be shorter than "
                f"SCRAPE_INTERVAL ({self.scrape_interval})"
            )
        if not self.retention_5s <= self.retention_1m <= self.retention_1h:
            raise ValueError("RETENTION_5S <= RETENTION_1M <= RETENTION_1H must hold")
        if not self.proxy_targets():
            raise ValueError("COLLECTOR_TARGETS names no target")
        return self

    def timeout(self) -> float:
        """Seconds one scrape may take."""
        if self.scrape_timeout is not None:
            return self.scrape_timeout
        return DEFAULT_TIMEOUT_SHARE * self.scrape_interval

    def proxy_targets(self) -> list[TargetSpec]:
        """The proxies to scrape."""
        return parse_targets(self.collector_targets, "proxy")

    def limiter_targets(self) -> list[TargetSpec]:
        """The limiters to scrape (may be none)."""
        return parse_targets(self.collector_limiter_targets, "limiter")

    def retention(self) -> dict[int, float]:
        """Resolution (seconds) → how long its rows are kept, as the store takes it."""
        return {5: self.retention_5s, 60: self.retention_1m, 3600: self.retention_1h}

    def prices(self) -> PriceTable:
        """The price table: the defaults with MODEL_PRICES laid over them."""
        return price_table(self.model_prices)

    def pool(self) -> str | None:
        """The limiter pool the snapshots describe; None: the busiest one."""
        return self.rate_limit_pool or None
