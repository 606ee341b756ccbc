"""Limiter settings: the control law's parameters, the store, the service, the quota poller.

The proxy reads the same class: it needs the store, the bounds, and (with ``REDIS_URL``
unset) runs the control loop and the quota poller in-process with these parameters.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from zai_proxy.limiter import controller as c
from zai_proxy.limiter.controller import Params
from zai_proxy.limiter.quota import QuotaPacingParams
from zai_proxy.limiter.quota_poller import QuotaPollerConfig, quota_url
from zai_proxy.limiter.store import (
    DEFAULT_BURST_SECONDS,
    DEFAULT_PREFIX,
    StoreConfig,
)
from zai_proxy.shared.defaults import DEFAULT_TARGET_URL
from zai_proxy.shared.upstream_keys import UpstreamKey, legacy_pool, upstream_keys


class LimiterSettings(BaseSettings):
    """Settings of the rate limiter (control plane and the proxies' side of it)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    redis_url: str | None = Field(
        default=None, description="Redis for the shared limiter; unset: in-process store."
    )
    redis_prefix: str = Field(default=DEFAULT_PREFIX, description="Prefix of every Redis key.")
    redis_timeout: float = Field(
        default=0.25, gt=0, description="Seconds a Redis call may take before it counts as down."
    )
    rate_limit_pool: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9_.-]{0,64}$",
        description="Name of the shared limit; empty: derived from the upstream key.",
    )
    rate_limit_initial: float = Field(
        default=c.DEFAULT_INITIAL_RATE,
        gt=0,
        description="Requests/s slow start begins at (doubling every tick while demand fills it).",
    )
    rate_limit_min: float = Field(
        default=c.DEFAULT_MIN_RATE, gt=0, description="Lowest rate the limiter may set."
    )
    rate_limit_max: float | None = Field(
        default=c.DEFAULT_MAX_RATE,
        gt=0,
        description="Highest rate the limiter may set; unset: no cap.",
    )
    rate_limit_hold_margin: float = Field(
        default=c.DEFAULT_MARGIN,
        ge=0,
        lt=0.5,
        description="How far below the learned limit the rate is held (fraction).",
    )
    rate_limit_probe_gain: float = Field(
        default=c.DEFAULT_PROBE_GAIN,
        gt=0,
        le=1,
        description="First probe step above the learned limit (fraction); it doubles while clean.",
    )
    rate_limit_probe_budget: float = Field(
        default=c.DEFAULT_PROBE_BUDGET,
        ge=0,
        le=0.5,
        description="Share of accepted attempts that failed probes may spend as 429s.",
    )
    rate_limit_tick: float = Field(
        default=c.DEFAULT_TICK_SECONDS,
        gt=0,
        le=5,
        description="Seconds per control step (the limiter decides every tick).",
    )
    rate_limit_burst: float = Field(
        default=DEFAULT_BURST_SECONDS, ge=0, description="Seconds of rate that may go at once."
    )
    rate_limit_max_wait: float = Field(
        default=10.0,
        ge=0,
        description="Longest a request waits for the limiter; beyond it the proxy answers 429.",
    )
    rate_limit_state_max_age: float = Field(
        default=3600.0, gt=0, description="Saved limiter state older than this is ignored."
    )
    concurrency_limit_min: int = Field(
        default=c.DEFAULT_MIN_CONCURRENCY, ge=1, description="Lowest cluster-wide concurrency cap."
    )
    concurrency_limit_max: int | None = Field(
        default=c.DEFAULT_MAX_CONCURRENCY,
        ge=1,
        description="Highest cluster-wide concurrency cap; unset: none until a 1302.",
    )
    log_level: str = Field(default="INFO", description="Log level of every service.")
    limiter_host: str = Field(default="0.0.0.0", description="Limiter listen address.")
    limiter_port: int = Field(default=8090, ge=0, le=65535, description="Limiter listen port.")
    limiter_admin_token: SecretStr = Field(
        default=SecretStr(""), description="Bearer token for the limiter's admin API; unset: off."
    )
    quota_poll_enabled: bool = Field(
        default=False, description="Poll the provider's quota endpoint."
    )
    quota_pacing_enabled: bool = Field(
        default=False, description="Cap the rate so each quota window lasts until its reset."
    )
    quota_poll_interval: float = Field(
        default=60.0, gt=0, description="Seconds between quota polls."
    )
    quota_reserve: float = Field(
        default=0.05, ge=0, lt=1, description="Share of each quota window kept in reserve."
    )
    quota_url: str = Field(
        default="", description="Quota endpoint; empty: derived from ZAI_TARGET_URL's origin."
    )
    quota_poll_timeout: float = Field(
        default=10.0, gt=0, description="Seconds a quota poll may take."
    )
    quota_auth_scheme: str = Field(
        default="Bearer",
        pattern=r"^\S*$",
        description="Authorization scheme for the quota endpoint; empty: the bare key.",
    )
    zai_target_url: str = Field(default=DEFAULT_TARGET_URL, exclude=True)
    zai_api_key: SecretStr = Field(default=SecretStr(""), exclude=True)
    zai_api_keys: SecretStr = Field(default=SecretStr(""), exclude=True)
    zai_api_keys_file: Path | None = Field(default=None, exclude=True)

    @field_validator("redis_url")
    @classmethod
    def _unset_when_empty(cls, value: str | None) -> str | None:
        # `REDIS_URL=` (an empty value, as compose files and charts write an unset one)
        # means no Redis: without this the proxy opened the in-process store but, seeing
        # a URL that is not None, ran no control loop, so the rate never moved.
        return value if value and value.strip() else None

    @model_validator(mode="after")
    def _bounds(self) -> LimiterSettings:
        self.params()  # raises ValueError with a clear message on inconsistent bounds
        return self

    def params(self) -> Params:
        """The control law's parameters."""
        return Params(
            tick_seconds=self.rate_limit_tick,
            initial_rate=self.rate_limit_initial,
            min_rate=self.rate_limit_min,
            max_rate=self.rate_limit_max,
            margin=self.rate_limit_hold_margin,
            probe_gain=self.rate_limit_probe_gain,
            probe_budget=self.rate_limit_probe_budget,
            min_concurrency=self.concurrency_limit_min,
            max_concurrency=self.concurrency_limit_max,
        )

    def store_config(self) -> StoreConfig:
        """How the store lays out and times its state."""
        return StoreConfig(
            prefix=self.redis_prefix,
            initial_rate=self.rate_limit_initial,
            burst_seconds=self.rate_limit_burst,
            tick_seconds=self.rate_limit_tick,
            tick_ttl_seconds=max(60.0, 8 * self.rate_limit_tick),
        )

    def upstream_keys(self) -> list[UpstreamKey]:
        """Every upstream key with its pool (see zai_proxy.shared.upstream_keys)."""
        return upstream_keys(
            self.zai_api_key.get_secret_value(),
            self.zai_api_keys.get_secret_value(),
            self.zai_api_keys_file,
            self.rate_limit_pool,
        )

    def pool(self) -> str:
        """The first key's pool: RATE_LIMIT_POOL, or a short digest of ZAI_API_KEY (never
        the key itself), or the first ZAI_API_KEYS entry's."""
        keys = self.upstream_keys()
        if keys:
            return keys[0].pool
        return legacy_pool("", self.rate_limit_pool)

    def pools(self) -> dict[str, str]:
        """Pool -> alias of every configured upstream key."""
        return {key.pool: key.alias for key in self.upstream_keys()}

    def quota_poller_config(self) -> QuotaPollerConfig:
        """Where and how the quota poller asks."""
        return QuotaPollerConfig(
            url=self.quota_url or quota_url(self.zai_target_url),
            interval_s=self.quota_poll_interval,
            timeout_s=self.quota_poll_timeout,
            auth_scheme=self.quota_auth_scheme,
        )

    def quota_pacing(self) -> QuotaPacingParams:
        """The pacer's parameters: stale after three missed polls, never below the minimum."""
        return QuotaPacingParams(
            enabled=self.quota_pacing_enabled,
            reserve=self.quota_reserve,
            floor_rate=self.rate_limit_min,
            stale_after_s=3 * self.quota_poll_interval,
        )
