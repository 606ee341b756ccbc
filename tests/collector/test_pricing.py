"""Model prices: defaults, longest-prefix lookup, cost arithmetic and the operator override."""

from __future__ import annotations

import pytest

from zai_proxy.collector.pricing import (
    DEFAULT_PRICES,
    FREE,
    ModelPrice,
    PriceTable,
    default_prices,
    parse_prices,
    price_table,
)


@pytest.mark.parametrize(
    ("model", "entry"),
    [
        ("glm-4.6", "glm-4.6"),
        ("glm-4.6-0915", "glm-4.6"),  # a dated name uses its family's price
        ("glm-4.6v", "glm-4.6v"),  # the longer prefix wins over glm-4.6
        ("glm-4.6v-flash", "glm-4.6v-flash"),
        ("glm-4.5", "glm-4.5"),
        ("glm-4.5-air", "glm-4.5-air"),
        ("glm-4.5-air-250728", "glm-4.5-air"),
        ("glm-4.5v", "glm-4.5v"),
        ("glm-4.5-flash", "glm-4.5-flash"),
    ],
)
def test_a_model_takes_the_longest_matching_prefix(model: str, entry: str) -> None:
    assert default_prices().price(model) == DEFAULT_PRICES[entry]


@pytest.mark.parametrize("model", ["gpt-4o", "other", "unknown", "glm-4", ""])
def test_unknown_models_have_no_price_and_cost_nothing(model: str) -> None:
    table = default_prices()
    assert table.price(model) is None
    assert table.cost(model, tokens_in=1e6, tokens_out=1e6) == 0.0


def test_free_models_cost_nothing() -> None:
    assert default_prices().price("glm-4.5-flash") == FREE


def test_cost_prices_uncached_input_cache_reads_writes_and_output_apart() -> None:
    table = PriceTable({"m": ModelPrice(input=0.6, output=2.2, cache_read=0.11, cache_write=0.3)})
    cost = table.cost(
        "m", tokens_in=1_000_000, tokens_out=500_000, cache_read=200_000, cache_write=100_000
    )
    # 700k uncached x 0.6 + 200k x 0.11 + 100k x 0.3 + 500k x 2.2, per million.
    assert cost == pytest.approx(0.42 + 0.022 + 0.03 + 1.1)


def test_cached_tokens_beyond_the_input_do_not_make_the_cost_negative() -> None:
    table = PriceTable({"m": ModelPrice(input=1.0, output=0.0, cache_read=0.5)})
    assert table.cost("m", tokens_in=10, tokens_out=0, cache_read=20) == pytest.approx(1e-5)


def test_the_documented_override_parses() -> None:
    prices = parse_prices('{"glm-4.6": {"input": 0.6, "output": 2.2, "cache_read": 0.11}}')
    assert prices == {"glm-4.6": ModelPrice(0.6, 2.2, 0.11, 0.0)}


def test_the_override_replaces_defaults_model_by_model_and_adds_models() -> None:
    table = price_table(
        '{"GLM-4.6": {"input": 1, "output": 2}, "my-model": {"input": 3, "output": 4}}'
    )
    assert table.price("glm-4.6-0915") == ModelPrice(1.0, 2.0)
    assert table.price("my-model-large") == ModelPrice(3.0, 4.0)
    assert table.price("glm-4.5") == DEFAULT_PRICES["glm-4.5"]


@pytest.mark.parametrize("setting", [None, "", "  "])
def test_no_override_means_the_defaults(setting: str | None) -> None:
    assert price_table(setting).price("glm-4.6") == DEFAULT_PRICES["glm-4.6"]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("{glm-4.6: 1}", "not valid JSON"),
        ('[{"input": 1}]', "must be a JSON object"),
        ('{"glm-4.6": 0.6}', "must be an object of prices"),
        ('{"": {"input": 1, "output": 1}}', "name is empty"),
        ('{"glm-4.6": {"input": 1, "output": 1, "cached": 1}}', "unknown field(s) cached"),
        ('{"glm-4.6": {"input": 1}}', "output required"),
        ('{"glm-4.6": {}}', "input and output required"),
        ('{"glm-4.6": {"input": "0.6", "output": 1}}', "must be a number"),
        ('{"glm-4.6": {"input": true, "output": 1}}', "must be a number"),
        ('{"glm-4.6": {"input": -1, "output": 1}}', "finite number >= 0"),
        ('{"glm-4.6": {"input": NaN, "output": 1}}', "finite number >= 0"),
        ('{"glm-4.6": {"input": 1, "output": Infinity}}', "finite number >= 0"),
    ],
)
def test_a_bad_override_is_refused_with_a_clear_error(setting: str, message: str) -> None:
    with pytest.raises(ValueError, match="MODEL_PRICES") as error:
        price_table(setting)
    assert message in str(error.value)
