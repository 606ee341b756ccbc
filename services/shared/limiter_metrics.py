"""Names of the limiter service's Prometheus metrics.

Defined once, here: the limiter exports them (limiter/metrics.py), the collector and
`zai-proxy status` read them.
"""

RATE = "limiter_rate"
CEILING = "limiter_ceiling"
HOLD = "limiter_hold_rate"
CONCURRENCY = "limiter_concurrency_limit"
DECISIONS = "limiter_decisions_total"
WINDOW_REQUESTS = "limiter_window_requests"
WINDOW_429_RATIO = "limiter_window_429_ratio"
QUOTA_CAP = "limiter_quota_rate_cap"
LEADER = "limiter_leader"
STORE_UP = "limiter_store_up"
REPLICAS = "limiter_replicas"
QUOTA_USED = "limiter_quota_used_ratio"
QUOTA_REMAINING = "limiter_quota_remaining_ratio"
QUOTA_RESET = "limiter_quota_reset_timestamp_seconds"
QUOTA_AGE = "limiter_quota_sample_age_seconds"
KEY_PARKED = "limiter_key_parked"
KEY_PARKED_UNTIL = "limiter_key_parked_until_timestamp_seconds"
KEY_QUOTA_USED = "limiter_key_quota_used_ratio"
KEY_QUOTA_RESET = "limiter_key_quota_reset_timestamp_seconds"
