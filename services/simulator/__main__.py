"""Command line: `python -m zai_proxy.simulator --host 127.0.0.1 --port 0 [limits] [quota]`."""

import argparse

from .config import SimulatorConfig, parse_keys
from .quota import parse_quota_spec
from .ratelimit import parse_schedule
from .server import serve


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m zai_proxy.simulator",
        description="A simulated OpenAI- and Anthropic-compatible LLM upstream.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--rate-limit", type=float, default=None, help="hidden limit in requests per second"
    )
    parser.add_argument(
        "--schedule",
        default="",
        help='hidden limit changes as rate@seconds-since-start, e.g. "40@0,20@60,60@120"',
    )
    parser.add_argument(
        "--max-concurrency", type=int, default=None, help="hidden cap on requests at once"
    )
    parser.add_argument(
        "--limit-kind", choices=("bucket", "fixed", "sliding"), default="bucket",
        help="how the rate is limited (default: a token bucket)",
    )  # fmt: skip
    parser.add_argument("--burst", type=float, default=1.0, help="bucket burst, seconds")
    parser.add_argument("--window", type=float, default=1.0, help="window length, seconds")
    parser.add_argument(
        "--concurrency-schedule", default="",
        help='hidden cap changes as cap@seconds-since-start, e.g. "8@0,4@30,12@60"',
    )  # fmt: skip
    parser.add_argument("--noise", type=float, default=0.0, help="share of random 429s")
    parser.add_argument(
        "--quota-requests",
        default="",
        help='quota windows as window=requests, e.g. "5h=1000,weekly=20000" (default: none)',
    )
    parser.add_argument(
        "--keys",
        default="",
        help='upstream keys with limits of their own, as JSON: {"alpha": {"key": "sk-a", '
        '"max_concurrency": 4, "quota_requests": "5h=100"}, "beta": {"key": "sk-b", '
        '"refuse_code": 1113}} (rate_limit too); requests with other keys meet the limits above',
    )
    parser.add_argument("--log-level", default="warning")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve until interrupted."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = SimulatorConfig(
            rate_limit=args.rate_limit,
            schedule=parse_schedule(args.schedule),
            max_concurrency=args.max_concurrency,
            limit_kind=args.limit_kind,
            burst_seconds=args.burst,
            window_seconds=args.window,
            concurrency_schedule=parse_schedule(args.concurrency_schedule),
            noise=args.noise,
            quota_requests=parse_quota_spec(args.quota_requests),
            keys=parse_keys(args.keys),
        )
    except ValueError as exc:
        parser.error(str(exc))
    serve(config, args.host, args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
