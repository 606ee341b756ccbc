"""The set-up docs say what the build files do: every `make X` they name is a Makefile
target, what they say `make test` runs is what its prerequisites run, and the Node and
Python versions they state are `web/package.json`'s engines and `pyproject.toml`'s
requires-python. Each check reads text, so a drifted copy shows that it can fail.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The documents a newcomer sets up from.
SETUP_DOCS = ("README.md", "DEVELOPMENT.md", "CONTRIBUTING.md", "docs/dashboard.md")
# Where the tests' own defaults for the real Redis and PostgreSQL are written.
TEST_SERVICE_URLS = {
    "TEST_REDIS_URL": "tests/conftest.py",
    "TEST_POSTGRES_URL": "tests/databases.py",
}

_RULE = re.compile(r"^([A-Za-z0-9_./$()-]+)\s*:(?!=)\s*(.*)$")
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_FENCED = re.compile(r"^ {0,3}```[^\n]*\n(.*?)^ {0,3}```", re.M | re.S)
_MAKE = re.compile(r"(?:^|[\s;&|(])make((?:\s+[^\s#;&|)]+)+)")
# `make test` followed by what it runs: "(ruff and pytest)", or "runs ...", up to the
# sentence's end.
_TEST_CLAIM = re.compile(r"`make test`\s*(\([^)]*\)|[^;.]*?\bruns\b[^;.]*)")
_NODE = re.compile(r"\bNode(?:\.js)? (\d+(?:\.\d+)*\+?(?: or \d+(?:\.\d+)*\+?)*)")
_PYTHON = re.compile(r"\bPython (\d+\.\d+\+?)")


@dataclass(frozen=True)
class Makefile:
    """The targets of a Makefile, their prerequisites and recipes."""

    prerequisites: dict[str, list[str]]
    recipes: dict[str, list[str]]

    @classmethod
    def parse(cls, text: str) -> Makefile:
        prerequisites: dict[str, list[str]] = {}
        recipes: dict[str, list[str]] = {}
        current: str | None = None
        for line in text.splitlines():
            if line.startswith("\t"):
                if current is not None:
                    recipes[current].append(line.strip())
                continue
            rule = _RULE.match(line)
            if rule is None or line.startswith("#"):
                current = None if line.strip() else current
                continue
            current = rule.group(1)
            prerequisites[current] = rule.group(2).split("#")[0].split()
            recipes[current] = []
        return cls(prerequisites, recipes)

    def targets(self) -> set[str]:
        """The targets one can name on the command line (not files or specials)."""
        return {t for t in self.prerequisites if not t.startswith((".", "$")) and "/" not in t}

    def runs(self, target: str, scripts: dict[str, str]) -> set[str]:
        """The tools `make target` runs (npm scripts looked up in `scripts`)."""
        tools: set[str] = set()
        for prerequisite in self.prerequisites.get(target, []):
            if prerequisite in self.targets():
                tools |= self.runs(prerequisite, scripts)
        for recipe in self.recipes.get(target, []):
            # Tools are the virtualenv's ($(BIN)/ruff), the web UI's npm scripts, and
            # what a sub-make runs; shell plumbing (cd, mkdir, for) is not a tool.
            for command in re.split(r"&&|;|\|\|", recipe):
                words = command.split()
                if not words:
                    continue
                if words[0] == "$(MAKE)":
                    for sub in (w for w in words[1:] if not w.startswith("-")):
                        tools |= self.runs(sub, scripts)
                elif words[0] == "npm" and len(words) > 1 and words[1] in ("test", "run"):
                    script = scripts[words[1] if words[1] == "test" else words[2]]
                    tools |= script_tools(script)
                elif "$(BIN)/" in words[0]:
                    tools.add(words[0].rsplit("/", 1)[-1])
        return tools

    def tools(self, scripts: dict[str, str]) -> set[str]:
        """Every tool any target or npm script runs (the vocabulary a claim is read in)."""
        found = set().union(*(self.runs(t, scripts) for t in self.targets()))
        return found.union(*(script_tools(script) for script in scripts.values()))


def script_tools(script: str) -> set[str]:
    """The tools an npm script runs ('vue-tsc --noEmit && vite build': vue-tsc, vite)."""
    return {command.split()[0] for command in script.split("&&") if command.split()}


def code_of(text: str) -> list[str]:
    """The document's code: its code spans and the lines of its fenced blocks."""
    fenced = _FENCED.findall(text)
    prose = _FENCED.sub("", text)
    return _CODE_SPAN.findall(prose) + [line for block in fenced for line in block.splitlines()]


def make_commands(text: str) -> list[list[str]]:
    """The targets of each `make ...` command in the document's code."""
    commands = []
    for code in code_of(text):
        for match in _MAKE.finditer(code):
            words = match.group(1).split()
            targets = [w for w in words if not w.startswith("-") and "=" not in w]
            if targets:
                commands.append(targets)
    return commands


