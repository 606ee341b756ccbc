"""The configuration reference, generated from the settings classes so it cannot drift.

``python -m zai_proxy.configuration --write README.md`` rewrites README's environment
table (between its ``env-table`` markers); a test fails when README differs from it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings

from zai_proxy.collector.settings import CollectorSettings, DatabaseSettings
from zai_proxy.dashboard_api.settings import DashboardSettings
from zai_proxy.limiter.settings import LimiterSettings
from zai_proxy.proxy.settings import ProxySettings
from zai_proxy.up import StackSettings

# The seed's variables come first, in the seed's order.
SEED = (
    "ZAI_API_KEY",
    "ZAI_TARGET_URL",
    "TOKEN_COUNTING_ENABLED",
    "TOKENIZER_MODEL",
    "MAX_WORKERS",
    "DEPLOYMENT_VARIANT",
    "RATE_LIMIT_INITIAL",
    "RATE_LIMIT_MIN",
    "RATE_LIMIT_MAX",
    "MAX_RETRIES",
)
# Each settings class, and the services that read it.
SETTINGS: tuple[tuple[tuple[str, ...], type[BaseSettings]], ...] = (
    (("proxy",), ProxySettings),
    (("proxy", "limiter"), LimiterSettings),
    (("collector",), CollectorSettings),
    (("migrate",), DatabaseSettings),
    (("dashboard",), DashboardSettings),
    (("up", "demo"), StackSettings),
)
# Variables of services that are not built yet: (name, default, meaning).
PENDING: tuple[tuple[str, str, str], ...] = ()
START, END = "<!-- env-table:start -->", "<!-- env-table:end -->"


def shown(value: object) -> str:
    """A default as the table shows it."""
    if isinstance(value, SecretStr):
        return "(none)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value is None or value == "":
        return "(unset)"
    return f"`{value}`"


def rows() -> dict[str, tuple[str, str, str]]:
    """Every variable: (default, meaning, services that read it)."""
    found: dict[str, tuple[str, str, list[str]]] = {}
    for services, settings in SETTINGS:
        for name, field in settings.model_fields.items():
            if field.exclude:
                continue  # read here, documented by the class that owns it
            variable = name.upper()
            default, meaning, readers = found.setdefault(
                variable, (shown(field.default), field.description or "", [])
            )
            readers.extend(s for s in services if s not in readers)
    table = {v: (d, m, ", ".join(r)) for v, (d, m, r) in found.items()}
    for variable, default, meaning in PENDING:
        table.setdefault(variable, (default, meaning, "(pending)"))
    return table


def env_table() -> str:
    """README's environment table."""
    table = rows()
    order = [v for v in SEED if v in table] + sorted(v for v in table if v not in SEED)
    lines = ["| variable | default | read by | meaning |", "|---|---|---|---|"]
    for variable in order:
        default, meaning, services = table[variable]
        if variable == "ZAI_API_KEY":
            default = "(none; required)"
        lines.append(f"| `{variable}` | {default} | {services} | {meaning} |")
    return "\n".join(lines)


def rewrite(text: str) -> str:
    """A document with its environment table replaced by the generated one."""
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"no {START} ... {END} block found")
    return pattern.sub(lambda _: f"{START}\n{env_table()}\n{END}", text)


def main(argv: list[str] | None = None) -> int:
    """Print the table, or write it into a document."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", type=Path, help="rewrite this document's table in place")
    args = parser.parse_args(argv)
    if args.write is None:
        print(env_table())
        return 0
    args.write.write_text(rewrite(args.write.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
