"""The docs build check: links and anchors resolve, metric names are real, generated pages
are current, and the docs index lists every page.

It reads README.md, DEVELOPMENT.md, CONTRIBUTING.md and every Markdown file under docs/:
each relative link or image must name a file or folder of the repository, and a
``#fragment`` must name a heading of the page it points at (GitHub's anchor rules).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import promql_parser
import pytest
from prometheus_client import CollectorRegistry

from zai_proxy import configuration
from zai_proxy.collector.metrics import CollectorMetrics
from zai_proxy.limiter.metrics import LimiterMetrics
from zai_proxy.proxy import auth, limiting
from zai_proxy.proxy.errors import ProxyError
from zai_proxy.proxy.metrics import ProxyMetrics

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DOCUMENTS = sorted(
    [ROOT / "README.md", ROOT / "DEVELOPMENT.md", ROOT / "CONTRIBUTING.md", *DOCS.rglob("*.md")]
)

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# `](target)` of an inline link or image (the text may span lines), a reference
# definition `[name]: target`, or an HTML attribute.
_LINK = re.compile(r"\]\(\s*<?([^()\s<>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
_HTML = re.compile(r"\b(?:href|src)=\"([^\"]+)\"")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ID = re.compile(r"<a\s[^>]*\b(?:id|name)=\"([^\"]+)\"")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_LINE_ANCHOR = re.compile(r"^L\d+(-L\d+)?$")
_METRIC = re.compile(r"\b(?:proxy|limiter|collector)_[a-z0-9_]*[a-z0-9]\b")


@dataclass(frozen=True, slots=True)
class Link:
    """One link target in a document, and where it is written."""

    document: Path
    line: int
    target: str

    def __str__(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}: {self.target}"


def prose_and_code(text: str) -> tuple[str, str]:
    """The text with fenced code blanked out (line numbers kept), and the code alone."""
    prose, code = [], []
    fence = ""
    for line in text.splitlines():
        opening = _FENCE.match(line)
        if fence:
            code.append(line)
            prose.append("")
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence):
                fence = ""
        elif opening:
            fence = opening.group(1)
            prose.append("")
        else:
            prose.append(line)
    return "\n".join(prose), "\n".join(code)


def without_inline_code(text: str) -> str:
    """The text with every code span blanked (same length, so offsets stay right)."""
    return _INLINE_CODE.sub(lambda m: " " * len(m.group(0)), text)


def links(document: Path) -> Iterator[Link]:
    """Every link and image target written in a document, outside code."""
    text = without_inline_code(prose_and_code(document.read_text())[0])
    for pattern in (_LINK, _REFERENCE, _HTML):
        for match in pattern.finditer(text):
            line = text.count("\n", 0, match.start(1)) + 1
            yield Link(document, line, match.group(1))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text, lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(document: Path) -> set[str]:
    """Every anchor a page offers: its headings' slugs (repeats get -1, -2, ...)."""
    prose = prose_and_code(document.read_text())[0]
    found: set[str] = set(_HTML_ID.findall(prose))
    seen: dict[str, int] = {}
    for line in prose.splitlines():
        match = _HEADING.match(line)
        if match is None:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken(link: Link) -> str | None:
    """Why a link does not resolve, or None when it does."""
    target = link.target
    if not target or _SCHEME.match(target) or target.startswith("//"):
        return None  # external: not checked here
    path, _, fragment = target.partition("#")
    resolved = (link.document.parent / unquote(path)).resolve() if path else link.document
    if not resolved.is_relative_to(ROOT):
        return "points outside the repository"
    if not resolved.exists():
        return "no such file or folder"
    if not fragment:
        return None
    if resolved.suffix == ".md":
        if unquote(fragment) not in anchors(resolved):
            return f"no heading with the anchor #{fragment} in {resolved.relative_to(ROOT)}"
        return None
    if resolved.is_file() and _LINE_ANCHOR.match(fragment):
        return None
    return f"#{fragment} cannot be checked on {resolved.relative_to(ROOT)}"


def test_the_check_reads_every_document() -> None:
    names = {str(d.relative_to(ROOT)) for d in DOCUMENTS}
    assert {"README.md", "DEVELOPMENT.md", "CONTRIBUTING.md", "docs/README.md"} <= names
    assert any(name.startswith("docs/plan/") for name in names)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_relative_link_and_image_resolves(document: Path) -> None:
    problems = [f"{link}: {why}" for link in links(document) if (why := broken(link))]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_github_anchors_follow_githubs_rules() -> None:
    assert slug("Machine and conditions") == "machine-and-conditions"
    assert slug("D. Limiter admission at HEAD (7.3%), plus a 429 bug") == (
        "d-limiter-admission-at-head-73-plus-a-429-bug"
    )
    assert slug("B. Full collections: call `gc.freeze()`") == "b-full-collections-call-gcfreeze"
    assert (
        slug("E. The access log: 40-100 µs per request") == "e-the-access-log-40-100-µs-per-request"
    )
    assert slug("One machine: `zai-proxy up` and `demo`") == "one-machine-zai-proxy-up-and-demo"
    assert slug("See [the limiter](limiter.md)") == "see-the-limiter"