def unknown_targets(documents: dict[str, str], makefile: Makefile) -> list[str]:
    """Every `make X` a document names for which the Makefile has no target."""
    known = makefile.targets()
    return [
        f"{name}: `make {' '.join(command)}`: no target {target!r} in the Makefile"
        for name, text in documents.items()
        for command in make_commands(text)
        for target in command
        if target not in known
    ]


def make_test_claims(text: str) -> list[str]:
    """What a document says `make test` runs, each claim as written but for the make
    commands it names on the way (`make test-python` names a target, not python)."""
    return [
        " ".join(re.sub(r"`make [^`]*`", "", claim).split()) for claim in _TEST_CLAIM.findall(text)
    ]


def wrong_test_claims(
    documents: dict[str, str], makefile: Makefile, scripts: dict[str, str]
) -> list[str]:
    """Each claim about `make test` that misses a tool it runs or names one it does not."""
    runs = makefile.runs("test", scripts)
    vocabulary = makefile.tools(scripts)
    problems = []
    for name, text in documents.items():
        for claim in make_test_claims(text):
            named = {t for t in vocabulary if re.search(rf"\b{re.escape(t)}\b", claim, re.I)}
            if named != runs:
                problems.append(
                    f"{name}: `make test` {claim!r} names {sorted(named)}, "
                    f"the Makefile runs {sorted(runs)}"
                )
    return problems


def engines_versions(range_: str) -> str:
    """package.json's engines range as the docs say it: '^20.19.0 || >=22.12.0' is
    '20.19+ or 22.12+'."""
    versions = []
    for part in range_.split("||"):
        match = re.fullmatch(r"\s*(?:\^|>=)?\s*(\d+)(?:\.(\d+))?(?:\.\d+)?\s*", part)
        if match is None:
            raise ValueError(f"cannot say {part!r} of the engines range {range_!r}")
        major, minor = match.groups()
        versions.append(f"{major}.{minor}+" if minor and minor != "0" else f"{major}+")
    return " or ".join(versions)


def python_version(requires: str) -> str:
    """requires-python as the docs say it: '>=3.11' is '3.11+'."""
    match = re.fullmatch(r">=\s*(\d+\.\d+)", requires.strip())
    if match is None:
        raise ValueError(f"cannot say requires-python {requires!r}")
    return f"{match.group(1)}+"


def wrong_versions(documents: dict[str, str], pattern: re.Pattern[str], expected: str) -> list[str]:
    """Each version a document states (by `pattern`, read across line breaks) that is not
    `expected`."""
    return [
        f"{name}: says {stated!r}, the build files say {expected!r}"
        for name, text in documents.items()
        for stated in pattern.findall(" ".join(text.split()))
        if stated != expected
    ]


def wrong_test_service_urls(readme: str, sources: dict[str, str]) -> list[str]:
    """Each test service whose default URL (in the tests' source) README does not state."""
    problems = []
    for variable, source in sources.items():
        match = re.search(rf'"{variable}",\s*"([^"]+)"', source)
        if match is None:
            problems.append(f"{variable}: no default found in the tests")
        elif f"`{match.group(1)}`" not in readme or f"`{variable}`" not in readme:
            problems.append(f"README does not say {variable} defaults to {match.group(1)}")
    return problems


# The repository's own files.


def documents() -> dict[str, str]:
    return {name: (ROOT / name).read_text() for name in SETUP_DOCS}


def makefile() -> Makefile:
    return Makefile.parse((ROOT / "Makefile").read_text())


def npm_scripts() -> dict[str, str]:
    return dict(json.loads((ROOT / "web/package.json").read_text())["scripts"])


def node_versions() -> str:
    return engines_versions(json.loads((ROOT / "web/package.json").read_text())["engines"]["node"])


def python_versions() -> str:
    return python_version(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    )


def test_every_make_command_in_the_docs_is_a_makefile_target() -> None:
    assert make_commands(documents()["README.md"]), "README names no make command"
    assert unknown_targets(documents(), makefile()) == []


def test_what_the_docs_say_make_test_runs_is_what_the_makefile_runs() -> None:
    claims = {name: make_test_claims(text) for name, text in documents().items()}
    assert claims["README.md"] and claims["DEVELOPMENT.md"], claims
    assert makefile().runs("test", npm_scripts()) >= {"ruff", "mypy", "vitest", "pytest"}
    assert wrong_test_claims(documents(), makefile(), npm_scripts()) == []


def test_the_node_version_the_docs_state_is_package_json_engines() -> None:
    stated = {name: _NODE.findall(" ".join(text.split())) for name, text in documents().items()}
    for name in ("README.md", "DEVELOPMENT.md", "docs/dashboard.md"):
        assert stated[name], f"{name} states no Node version"
    assert wrong_versions(documents(), _NODE, node_versions()) == []


