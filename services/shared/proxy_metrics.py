"""Names of the proxy's Prometheus metrics, and its fixed model label values.

Defined once, here: the proxy exports them (proxy/metrics.py), the collector reads them
(collector/merge.py), the docs and the chart's dashboard name them.
"""

REQUESTS_TOTAL = "proxy_requests_total"
REQUEST_DURATION = "proxy_request_duration_seconds"
RESPONSE_SIZE = "proxy_response_size_bytes"
TIME_TO_FIRST_BYTE = "proxy_time_to_first_byte_seconds"
UPSTREAM_ERRORS = "proxy_upstream_errors_total"
TOKEN_INPUT = "proxy_token_input_total"
TOKEN_OUTPUT = "proxy_token_output_total"
TOKEN_CACHE_READ = "proxy_token_cache_read_total"
TOKEN_CACHE_WRITE = "proxy_token_cache_write_total"
TOKEN_REASONING = "proxy_token_reasoning_total"
RATE_LIMIT_WAIT = "proxy_rate_limit_wait_seconds"
QUEUE_WAIT = "proxy_queue_wait_seconds"
IN_FLIGHT = "proxy_in_flight_requests"
QUEUED = "proxy_queued_requests"
WORKERS = "proxy_workers"
UNPARSEABLE = "proxy_request_unparseable_total"
RETRIES = "proxy_retry_attempts_total"
RATE_LIMITED = "proxy_rate_limited_total"
REFUSALS = "proxy_refusals_total"
LIMITER_RATE = "proxy_limiter_rate"
LIMITER_CONCURRENCY = "proxy_limiter_concurrency_limit"
LIMITER_DEGRADED = "proxy_limiter_degraded"
LIMITER_REPLICAS = "proxy_limiter_replicas"
BUILD_INFO = "proxy_build_info"
# Per upstream key, labelled by its alias (``key``), never the key.
KEY_RATE = "proxy_upstream_key_rate"
KEY_CONCURRENCY = "proxy_upstream_key_concurrency_limit"
KEY_PARKED = "proxy_upstream_key_parked"
KEY_PARKED_UNTIL = "proxy_upstream_key_parked_until_timestamp_seconds"
KEY_ATTEMPTS = "proxy_upstream_key_attempts_total"
# Per client, labelled by the client key's alias (``client``) and priority ``class``.
CLIENT_WAIT = "proxy_client_limiter_wait_seconds"
CLIENT_REFUSALS = "proxy_client_refusals_total"

# Values of the duration histogram's ``origin`` label: who ended the exchange. The
# upstream's answer was passed on (its errors too); the proxy answered itself (a refusal:
# its limiter, its queue, a bad request, an unreachable upstream); the client left before
# any answer began.
ORIGIN_UPSTREAM = "upstream"
ORIGIN_PROXY = "proxy"
ORIGIN_CLIENT = "client"
ORIGINS = (ORIGIN_UPSTREAM, ORIGIN_PROXY, ORIGIN_CLIENT)

# Model label values: past METRICS_MAX_MODELS names, and no model at all.
OTHER = "other"
UNKNOWN = "unknown"
