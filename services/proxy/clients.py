"""What a client key's entry says of its traffic: weight and priority class in the
limiter's fair share, and its budgets (ADR 0020).

An entry of ``PROXY_API_KEYS`` or its file may carry options after the key:
``weight=`` (a share of a full pool relative to the others', default 1), ``class=``
(``interactive``, the default, or ``batch``: served after interactive), ``rpm=``,
``concurrent=`` and ``tokens_per_day=`` (fleet-wide caps; none by default). A request may
lower its own class with ``x-proxy-priority: batch``, never raise it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from zai_proxy.limiter.store import NO_BUDGETS, PRIORITIES, Budgets, Claim
from zai_proxy.proxy.errors import ProxyError

OPTIONS = ("weight", "class", "rpm", "concurrent", "tokens_per_day")
PRIORITY_HEADER = b"x-proxy-priority"
_RANKS = {name.encode(): rank for rank, name in enumerate(PRIORITIES)}


class BudgetExceeded(ProxyError):
    """The client is over one of its budgets (requests per minute, concurrent, tokens)."""

    status = 429
    code = "client_budget_exceeded"
    anthropic_type = "rate_limit_error"

    def __init__(self, message: str, *, budget: str, retry_after: float) -> None:
        super().__init__(message, retry_after=retry_after)
        self.budget = budget

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [*super().headers(), (b"x-ratelimit-source", b"proxy")]


_BUDGET_WORDS = {
    "rpm": "requests per minute",
    "concurrent": "concurrent requests",
    "tokens_per_day": "tokens per day (UTC)",
}


def budget_exceeded(alias: str, budget: str, wait: float) -> BudgetExceeded:
    """The refusal of a client over ``budget``, with Retry-After the wait it needs."""
    words = _BUDGET_WORDS.get(budget, budget)
    return BudgetExceeded(
        f"the client key {alias!r} is over its budget of {words}",
        budget=budget,
        retry_after=max(wait, 1.0),
    )


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    """One client's weight, priority class and budgets."""

    alias: str
    weight: float = 1.0
    rank: int = 0
    budgets: Budgets = NO_BUDGETS

    def rank_of(self, headers: list[tuple[bytes, bytes]]) -> int:
        """The request's priority rank: the client's, or lower if its header asks (an
        unknown class changes nothing)."""
        rank = self.rank
        for name, value in headers:
            if name == PRIORITY_HEADER:
                rank = max(rank, _RANKS.get(value.strip().lower(), rank))
        return rank

    def claim(self, rank: int) -> Claim:
        """The claim of a request of this client at ``rank``."""
        return Claim(self.alias, self.weight, rank, self.budgets)


def policy(alias: str, options: Mapping[str, str], where: str) -> ClientPolicy:
    """A client's policy from its entry's options; errors name ``where`` and the alias."""

    def number(name: str) -> int | None:
        text = options.get(name)
        if text is None:
            return None
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"{where} ({alias}): {name} must be a whole number >= 1")
        return int(text)

    try:
        weight = float(options.get("weight", "1"))
    except ValueError:
        weight = math.nan
    if not (0 < weight < 1e6):
        raise ValueError(f"{where} ({alias}): weight must be a number > 0")
    kind = options.get("class", PRIORITIES[0])
    if kind not in PRIORITIES:
        raise ValueError(f"{where} ({alias}): class must be one of {', '.join(PRIORITIES)}")
    budgets = Budgets(number("rpm"), number("concurrent"), number("tokens_per_day"))
    return ClientPolicy(alias, weight, PRIORITIES.index(kind), budgets)