def test_the_python_version_the_docs_state_is_requires_python() -> None:
    stated = {name: _PYTHON.findall(text) for name, text in documents().items()}
    assert stated["README.md"] and stated["DEVELOPMENT.md"], stated
    assert wrong_versions(documents(), _PYTHON, python_versions()) == []


def test_readme_says_where_the_tests_expect_redis_and_postgresql() -> None:
    sources = {name: (ROOT / path).read_text() for name, path in TEST_SERVICE_URLS.items()}
    assert wrong_test_service_urls(documents()["README.md"], sources) == []


# Drifted copies: each check catches what it is for.

MAKEFILE = Makefile.parse(
    ".PHONY: setup test lint typecheck test-web test-python\n"
    "setup: $(BIN)/.installed\n"
    "lint: setup\n\t$(BIN)/ruff check .\n\t$(MAKE) --no-print-directory typecheck\n"
    'typecheck: setup\n\t@tree=$$(mktemp -d) && cd "$$tree" && $(CURDIR)/$(BIN)/mypy -p x\n'
    "test-web: web/node_modules/.package-lock.json\n\tcd web && npm test\n"
    "test-python: setup\n\t$(BIN)/pytest\n"
    "test: lint test-web test-python\n"
)
SCRIPTS = {"test": "vitest run", "build": "vue-tsc --noEmit && vite build"}


def test_the_makefile_reading_follows_prerequisites_sub_makes_and_npm_scripts() -> None:
    assert MAKEFILE.targets() == {"setup", "test", "lint", "typecheck", "test-web", "test-python"}
    assert MAKEFILE.runs("test", SCRIPTS) == {"ruff", "mypy", "vitest", "pytest"}


@pytest.mark.parametrize(
    ("text", "caught"),
    [
        ("Run `make serve` to start.", "no target 'serve'"),
        ("```sh\nZAI_API_KEY=k make run   # start\n```", "no target 'run'"),
        ("`make setup ui`", "no target 'ui'"),
    ],
)
def test_a_make_command_without_a_target_is_caught(text: str, caught: str) -> None:
    (problem,) = unknown_targets({"README.md": text}, MAKEFILE)
    assert caught in problem


def test_a_make_command_with_a_target_passes() -> None:
    assert (
        unknown_targets({"README.md": "`make lint typecheck` and `make -j2 test`"}, MAKEFILE) == []
    )


@pytest.mark.parametrize(
    "claim",
    [
        "`make test` runs ruff (lint and format check) and the whole pytest suite;",
        "`make test` (ruff and pytest)",
        "`make test` runs ruff, mypy, vue-tsc, Vitest and pytest.",
    ],
)
def test_a_claim_about_make_test_that_drifted_is_caught(claim: str) -> None:
    assert len(wrong_test_claims({"DEVELOPMENT.md": claim}, MAKEFILE, SCRIPTS)) == 1


def test_a_true_claim_about_make_test_passes() -> None:
    claim = (
        "`make test` does the same set-up, then runs ruff, mypy (`make typecheck`), the web\n"
        "UI's Vitest suite and pytest (`make test-python`);"
    )
    assert wrong_test_claims({"README.md": claim}, MAKEFILE, SCRIPTS) == []


def test_the_engines_range_is_said_as_the_docs_say_it() -> None:
    assert engines_versions("^20.19.0 || >=22.12.0") == "20.19+ or 22.12+"
    assert engines_versions(">=20") == "20+"
    with pytest.raises(ValueError):
        engines_versions("20 - 22")


@pytest.mark.parametrize(
    "text",
    ["with Node 20:", "With Node 20.19+ and npm", "Node.js 22.12+ or 20.19+", "Node 20.19+ or 22+"],
)
def test_a_node_version_that_drifted_is_caught(text: str) -> None:
    assert wrong_versions({"README.md": text}, _NODE, "20.19+ or 22.12+")


def test_a_node_version_said_across_a_line_break_is_read_whole() -> None:
    text = "Node 20.19+\nor 22.12+ (what Vite 7 needs)"
    assert wrong_versions({"README.md": text}, _NODE, "20.19+ or 22.12+") == []


def test_a_python_version_that_drifted_is_caught() -> None:
    assert python_version(">=3.11") == "3.11+"
    assert wrong_versions({"README.md": "Python 3.10+"}, _PYTHON, "3.11+")
    assert wrong_versions({"README.md": "Python 3.11+"}, _PYTHON, "3.11+") == []


def test_a_test_service_url_readme_does_not_state_is_caught() -> None:
    source = {"TEST_REDIS_URL": 'os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")'}
    assert wrong_test_service_urls("`TEST_REDIS_URL`: `redis://127.0.0.1:6379/0`", source) == []
    assert wrong_test_service_urls("`TEST_REDIS_URL`: `redis://localhost:6380/0`", source)
