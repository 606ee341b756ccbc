"""Limiter settings: the controller's parameters, the store, the service, the quota poller.

The proxy reads the same class: it needs the store, the bounds, and (with ``REDIS_URL``
unset) runs the controller in-process with these parameters.
"""

from __future__ import annotations

import hashlib

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from zai_proxy.limiter import controller as c
from zai_proxy.limiter.controller import RateLimitParams
from zai_proxy.limiter.quota import QuotaPacingParams
from zai_proxy.limiter.quota_poller import QuotaPollerConfig, quota_url
from zai_proxy.limiter.store import (
    DEFAULT_BURST_SECONDS,
    DEFAULT_PREFIX,
    StoreConfig,
)
from zai_proxy.shared.defaults import DEFAULT_TARGET_URL


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
        default=c.DEFAULT_INITIAL_RATE, gt=0, description="Requests/s the limiter starts at."
    )
    rate_limit_min: float = Field(
        default=c.DEFAULT_MIN_RATE, gt=0, description="Lowest rate the limiter may set."
    )
    rate_limit_max: float = Field(
        default=c.DEFAULT_MAX_RATE, gt=0, description="Highest rate the limiter may set."
    )
    rate_limit_ceiling_alpha: float = Field(
        default=c.DEFAULT_CEILING_ALPHA,
        gt=0,
        le=1,
        description="EWMA weight that moves the learned ceiling after a bad window.",
    )
    rate_limit_hold_margin: float = Field(
        default=c.DEFAULT_HOLD_MARGIN,
        ge=0,
        lt=1,
        description="How far below the ceiling the rate is held (fraction).",
    )
    rate_limit_probe_interval: int = Field(
        default=c.DEFAULT_PROBE_INTERVAL,
        ge=1,
        description="Clean windows at the hold point before probing above the ceiling.",
    )
    rate_limit_window: float = Field(
        default=c.DEFAULT_WINDOW_SECONDS, gt=0, description="Seconds per control window."
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
    concurrency_limit_max: int = Field(
        default=c.DEFAULT_MAX_CONCURRENCY,
        ge=1,
        description="Highest (and starting) cluster-wide concurrency cap.",
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

    @model_validator(mode="after")
    def _bounds(self) -> LimiterSettings:
        self.params()  # raises ValueError with a clear message on inconsistent bounds
        return self

    def params(self) -> RateLimitParams:
        """The controller's parameters."""
        return RateLimitParams(
            initial_rate=self.rate_limit_initial,
            min_rate=self.rate_limit_min,
            max_rate=self.rate_limit_max,
            ceiling_alpha=self.rate_limit_ceiling_alpha,
            hold_margin=self.rate_limit_hold_margin,
            probe_interval=self.rate_limit_probe_interval,
            window_seconds=self.rate_limit_window,
            min_concurrency=self.concurrency_limit_min,
            max_concurrency=self.concurrency_limit_max,
        )

    def store_config(self) -> StoreConfig:
        """How the store lays out and times its state."""
        return StoreConfig(
            prefix=self.redis_prefix,
            initial_rate=self.rate_limit_initial,
            initial_concurrency=self.concurrency_limit_max,
            burst_seconds=self.rate_limit_burst,
            window_seconds=self.rate_limit_window,
            window_ttl_seconds=max(120.0, 4 * self.rate_limit_window),
        )

    def pool(self) -> str:
        """The pool name: set, or a short digest of the upstream key (never the key itself)."""
        if self.rate_limit_pool:
            return self.rate_limit_pool
        key = self.zai_api_key.get_secret_value()
        return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12] if key else "default"

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
