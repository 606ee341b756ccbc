"""The configuration reference, generated from the settings classes so it cannot drift.

``python -m zai_proxy.configuration --write README.md --write-docs docs/configuration.md``
rewrites README's environment table (between its ``env-table`` markers) and the whole of
``docs/configuration.md`` (every variable grouped by the settings class that owns it, with
type, bounds, default, readers and meaning); tests fail when either differs from this.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import annotated_types
from pydantic import SecretStr
from pydantic.fields import FieldInfo
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
# Import names whose folder is spelled otherwise (pyproject.toml's package-dir).
FOLDERS = {"dashboard_api": "dashboard-api"}


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


# docs/configuration.md: what is said once, above the generated sections.
DOC_INTRO = """\
# Configuration reference

<!-- Generated from the settings classes by
`.venv/bin/python -m zai_proxy.configuration --write README.md --write-docs docs/configuration.md`;
do not edit by hand (tests/test_docs.py fails when this page is stale). -->

Every part of zai-proxy reads its configuration from environment variables, once, at
start-up, through a pydantic-settings class per service. No `.env` file is read. A value
that does not parse or is out of bounds stops the command before it serves, with one line
per variable (`zai-proxy proxy: invalid configuration` and `  MAX_WORKERS: ...`) and exit
status 2. Each service also takes `--host` and `--port` on the command line, which win
over the environment.

Variables are grouped by the settings class that declares them, under that class's own
description. *Read by* lists every command whose settings include the variable (also
where another class documents it). The proxy loads the limiter's class whole (it needs the
store, the bounds and, without `REDIS_URL`, the controller's parameters), so every limiter
variable lists the proxy, though the listen address, the admin token and the quota
variables only matter to the limiter service. `zai-proxy up` and `zai-proxy demo` run every
part in one process and so read every variable on this page; they also give a few
variables defaults of their own where the environment leaves them unset (see
[the architecture page](architecture.md#one-machine-zai-proxy-up-and-demo)).
"""


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def type_of(field: FieldInfo) -> str:
    """A field's type and bounds as the reference shows them."""
    annotation: Any = field.annotation
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    names = {bool: "bool", int: "int", float: "float", str: "string", Path: "path"}
    shown_type = "secret" if annotation is SecretStr else names.get(annotation, str(annotation))
    bounds = []
    for item in field.metadata:
        for attribute, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(item, attribute, None)
            if isinstance(item, annotated_types.BaseMetadata) and value is not None:
                bounds.append(f"{sign} {_number(value)}")
        pattern = getattr(item, "pattern", None)
        if pattern:
            bounds.append(f"`{pattern}`")
    return ", ".join([shown_type, *bounds])


def heading(settings: type[BaseSettings]) -> str:
    """A settings class's docstring (its first line), as a heading."""
    text = (inspect.getdoc(settings) or settings.__name__).splitlines()[0]
    return text.replace("``", "`").rstrip(".")


def slug(text: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def _owner(variable: str) -> type[BaseSettings]:
    """The class whose section documents a variable: the first that declares it."""
    for _, settings in SETTINGS:
        declared = inspect.get_annotations(settings)
        field = settings.model_fields.get(variable.lower())
        if variable.lower() in declared and field is not None and not field.exclude:
            return settings
    raise LookupError(variable)


def readers() -> dict[str, list[str]]:
    """Every variable and every command that reads it (documented there or not)."""
    found: dict[str, list[str]] = {}
    for services, settings in SETTINGS:
        for name in settings.model_fields:
            listed = found.setdefault(name.upper(), [])
            listed.extend(s for s in services if s not in listed)
    return found


def configuration_doc() -> str:
    """docs/configuration.md: every variable, grouped by the class that owns it."""
    table, read_by = rows(), readers()
    sections = [DOC_INTRO]
    for _, settings in SETTINGS:
        # The import package's folders, as pyproject.toml's package-dir maps them.
        module = settings.__module__.removeprefix("zai_proxy.").split(".")
        source = "/".join(["services", *(FOLDERS.get(part, part) for part in module)]) + ".py"
        own = [v for v in (n.upper() for n in settings.model_fields) if _owner(v) is settings]
        others = [v for v in (n.upper() for n in settings.model_fields) if v not in own]
        lines = [
            f"## {heading(settings)}",
            "",
            f"`{settings.__name__}` in `{source}`.",
            "",
            "| variable | type | default | read by | meaning |",
            "|---|---|---|---|---|",
        ]
        for variable in own:
            default, meaning, _ = table[variable]
            if variable == "ZAI_API_KEY":
                default = "(none; required)"
            field = settings.model_fields[variable.lower()]
            kind = type_of(field).replace("|", "\\|")
            services = ", ".join(read_by[variable])
            lines.append(f"| `{variable}` | {kind} | {default} | {services} | {meaning} |")
        if others:
            links = ", ".join(f"[`{v}`](#{slug(heading(_owner(v)))})" for v in others)
            lines += ["", f"Also reads {links}: each is documented where it is declared."]
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)


def main(argv: list[str] | None = None) -> int:
    """Print the table, or write it into README and the reference into docs."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", type=Path, help="rewrite this document's table in place")
    parser.add_argument(
        "--write-docs", type=Path, help="write the configuration reference to this file"
    )
    args = parser.parse_args(argv)
    if args.write is None and args.write_docs is None:
        print(env_table())
        return 0
    if args.write is not None:
        args.write.write_text(rewrite(args.write.read_text()))
    if args.write_docs is not None:
        args.write_docs.write_text(configuration_doc())
    return 0


if __name__ == "__main__":
    sys.exit(main())
