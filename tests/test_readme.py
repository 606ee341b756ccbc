"""README stays true: every setting is in its environment table with its default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from zai_proxy.proxy import metrics
from zai_proxy.proxy.settings import ProxySettings

README = (Path(__file__).parent.parent / "README.md").read_text()
ROWS = dict(re.findall(r"^\| `([A-Z0-9_]+)` \| ([^|]+) \|", README, flags=re.M))


def shown(value: object) -> str:
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value is None:
        return "(unset)"
    return f"`{value}`"


@pytest.mark.parametrize("settings", [ProxySettings])
def test_every_setting_is_documented_with_its_default(settings: type[BaseSettings]) -> None:
    for name, field in settings.model_fields.items():
        variable = name.upper()
        assert variable in ROWS, f"{variable} is missing from README's environment table"
        if isinstance(field.default, SecretStr):
            continue
        assert ROWS[variable].strip() == shown(field.default), variable


def test_every_proxy_metric_is_in_the_inventory() -> None:
    names = [
        value
        for key, value in vars(metrics).items()
        if key.isupper() and isinstance(value, str) and value.startswith("proxy_")
    ]
    assert len(names) > 10
    for name in names:
        assert f"`{name}`" in README, f"{name} is missing from README's metrics inventory"
