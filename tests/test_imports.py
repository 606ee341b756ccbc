"""The import rule: no service imports another service's internals.

Each service (`services/<name>/`) may import its own modules, the shared package
(`zai_proxy.shared`) and `zai_proxy.__version__`, and of another service only the modules
that service offers to others (PUBLIC). The shared package imports no service at all. The
top-level modules (`cli`, `up`, `demo`, `progress`, `status`, `configuration`) compose the
services and may import any of them; no service imports them.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVICES_DIR = ROOT / "services"
# Folder → import name (pyproject.toml's package-dir).
SERVICES = {
    "proxy": "proxy",
    "limiter": "limiter",
    "collector": "collector",
    "dashboard-api": "dashboard_api",
    "simulator": "simulator",
}
SHARED = "shared"
# What a service offers to the others.
PUBLIC: dict[str, frozenset[str]] = {
    # The proxy embeds the limiter's client: the store it admits from (chosen in `stores`),
    # the settings, the control plane (loop and quota pacing) it runs when no limiter
    # service does, and the in-memory store of its local fallback while Redis is away.
    "limiter": frozenset({"settings", "store", "stores", "plane", "memory_store"}),
    # Readers of the rollup database: its read side, the snapshot value types, the
    # database settings, and the pure arithmetic on snapshots (merging a range into one,
    # percentiles from buckets), so that a reader's figure is the collector's by
    # construction rather than a second definition.
    "collector": frozenset({"history", "snapshot", "settings", "rollup", "percentiles"}),
    "proxy": frozenset(),
    "dashboard_api": frozenset(),
    "simulator": frozenset(),
}


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, dotted name) of every zai_proxy module or name a source imports, lazily
    imported ones included; `from a import b` yields `a.b`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "zai_proxy"]


def violations(owner: str | None, source: str) -> list[str]:
    """What a module of ``owner`` (a service's import name, "shared", or None for a
    top-level module) imports against the rule."""
    found = []
    for line, name in imported_modules(source):
        parts = name.split(".")[1:]  # without zai_proxy
        target = parts[0]
        if owner is None or target == owner or name == "zai_proxy.__version__":
            continue
        if owner == SHARED:
            found.append(f"line {line}: the shared package imports {name}")
        elif target == SHARED:
            continue
        elif target not in PUBLIC:
            found.append(f"line {line}: a service imports the top-level module {name}")
        elif len(parts) < 2 or parts[1] not in PUBLIC[target]:
            found.append(f"line {line}: {name} is not among what {target} offers others")
    return found


def owner_of(path: Path) -> str | None:
    relative = path.relative_to(SERVICES_DIR).parts
    if len(relative) == 1:
        return None
    return SHARED if relative[0] == SHARED else SERVICES[relative[0]]


def test_no_service_imports_another_services_internals() -> None:
    found = []
    for path in sorted(SERVICES_DIR.rglob("*.py")):
        for problem in violations(owner_of(path), path.read_text()):
            found.append(f"{path.relative_to(ROOT)} {problem}")
    assert not found, "\n".join(found)


def test_every_service_folder_is_known_to_the_rule() -> None:
    folders = {p.name for p in SERVICES_DIR.iterdir() if (p / "__init__.py").is_file()}
    assert folders == {*SERVICES, SHARED}


def test_the_rule_catches_what_it_forbids() -> None:
    assert violations("collector", "from zai_proxy.proxy.metrics import renderer") == [
        "line 1: zai_proxy.proxy.metrics.renderer is not among what proxy offers others"
    ]
    assert violations("dashboard_api", "def f():\n    from zai_proxy.collector import store") == [
        "line 2: zai_proxy.collector.store is not among what collector offers others"
    ]
    assert violations("shared", "import zai_proxy.limiter.outcomes") == [
        "line 1: the shared package imports zai_proxy.limiter.outcomes"
    ]
    assert violations("proxy", "from zai_proxy.up import StackSettings") == [
        "line 1: a service imports the top-level module zai_proxy.up.StackSettings"
    ]
    allowed = (
        "from zai_proxy import __version__\n"
        "from zai_proxy.shared.tasks import cancel_and_wait\n"
        "from zai_proxy.collector.history import SnapshotHistory\n"
        "from zai_proxy.dashboard_api.points import point\n"
    )
    assert violations("dashboard_api", allowed) == []
