"""Command line of the limiter simulation bench (see the package docstring)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from zai_proxy.limiter.controller import DEFAULT_MARGIN

from . import processes, report
from .plot import plot
from .run import RunConfig, RunResult, from_json, run
from .scenarios import CATALOGUE

DEFAULT_PLOT = Path("docs/img/limiter-sim.png")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.limiter_sim",
        description="The shared limiter against hidden limits that change, on real services.",
    )
    parser.add_argument(
        "--scenario", action="append", default=[], choices=sorted(CATALOGUE),
        help="a scenario to run (repeatable; default: bucket-1s)",
    )  # fmt: skip
    parser.add_argument("--all", action="store_true", help="every scenario")
    parser.add_argument("--replicas", default="1,3,10", help="replica counts, one run each")
    parser.add_argument("--concurrency", type=int, default=2000, help="client's open bound")
    parser.add_argument("--steady-fraction", type=float, default=0.5)
    parser.add_argument("--max-retries", type=int, default=3, help="the proxies' MAX_RETRIES")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE",
        help="extra environment for the limiter and the proxies (repeatable)",
    )  # fmt: skip
    parser.add_argument("--redis-url", help="use this Redis (a unique prefix per run)")
    parser.add_argument("--json", type=Path, help="write every figure and sample here")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--replot", type=Path, metavar="JSON", help="only redraw the plot from a --json file"
    )
    parser.add_argument("--log", type=Path, help="child processes' output (default: a temp file)")
    return parser.parse_args(argv)


def _env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--env wants NAME=VALUE, got {pair!r}")
        env[name] = value
    return env


def _hold_margin(env: dict[str, str]) -> float:
    return float(env.get("RATE_LIMIT_HOLD_MARGIN", DEFAULT_MARGIN))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = _env(args.env)
    if args.replot:
        saved = json.loads(args.replot.read_text())
        runs = [from_json(r) for r in saved["runs"]]
        plot(runs, args.plot, _hold_margin(env))
        print(f"plot: {args.plot}")
        return 0
    names = sorted(CATALOGUE) if args.all else (args.scenario or ["bucket-1s"])
    replica_counts = [int(x) for x in args.replicas.split(",") if x.strip()]
    log = args.log or Path(tempfile.mkstemp(prefix="limiter-sim-", suffix=".log")[1])
    machine = report.machine_info()
    print("machine:", json.dumps(machine))
    print(f"child process output: {log}")
    results: list[RunResult] = []
    try:
        with contextlib.ExitStack() as stack:
            redis_url = args.redis_url or stack.enter_context(processes.private_redis(log))
            for name in names:
                scenario = CATALOGUE[name]
                for replicas in replica_counts:
                    config = RunConfig(
                        replicas=replicas,
                        phases=scenario.phases,
                        offered=scenario.offered,
                        concurrency=args.concurrency,
                        latency_ms=scenario.latency_ms,
                        steady_fraction=args.steady_fraction,
                        max_retries=args.max_retries,
                        # Enough workers that the limiter, not the pool, holds back.
                        max_workers=1024,
                        env=env,
                        targets=scenario.targets,
                        scenario=name,
                        family=scenario.family,
                        simulator_args=scenario.simulator_args,
                        stream=scenario.stream,
                    )
                    print(
                        f"\n== {name}, {replicas} replica(s): offered {config.offered:g} req/s",
                        flush=True,
                    )
                    result = run(config, redis_url, log)
                    results.append(result)
                    machine.setdefault("load_average_after", []).append(os.getloadavg())
                    print(report.text_table(result))
                    print(report.summary(result), flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted; processes stopped", file=sys.stderr)
        return 130
    if results:
        print("\n" + report.matrix(results))
        print("all targets met" if report.all_passed(results) else "some targets missed")
    if results and not args.no_plot:
        plot(results, args.plot, _hold_margin(env))
        print(f"plot: {args.plot}")
    if args.json:
        payload = {
            "machine": machine,
            "runs": [r.to_json() for r in results],
            "markdown": [report.markdown_table(r) for r in results],
            "matrix": report.matrix(results, markdown=True) if results else "",
        }
        args.json.write_text(json.dumps(payload, indent=1, default=str))
        print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
