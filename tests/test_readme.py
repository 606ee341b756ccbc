"""README stays true: its environment table is the generated one; every metric is listed."""

from __future__ import annotations

from pathlib import Path

from zai_proxy import configuration
from zai_proxy.collector import metrics as collector_metrics
from zai_proxy.limiter import metrics as limiter_metrics
from zai_proxy.proxy import metrics as proxy_metrics

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_the_environment_table_is_generated_from_the_settings() -> None:
    assert configuration.rewrite(README) == README, (
        "README's environment table is stale: run "
        "`.venv/bin/python -m zai_proxy.configuration --write README.md`"
    )


def test_every_seed_variable_comes_first() -> None:
    table = configuration.env_table().splitlines()[2:]
    firsts = [line.split("`")[1] for line in table[: len(configuration.SEED)]]
    assert firsts == list(configuration.SEED)


def test_every_metric_is_in_the_inventory() -> None:
    for module, prefix in (
        (proxy_metrics, "proxy_"),
        (limiter_metrics, "limiter_"),
        (collector_metrics, "collector_"),
    ):
        names = [
            value
            for key, value in vars(module).items()
            if key.isupper() and isinstance(value, str) and value.startswith(prefix)
        ]
        assert len(names) > 10
        for name in names:
            assert f"`{name}`" in README, f"{name} is missing from README's metrics inventory"
