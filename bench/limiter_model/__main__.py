"""Run the model's scenarios and print each phase against its targets."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from .scenarios import Result, catalogue, noise_pull, run

PhaseFigures = tuple[str, float, float, float | None, bool]  # change, goodput, 429s, settle, met


@dataclass(frozen=True)
class Summary:
    """One run, for the table."""

    name: str
    passed: bool
    phases: list[PhaseFigures]


def _run(job: tuple[int, int, bool]) -> tuple[bool, list[str], int, int, Summary]:
    """One run in a worker process (scenarios hold closures: they are named by index)."""
    index, seed, trace = job
    result = run(catalogue()[index], seed)
    checks = [ok for phase in result.phases for ok in phase.checks.values()]
    summary = Summary(
        f"{result.scenario.family}/{result.scenario.name}",
        result.passed,
        [
            (p.phase.change, p.goodput, p.refused, p.settle, all(p.checks.values()))
            for p in result.phases
        ],
    )
    lines = [_line(result)]
    if trace:
        for k, s in enumerate(result.seconds):
            limit = "-" if s.limit is None else f"{s.limit:7.2f}"
            lines.append(
                f"  t={k:3} cap={s.capacity:7.2f} rate={s.rate:8.2f} limit={limit} "
                f"capN={s.cap} att={s.attempts:4} ok={s.accepted:4} 429={s.refused:3} "
                f"held={s.held_back:4} client429={s.to_client}"
            )
    return result.passed, lines, sum(checks), len(checks), summary


def _line(result: Result) -> str:
    cells = []
    for p in result.phases:
        failed = [name for name, ok in p.checks.items() if not ok]
        settle = "-" if p.settle is None else f"{p.settle:g}s"
        cells.append(
            f"{p.phase.change}:{p.goodput:6.1%}/{p.refused:5.1%}/{settle}{'!' if failed else ''}"
        )
    extra = f" pull {noise_pull(result):.1%}" if result.scenario.family == "noise" else ""
    flag = "PASS" if result.passed else "MISS"
    name = f"{result.scenario.family}/{result.scenario.name}"
    head = f"{flag} {name:34} s{result.seed} to-client {result.to_client:3}{extra}  "
    return head + "  ".join(cells)


def _markdown(summaries: list[Summary]) -> str:
    """Per scenario: each phase's median goodput / 429s / settle over the seeds, and how
    many seeds met every target of the phase."""
    by_name: dict[str, list[Summary]] = {}
    for summary in summaries:
        by_name.setdefault(summary.name, []).append(summary)
    lines = [
        "| scenario | runs met all | phases: median goodput / 429s / settle (seeds met) |",
        "|---|---|---|",
    ]
    for name, runs in by_name.items():
        cells = []
        for k, (change, *_) in enumerate(runs[0].phases):
            if change == "cold":
                continue
            goodput = statistics.median(r.phases[k][1] for r in runs)
            refused = statistics.median(r.phases[k][2] for r in runs)
            settles = [s for r in runs if (s := r.phases[k][3]) is not None]
            met = sum(1 for r in runs if r.phases[k][4])
            settle = f" / {statistics.median(settles):.0f} s" if settles else ""
            cells.append(f"{change} {goodput:.0%} / {refused:.1%}{settle} ({met})")
        passed = sum(1 for r in runs if r.passed)
        lines.append(f"| {name} | {passed}/{len(runs)} | {'; '.join(cells)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.limiter_model")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--family", default="")
    parser.add_argument("--only", default="")
    parser.add_argument("--trace", action="store_true", help="print every second of one run")
    parser.add_argument(
        "--markdown", action="store_true", help="one table row per scenario, medians over seeds"
    )
    args = parser.parse_args(argv)
    chosen = [
        index for index, s in enumerate(catalogue())
        if (not args.family or s.family == args.family) and (not args.only or args.only in s.name)
    ]  # fmt: skip
    jobs = [(index, seed, args.trace) for index in chosen for seed in range(args.seeds)]
    started = time.perf_counter()
    with ProcessPoolExecutor() as pool:
        results = list(pool.map(_run, jobs))
    if args.markdown:
        print(_markdown([r[4] for r in results]))
    else:
        for _, lines, _, _, _ in results:
            print("\n".join(lines))
    passed = sum(r[0] for r in results)
    met, checks = sum(r[2] for r in results), sum(r[3] for r in results)
    elapsed = time.perf_counter() - started
    print(f"{passed}/{len(results)} runs passed, {met}/{checks} checks met, in {elapsed:.1f} s")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
