"""Outcome classes that proxies report after every upstream attempt.

Proxies count outcomes per class in the ticks they report (see ``proxy.limiting``); the
limiter's control loop hands them to the law. Which classes feed which limit:

- `RATE_FREQUENCY` (Z.ai 1303/1305, and any 429 without a known code) feeds the rate.
- `RATE_CONCURRENCY` (Z.ai 1302) feeds the cluster-wide concurrency cap.
- `RATE_QUOTA` (Z.ai 1308/1310) feeds neither: the five-hour or weekly quota is spent, and
  no admission rate will bring it back before its reset time.
- `RATE_CONGESTION` (Z.ai 1312, Anthropic `overloaded_error`) feeds neither either. The
  model is overloaded for every customer of the provider, not for our key: cutting our rate
  would not relieve it, and a ceiling learned from it would stay wrong long after the
  congestion clears (it only climbs back by probing). It is a transient server condition:
  the proxy retries it with back-off, like a 5xx.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """The class of one upstream attempt, as proxies report it."""

    OK = "ok"
    RATE_FREQUENCY = "rate_frequency"
    RATE_CONCURRENCY = "rate_concurrency"
    RATE_QUOTA = "rate_quota"
    RATE_CONGESTION = "rate_congestion"
    SERVER_ERROR = "server_error"
    NETWORK = "network"
    CLIENT_ERROR = "client_error"
