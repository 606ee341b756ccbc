"""Command line of the limiter simulation bench (see the package docstring)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from zai_proxy.limiter.controller import DEFAULT_HOLD_MARGIN

from . import processes, report
from .analysis import phases_of
from .plot import plot
from .run import RunConfig, RunResult, from_json, run

DEFAULT_PLOT = Path("docs/img/limiter-sim.png")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.limiter_sim",
        description="The shared limiter against a hidden limit that changes on a schedule.",
    )
    parser.add_argument("--replicas", default="1,4", help="replica counts, one run each")
    parser.add_argument("--limits", default="40,20,60", help="hidden limit per phase, req/s")
    parser.add_argument("--phase-seconds", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="30-s phases and warm-up")
    parser.add_argument(
        "--warmup", type=float, default=None,
        help="seconds at the first limit before the measured phases (default: one phase)",
    )  # fmt: skip
    parser.add_argument(
        "--offered", type=float, default=None, help="req/s offered (default: 2 x max limit)"
    )
    parser.add_argument("--concurrency", type=int, default=2000, help="client's open bound")
    parser.add_argument("--latency-ms", type=int, default=100, help="upstream answer time")
    parser.add_argument("--steady-fraction", type=float, default=2 / 3)
    parser.add_argument("--max-retries", type=int, default=3, help="the proxies' MAX_RETRIES")
    parser.add_argument(
        "--max-workers", type=int, default=1024,
        help="the proxies' MAX_WORKERS: enough that the limiter, not the pool, holds back",
    )  # fmt: skip
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
    return float(env.get("RATE_LIMIT_HOLD_MARGIN", DEFAULT_HOLD_MARGIN))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        saved = json.loads(args.replot.read_text())
        runs = [from_json(run) for run in saved["runs"]]
        plot(runs, args.plot, _hold_margin(_env(args.env)))
        print(f"plot: {args.plot}")
        return 0
    limits = [float(x) for x in args.limits.split(",") if x.strip()]
    phase_seconds = 30.0 if args.quick else args.phase_seconds
    warmup = phase_seconds if args.warmup is None else args.warmup
    env = _env(args.env)
    hold_margin = _hold_margin(env)
    log = args.log or Path(tempfile.mkstemp(prefix="limiter-sim-", suffix=".log")[1])
    machine = report.machine_info()
    print("machine:", json.dumps(machine))
    print(f"child process output: {log}")
    results: list[RunResult] = []
    try:
        with contextlib.ExitStack() as stack:
            redis_url = args.redis_url or stack.enter_context(processes.private_redis(log))
            for replicas in (int(x) for x in args.replicas.split(",") if x.strip()):
                config = RunConfig(
                    replicas=replicas,
                    phases=phases_of(limits, phase_seconds, warmup),
                    offered=args.offered or 2 * max(limits),
                    concurrency=args.concurrency,
                    latency_ms=args.latency_ms,
                    steady_fraction=args.steady_fraction,
                    max_retries=args.max_retries,
                    max_workers=args.max_workers,
                    env=env,
                )
                print(
                    f"\n== {replicas} replica(s): limits {args.limits} req/s, "
                    f"{phase_seconds:g} s per phase after {warmup:g} s of warm-up, "
                    f"offered {config.offered:g} req/s",
                    flush=True,
                )
                result = run(config, redis_url, log)
                results.append(result)
                machine.setdefault("load_average_after", []).append(os.getloadavg())
                print(f"load average after the run: {os.getloadavg()}")
                print(report.text_table(result))
                print(report.summary(result), flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted; processes stopped", file=sys.stderr)
        return 130
    if results:
        print("\n" + report.targets_text(results[0].config.targets, args.steady_fraction))
        print("all targets met" if report.all_passed(results) else "some targets missed")
    if results and not args.no_plot:
        plot(results, args.plot, hold_margin)
        print(f"plot: {args.plot}")
    if args.json:
        payload = {
            "machine": machine,
            "targets_text": report.targets_text(results[0].config.targets, args.steady_fraction)
            if results
            else "",
            "runs": [r.to_json() for r in results],
            "markdown": [report.markdown_table(r) for r in results],
        }
        args.json.write_text(json.dumps(payload, indent=1, default=str))
        print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
