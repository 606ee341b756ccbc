"""The Dockerfile builds one image for every service from a small, complete context.

No Docker engine runs on these machines, so the image is not built here. Checked
instead: the stages and the user, that .dockerignore keeps every file the Dockerfile
copies (and keeps host builds and secrets out), that a wheel built from exactly that
context with the web stage's output carries the UI, the Lua scripts and the migrations,
and that each command the chart runs is a `zai-proxy` subcommand.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.deploy.chart import CHART, ROOT
from tests.support import free_port
from zai_proxy.cli import build_parser, command_names

DOCKERFILE = (ROOT / "Dockerfile").read_text()
STATIC = ROOT / "services" / "dashboard-api" / "static"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def stages() -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions by its name."""
    found: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for word, rest in instructions():
        if word == "FROM":
            name = rest.split(" AS ")[-1].strip() if " AS " in rest else str(len(found))
            current = found.setdefault(name, [])
        current.append((word, rest))
    return found


def test_the_image_is_built_in_three_stages() -> None:
    built = stages()
    assert list(built) == ["web", "build", "runtime"]
    web = " ".join(rest for _, rest in built["web"])
    assert "NODE_IMAGE" in built["web"][0][1] and "npm ci" in web and "npm run build" in web
    build = " ".join(rest for _, rest in built["build"])
    assert "pip install -c constraints.txt '.[otel]'" in build
    assert "--from=web /src/services/dashboard-api/static/" in build
    assert "compileall" in build  # no __pycache__ writes at run time
    args = dict(
        rest.split("=", 1) for word, rest in instructions() if word == "ARG" and "=" in rest
    )
    assert args["NODE_IMAGE"].startswith("node:20")
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")


def test_the_runtime_runs_zai_proxy_as_the_charts_non_root_user() -> None:
    runtime = stages()["runtime"]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users == ["${UID}:${UID}"]
    match = re.search(r"ARG UID=(\d+)", DOCKERFILE)
    assert match, "the runtime's user is a build argument"
    uid = int(match.group(1))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert uid == values["podSecurityContext"]["runAsUser"] != 0
    assert ("ENTRYPOINT", '["zai-proxy"]') in runtime
    env = " ".join(rest for word, rest in runtime if word == "ENV")
    for setting in ("PYTHONDONTWRITEBYTECODE=1", "HOME=/tmp", "TMPDIR=/tmp"):
        assert setting in env
    assert "DATABASE_URL=sqlite+aiosqlite:////data/zai-proxy.db" in env
    # Nothing is installed at run time: the runtime stage only copies the built venv.
    assert not [rest for word, rest in runtime if word == "RUN" and "pip" in rest]


def test_every_command_the_chart_runs_is_a_zai_proxy_subcommand() -> None:
    templates = "\n".join(path.read_text() for path in (CHART / "templates").glob("*"))
    commands = set(re.findall(r'args: \["(\w+)"\]', templates))
    assert commands == {"proxy", "limiter", "collector", "dashboard", "migrate"}
    for command in commands:
        assert build_parser().parse_args([command]).command == command


def ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (excludes, pattern) rules, in order (the last match wins)."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                regex += ".*"
                i += 2
                if pattern.startswith("/", i):
                    regex += "/?"
                    i += 1
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        rules.append((not negated, re.compile(f"^{regex}$")))
    return rules


