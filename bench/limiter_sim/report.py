"""The per-phase table, with PASS/MISS against each target, as text and as Markdown."""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .analysis import PhaseResult, Targets
from .run import RunResult


def _mark(result: PhaseResult, check: str) -> str:
    if check not in result.checks:
        return ""
    return "PASS" if result.checks[check] else "MISS"


def _settle(result: PhaseResult) -> str:
    if result.kind == "same":
        return "-"
    text = "never" if result.settle is None else f"{result.settle:.0f} s"
    if result.kind in ("start", "warm-up"):
        return f"{text} (from cold, to 90%)"
    target = "< 5% 429" if result.kind == "drop" else "to 90%"
    return f"{text} ({target}) {_mark(result, 'settle')}"


def rows(run: RunResult) -> list[list[str]]:
    """One row per phase."""
    out = []
    for p in run.phases:
        out.append(
            [
                "warm-up" if p.kind == "warm-up" else str(p.index),
                f"{p.limit:g}",
                p.kind,
                f"{p.goodput_share:.1%} {_mark(p, 'goodput')}",
                f"{p.ratio_429:.2%} {_mark(p, '429_ratio')}",
                f"{p.upstream_429_to_clients} ({p.upstream_429_with_retries_left}) "
                f"{_mark(p, 'no_early_429')}",
                str(p.held_back),
                _settle(p),
            ]
        )
    return out


HEADER = [
    "phase",
    "hidden limit",
    "change",
    "goodput / limit (steady)",
    "upstream 429 ratio (steady)",
    "upstream 429s to clients (retries left)",
    "held back (proxy 429s)",
    "settle",
]


def text_table(run: RunResult) -> str:
    """A fixed-width table for the terminal."""
    table = [HEADER, *rows(run)]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(run: RunResult) -> str:
    """The same table in Markdown (for docs/limiter.md)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(run)]
    return "\n".join(lines)


def summary(run: RunResult) -> str:
    """Client totals and the controller's decisions."""
    records = run.load.records
    statuses: dict[str, int] = {}
    for record in records:
        statuses[record.source] = statuses.get(record.source, 0) + 1
    decisions = ", ".join(f"{k} {v:g}" for k, v in sorted(run.decision_counts.items()))
    last = run.samples[-1] if run.samples else None
    retries = ", ".join(f"{k} {v:g}" for k, v in sorted(last.retries.items())) if last else ""
    return (
        f"client: {len(records)} requests answered ({statuses}), "
        f"{len(run.load.shed)} shed by the client bound\n"
        f"limiter decisions: {decisions}\n"
        f"proxy retries: {retries or 'none'}; "
        f"degraded replicas seen: {max((s.degraded for s in run.samples), default=0):g}"
    )


def targets_text(targets: Targets, steady_fraction: float) -> str:
    """The targets in one paragraph."""
    return (
        f"targets: steady state (last {steady_fraction:.0%} of each phase) goodput >= "
        f"{targets.goodput_share:.0%} of the capacity and <= {targets.max_429_ratio:.0%} "
        f"upstream 429s; no upstream 429 reaches a client while retries remain; after a drop "
        f"the 3-s 429 ratio is back under {targets.drop_ratio:.0%} (for {targets.drop_hold:g} s) "
        f"within {targets.drop_seconds:g} s; "
        f"after a rise the 3-s goodput reaches {targets.rise_share:.0%} within "
        f"{targets.rise_seconds:g} s"
    )


def _cell(p: PhaseResult) -> str:
    missed = [name for name, ok in p.checks.items() if not ok]
    settle = "" if p.settle is None or p.kind == "same" else f", {p.settle:.0f} s"
    flag = " MISS " + ",".join(missed) if missed else ""
    return f"{p.goodput_share:.0%} / {p.ratio_429:.1%}{settle}{flag}"


def matrix(runs: Sequence[RunResult], *, markdown: bool = False) -> str:
    """One row per run: each measured phase as goodput / 429s (, settle), and the misses."""
    header = [
        "scenario",
        "replicas",
        "same",
        "drop (halved)",
        "rise (x3)",
        "upstream 429s to clients",
    ]
    table = []
    for r in runs:
        measured = [p for p in r.phases if p.kind != "warm-up"]
        cells = [_cell(p) for p in measured][:3]
        to_clients = sum(p.upstream_429_with_retries_left for p in r.phases)
        table.append([r.config.scenario, str(r.config.replicas), *cells, str(to_clients)])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in table]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in [header, *table]
    )


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model[1] if model else platform.processor() or "unknown",
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def all_passed(runs: Sequence[RunResult]) -> bool:
    """Whether every check of every phase passed."""
    return all(all(p.checks.values()) for run in runs for p in run.phases)
