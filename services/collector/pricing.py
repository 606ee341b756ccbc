"""What tokens cost: a per-model price table in USD per million tokens.

The defaults are Z.ai's pay-as-you-go list prices as published on its pricing page
(https://docs.z.ai/guides/overview/pricing), read through copies of that page in the
search tool's stored pages on 2026-11-27, since the page itself was not stored there:

- glm-4.6 and glm-4.5: input 0.60, cached input 0.11, output 2.20 (harn-vm's model catalog,
  "pricing per docs.z.ai", read 2026-07-03 and 2026-08-15; PipeLLM's "official pricing"
  for glm-4.6, 2026-03-27; getmaxim.ai's Z.ai cost calculator);
- glm-4.5-air: input 0.20, cached input 0.03, output 1.10 (Vercel AI Gateway's Z.ai provider
  row; opencode.ai's model data);
- glm-4.5v: input 0.60, cached input 0.11, output 1.80, and glm-4.6v: input 0.30, cached
  input 0.05, output 0.90: Z.ai's list as remembered, not confirmed by a first-party copy
  (resellers quote 0.50/1.80 and 0.0003/0.0009 per thousand); check them;
- glm-4.5-flash and glm-4.6v-flash: free models, 0 (listed so that the prefix rule does
  not price them as glm-4.5 or glm-4.6v).

Cache writes cost 0: Z.ai's FAQ (https://docs.z.ai/help/faq) says storing cached content
is free for now and a cache hit costs a fifth of the input price. Prices change and
contracts differ: these are defaults that operators override with ``MODEL_PRICES``. A model
that matches no entry costs 0 (its tokens are still counted); ``PriceTable.price`` tells.

A model matches the longest entry that is a prefix of its name, so ``glm-4.6-0915`` is
priced as ``glm-4.6``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

PER_MILLION = 1_000_000.0


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per million tokens of each kind."""

    input: float
    output: float
    cache_read: float = 0.0
    cache_write: float = 0.0


FREE = ModelPrice(0.0, 0.0)

DEFAULT_PRICES: Mapping[str, ModelPrice] = {
    "glm-4.6": ModelPrice(input=0.60, output=2.20, cache_read=0.11),
    "glm-4.6v": ModelPrice(input=0.30, output=0.90, cache_read=0.05),
    "glm-4.6v-flash": FREE,
    "glm-4.5": ModelPrice(input=0.60, output=2.20, cache_read=0.11),
    "glm-4.5-air": ModelPrice(input=0.20, output=1.10, cache_read=0.03),
    "glm-4.5v": ModelPrice(input=0.60, output=1.80, cache_read=0.11),
    "glm-4.5-flash": FREE,
}

_FIELDS = ("input", "output", "cache_read", "cache_write")
_REQUIRED = ("input", "output")


class PriceTable:
    """Prices by model name, longest prefix first; unknown models are free."""

    def __init__(self, prices: Mapping[str, ModelPrice]) -> None:
        # Longest first, so the first prefix that matches is the longest one.
        self._entries = sorted(prices.items(), key=lambda item: len(item[0]), reverse=True)
        self._cache: dict[str, ModelPrice | None] = {}

    def price(self, model: str) -> ModelPrice | None:
        """The price entry for a model, or None when no entry matches."""
        if model in self._cache:
            return self._cache[model]
        found = next((price for name, price in self._entries if model.startswith(name)), None)
        # Model labels are capped by the proxy, so this cache stays small.
        self._cache[model] = found
        return found

    def cost(
        self,
        model: str,
        *,
        tokens_in: float,
        tokens_out: float,
        cache_read: float = 0.0,
        cache_write: float = 0.0,
    ) -> float:
        """USD for tokens of one model; ``tokens_in`` includes the cache reads and writes."""
        price = self.price(model)
        if price is None:
            return 0.0
        uncached = max(0.0, tokens_in - cache_read - cache_write)
        return (
            uncached * price.input
            + cache_read * price.cache_read
            + cache_write * price.cache_write
            + tokens_out * price.output
        ) / PER_MILLION


def default_prices() -> PriceTable:
    """The built-in defaults (Z.ai list prices)."""
    return PriceTable(DEFAULT_PRICES)


def price_table(override: str | None) -> PriceTable:
    """The defaults with an operator's ``MODEL_PRICES`` JSON laid over them, model by model."""
    prices = dict(DEFAULT_PRICES)
    if override and override.strip():
        prices.update(parse_prices(override))
    return PriceTable(prices)


def parse_prices(text: str) -> dict[str, ModelPrice]:
    """Parse ``{"model": {"input": .., "output": .., "cache_read": .., "cache_write": ..}}``.

    ``input`` and ``output`` are required, the cache prices default to 0; values are USD per
    million tokens, finite and not negative. Raises ValueError naming what is wrong.
    """
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"MODEL_PRICES is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError("MODEL_PRICES must be a JSON object of model name → prices")
    prices: dict[str, ModelPrice] = {}
    for model, entry in raw.items():
        name = model.strip().lower()
        if not name:
            raise ValueError("MODEL_PRICES: a model name is empty")
        if not isinstance(entry, dict):
            raise ValueError(f"MODEL_PRICES[{model!r}] must be an object of prices")
        unknown = sorted(set(entry) - set(_FIELDS))
        if unknown:
            raise ValueError(
                f"MODEL_PRICES[{model!r}]: unknown field(s) {', '.join(unknown)}; "
                f"expected {', '.join(_FIELDS)}"
            )
        missing = [field for field in _REQUIRED if field not in entry]
        if missing:
            raise ValueError(f"MODEL_PRICES[{model!r}]: {' and '.join(missing)} required")
        values = {field: _price(model, field, entry.get(field, 0.0)) for field in _FIELDS}
        prices[name] = ModelPrice(**values)
    return prices


def _price(model: str, field: str, value: object) -> float:
    # bool is an int in Python; "true" as a price is a mistake, not 1 USD.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"MODEL_PRICES[{model!r}].{field} must be a number, not {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"MODEL_PRICES[{model!r}].{field} must be a finite number >= 0")
    return number