def in_context(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker sends a file (relative path) in the build context."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for excludes, pattern in rules:
        if any(pattern.match(prefix) for prefix in prefixes):
            excluded = excludes
    return not excluded


def context_files() -> list[str]:
    """The repository's files (tracked or not) that the build context holds."""
    rules = ignore_rules()
    files = []
    for directory, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in (".git", "node_modules", ".venv")]
        for name in names:
            path = str((Path(directory) / name).relative_to(ROOT))
            if in_context(path, rules):
                files.append(path)
    return files


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_else() -> None:
    files = context_files()
    for word, rest in instructions():
        if word != "COPY" or rest.startswith("--from"):
            continue
        for source in rest.split()[:-1]:
            source = source.rstrip("/")
            assert any(f == source or f.startswith(source + "/") for f in files), source
    assert "web/package-lock.json" in files and "services/cli.py" in files
    for path in files:
        assert not path.startswith(("services/dashboard-api/static/", ".cache/", "tests/"))
        assert "__pycache__" not in path and not path.endswith(".db")
        assert path.split("/")[0] in {
            "constraints.txt",
            "pyproject.toml",
            "README.md",
            "services",
            "web",
        }, path


@pytest.mark.slow
def test_a_wheel_from_the_context_carries_the_ui_scripts_and_migrations(tmp_path: Path) -> None:
    if not (STATIC / "index.html").is_file():
        if os.environ.get("CI"):
            pytest.fail("the web UI is not built (make ui): the image check needs it")
        pytest.skip("the web UI is not built (cd web && npm ci && npm run build)")
    context = copy_context(tmp_path / "context")
    # What the web stage's `npm run build` leaves there.
    shutil.copytree(STATIC, context / "services" / "dashboard-api" / "static")
    result = subprocess.run(
        [
            sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
            "--disable-pip-version-check", "--wheel-dir", str(tmp_path / "wheels"), str(context),
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "wheels").glob("zai_proxy-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "zai_proxy/dashboard_api/static/index.html" in names
    assert any(n.startswith("zai_proxy/dashboard_api/static/assets/") for n in names)
    assert "zai_proxy/limiter/acquire.lua" in names
    assert "zai_proxy/collector/migrations/versions/0001_snapshot_rollups.py" in names
    assert "zai_proxy/collector/alembic.ini" in names


def copy_context(into: Path) -> Path:
    """The files the Dockerfile's build stage copies, copied into a folder of their own."""
    for path in context_files():
        if path.startswith(("services/", "pyproject.toml", "README.md", "constraints.txt")):
            (into / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / path, into / path)
    return into


@pytest.mark.slow
def test_a_runtime_only_install_runs_every_commands_help_and_status(tmp_path: Path) -> None:
    """As the image's build stage installs it (`pip install -c constraints.txt .`, no dev
    extra) into a fresh virtualenv: every command starts (its --help), and `status`, with
    nothing running, reports every part down instead of failing on an import."""
    context = copy_context(tmp_path / "context")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    result = subprocess.run(
        [
            str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
            "-c", str(context / "constraints.txt"), str(context),
        ],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "list", "--format=freeze"],
        capture_output=True, text=True, check=True,
    ).stdout.lower()  # fmt: skip
    for dev_only in ("pytest", "hypothesis", "fakeredis", "mypy"):
        assert f"\n{dev_only}==" not in f"\n{installed}", dev_only
    zai_proxy = str(venv / "bin" / "zai-proxy")
    # Away from the repository, so nothing is imported from the source tree.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    commands = command_names()
    assert {"proxy", "up", "demo", "status", "migrate"} <= set(commands)
    for args in ([], *([name] for name in commands)):
        run = subprocess.run(
            [zai_proxy, *args, "--help"], capture_output=True, text=True, timeout=60,
            cwd=tmp_path, env=env, check=False,
        )  # fmt: skip
        assert run.returncode == 0 and "usage: zai-proxy" in run.stdout, (args, run.stderr)
    port = str(free_port())
    status = subprocess.run(
        [zai_proxy, "status"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**env, "PROXY_PORT": port, "LIMITER_PORT": port, "COLLECTOR_PORT": port,
             "DASHBOARD_PORT": port},
        check=False,
    )  # fmt: skip
    assert "Traceback" not in status.stderr, status.stderr
    assert status.returncode == 1, status.stdout + status.stderr
    for part in ("proxy", "limiter", "collector", "dashboard"):
        assert re.search(rf"^{part}\s.*down", status.stdout, re.M), status.stdout