def test_a_broken_link_or_anchor_is_reported() -> None:
    page = DOCS / "architecture.md"
    assert broken(Link(page, 1, "limiter.md")) is None
    assert broken(Link(page, 1, "limiter.md#the-hot-path-one-round-trip-per-attempt")) is None
    assert broken(Link(page, 1, "#data-flow")) is None
    assert broken(Link(page, 1, "plan/")) is None
    assert broken(Link(page, 1, "https://example.com/missing.md")) is None
    assert broken(Link(page, 1, "no-such-page.md")) == "no such file or folder"
    assert "no heading" in (broken(Link(page, 1, "limiter.md#no-such-heading")) or "")
    assert "no heading" in (broken(Link(page, 1, "#no-such-heading")) or "")


def test_links_in_code_are_not_links(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n[real](other.md) and `[not](code.md)`\n\n```\n[fenced](x.md)\n```\n"
        "![an image spanning\ntwo lines](img/a.png)\n"
    )
    assert [(link.line, link.target) for link in links(page)] == [
        (3, "other.md"),
        (9, "img/a.png"),
    ]


def metric_series() -> set[str]:
    """Every series name the services export: counters with _total, histograms' parts."""
    registry = CollectorRegistry()
    ProxyMetrics("production", 10, registry)
    LimiterMetrics(registry)
    CollectorMetrics(registry)
    names = set()
    for family in registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
            names.add(family.name)
        else:
            names.add(family.name)
    return names


def error_codes() -> set[str]:
    """The codes of the proxy's own answers (``X-Proxy-Error``): not metrics, same prefix."""
    # Defined in modules of their own: imported here, they are among the subclasses.
    assert issubclass(auth.Unauthorized, ProxyError)
    assert issubclass(limiting.RateLimited, ProxyError)
    found, pending = set(), [ProxyError]
    while pending:
        kind = pending.pop()
        found.add(kind.code)
        pending.extend(kind.__subclasses__())
    return found


def test_every_metric_named_in_operations_exists() -> None:
    text = (DOCS / "operations.md").read_text()
    prose, code = prose_and_code(text)
    spans = [m.group(2) for m in _INLINE_CODE.finditer(prose)]
    named = {name for chunk in [*spans, code] for name in _METRIC.findall(chunk)}
    known = metric_series() | error_codes()
    assert "proxy_overloaded" in known  # the error codes are read, not guessed
    assert len(named) > 40, "operations.md names fewer metrics than expected"
    assert not named - known, f"operations.md names metrics nobody exports: {named - known}"


def promql_blocks(document: Path) -> Iterator[tuple[int, str]]:
    """Every fenced ``promql`` block of a document: its first line and its text."""
    lines = document.read_text().splitlines()
    start = None
    for number, line in enumerate(lines, start=1):
        if start is None and line.strip() == "```promql":
            start = number
        elif start is not None and line.strip() == "```":
            yield start, "\n".join(lines[start : number - 1])
            start = None


def test_every_promql_expression_parses() -> None:
    problems, checked = [], 0
    for document in DOCUMENTS:
        for line, block in promql_blocks(document):
            # One expression over several lines, or one expression per line.
            try:
                promql_parser.parse(block)
                checked += 1
                continue
            except ValueError:
                pass
            for expression in filter(str.strip, block.splitlines()):
                try:
                    promql_parser.parse(expression)
                    checked += 1
                except ValueError as exc:
                    problems.append(f"{document.relative_to(ROOT)}:{line}: {exc}")
    assert checked >= 10
    assert not problems, "PromQL that does not parse:\n" + "\n".join(problems)


def test_operations_explains_every_metric() -> None:
    text = (DOCS / "operations.md").read_text()
    exported = {
        name.removesuffix("_bucket")
        for name in metric_series()
        if not name.endswith(("_sum", "_count"))
    }
    missing = {name for name in exported if f"| `{name}` |" not in text}
    assert not missing, f"operations.md has no row for {sorted(missing)}"


def test_the_configuration_reference_is_generated_from_the_settings() -> None:
    assert (DOCS / "configuration.md").read_text() == configuration.configuration_doc(), (
        "docs/configuration.md is stale: run `.venv/bin/python -m zai_proxy.configuration "
        "--write README.md --write-docs docs/configuration.md`"
    )


def test_the_configuration_reference_documents_every_variable_once() -> None:
    text = (DOCS / "configuration.md").read_text()
    for variable in configuration.rows():
        assert text.count(f"| `{variable}` |") == 1, variable


def test_the_docs_index_lists_every_page_and_decision() -> None:
    index = (DOCS / "README.md").read_text()
    targets = {link.target for link in links(DOCS / "README.md")}
    for page in DOCUMENTS:
        if page.is_relative_to(DOCS) and page != DOCS / "README.md":
            assert str(page.relative_to(DOCS)) in targets, f"docs/README.md misses {page.name}"
    assert "](plan/)" in index
