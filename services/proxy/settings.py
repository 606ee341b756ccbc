"""Proxy settings, read from the environment (see README's environment table)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from zai_proxy.shared.defaults import DEFAULT_ANTHROPIC_URL, DEFAULT_TARGET_URL
from zai_proxy.shared.upstream_keys import UpstreamKey, upstream_keys

Seconds = Annotated[float, Field(gt=0)]


def _check_base_url(value: str, name: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an absolute http(s) URL, got {value!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"{name} must not carry a query or fragment")
    return value.rstrip("/")


class ProxySettings(BaseSettings):
    """Settings of the proxy data plane."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    zai_api_key: SecretStr = Field(
        default=SecretStr(""), description="Upstream API key, injected into every request."
    )
    zai_api_keys: SecretStr = Field(
        default=SecretStr(""),
        description="More upstream keys as alias:key,alias:key; each is its own limiter pool, "
        "requests go to the one with the most headroom.",
    )
    zai_api_keys_file: Path | None = Field(
        default=None, description="A file of upstream keys, one 'alias key' per line."
    )
    zai_target_url: str = Field(
        default=DEFAULT_TARGET_URL,
        description="OpenAI-dialect base URL, including its version segment.",
    )
    zai_anthropic_url: str = Field(
        default=DEFAULT_ANTHROPIC_URL,
        description="Anthropic-dialect base URL; /v1/messages is appended to it.",
    )
    token_counting_enabled: bool = Field(
        default=True, description="Count input and output tokens of every request."
    )
    tokenizer_model: str = Field(
        default="cl100k_base",
        description="Encoding (cl100k_base, o200k_base) or model name for token estimates.",
    )
    max_workers: int = Field(
        default=64, ge=1, le=10_000, description="Concurrent upstream requests per replica."
    )
    max_queue: int = Field(
        default=256, ge=0, description="Requests that may wait for a worker; beyond it: 503."
    )
    queue_timeout: Seconds = Field(
        default=30.0, description="Longest wait for a worker before answering 503."
    )
    deployment_variant: str = Field(
        default="production",
        pattern=r"^[A-Za-z0-9_.-]{1,32}$",
        description="Deployment variant label on every metric (production, canary, ...).",
    )
    upstream_connect_timeout: Seconds = Field(
        default=10.0, description="Seconds to open an upstream connection."
    )
    upstream_read_timeout: Seconds = Field(
        default=300.0, description="Longest silence from the upstream, between any two reads."
    )
    upstream_total_timeout: Seconds = Field(
        default=900.0, description="Longest whole upstream exchange, streams included."
    )
    max_request_body_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, description="Larger request bodies get 413."
    )
    max_request_header_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Larger request heads (target and headers together) get 431.",
    )
    client_header_timeout: Seconds = Field(
        default=60.0,
        description="Seconds a client gets to send a request's target and headers; then 408.",
    )
    client_body_timeout: Seconds = Field(
        default=60.0,
        description="Longest silence from a client while its request body is read; then 408.",
    )
    client_body_total_timeout: Seconds = Field(
        default=300.0,
        description="Longest time a client may take to send a whole request body; then 408.",
    )
    max_buffered_body_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        description=(
            "Request body bytes all requests together may hold in memory; a request that "
            "would pass it gets 503 before its body is read."
        ),
    )
    shutdown_delay: float = Field(
        default=0.0,
        ge=0,
        description="Seconds between SIGTERM and closing the listener (not ready meanwhile).",
    )
    shutdown_grace: Seconds = Field(
        default=30.0, description="Seconds in-flight requests and streams get to finish."
    )
    metrics_max_models: int = Field(
        default=50, ge=1, le=1000, description="Distinct model label values before 'other'."
    )
    proxy_api_keys: SecretStr = Field(
        default=SecretStr(""),
        description=(
            "Client keys as alias:key,alias:key; set: only these keys may call. After a key: "
            "weight=, class=interactive|batch, rpm=, concurrent=, tokens_per_day= "
            "(docs/limiter.md#clients)."
        ),
    )
    proxy_api_keys_file: Path | None = Field(
        default=None,
        description="A file of client keys, one 'alias key [option=value ...]' per line.",
    )
    metrics_token: SecretStr = Field(
        default=SecretStr(""),
        description="Bearer token /metrics requires (the collector sends it); unset: open.",
    )
    access_log: bool = Field(default=True, description="Log one line per proxied request.")
    access_log_file: str = Field(
        default="",
        description="File the access log is appended to; unset or '-': stderr "
        "(the demo's default: ./zai-proxy-demo-access.log).",
    )
    log_level: str = Field(default="INFO", description="Log level of every service.")
    proxy_port: int = Field(default=8080, ge=0, le=65535, description="Proxy listen port.")
    proxy_host: str = Field(default="0.0.0.0", description="Proxy listen address.")
    proxy_processes: int = Field(
        default=1, ge=1, le=64, description="Proxy worker processes (metrics are merged)."
    )
    max_retries: int = Field(
        default=3, ge=0, le=10, description="Upstream attempts retried after the first."
    )
    retry_backoff_base: Seconds = Field(
        default=0.5, description="First retry back-off in seconds (exponential, full jitter)."
    )
    genai_provider_name: str = Field(
        default="zai",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="gen_ai.provider.name on the proxy's spans and GenAI metrics "
        "(tracing is on when OTEL_EXPORTER_OTLP_ENDPOINT is set).",
    )
    otel_instrumentation_genai_capture_message_content: bool = Field(
        default=False,
        description="Put request and answer messages on the spans (gen_ai.input.messages, "
        "gen_ai.output.messages); off: never any content.",
    )
    retry_backoff_max: Seconds = Field(
        default=10.0,
        description="Longest retry back-off; a longer Retry-After goes back to the client.",
    )

    @field_validator("zai_target_url")
    @classmethod
    def _target(cls, value: str) -> str:
        return _check_base_url(value, "ZAI_TARGET_URL")

    @field_validator("zai_anthropic_url")
    @classmethod
    def _anthropic(cls, value: str) -> str:
        return _check_base_url(value, "ZAI_ANTHROPIC_URL")

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {value!r}")
        return level

    def upstream_keys(self, pool_name: str = "") -> list[UpstreamKey]:
        """Every upstream key, ZAI_API_KEY first, with pools named after ``pool_name``
        (RATE_LIMIT_POOL) as zai_proxy.shared.upstream_keys names them."""
        return upstream_keys(
            self.zai_api_key.get_secret_value(),
            self.zai_api_keys.get_secret_value(),
            self.zai_api_keys_file,
            pool_name,
        )

    def require_key(self) -> None:
        """Refuse to serve without an upstream key (a proxy without one can only fail)."""
        if not self.upstream_keys():
            raise ValueError(
                "ZAI_API_KEY is not set (nor ZAI_API_KEYS): the proxy needs an upstream API key"
            )
