"""The ``zai-proxy`` command: one entry point, a subcommand per service."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

EXIT_USAGE = 2


def _settings_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]).upper()
        lines.append(f"  {field}: {error['msg']}")
    return "invalid configuration:\n" + "\n".join(lines)


def _run_proxy(args: argparse.Namespace) -> int:
    from zai_proxy.limiter.settings import LimiterSettings
    from zai_proxy.proxy.server import serve
    from zai_proxy.proxy.settings import ProxySettings

    settings = ProxySettings()
    if args.processes is not None:
        settings = settings.model_copy(update={"proxy_processes": args.processes})
    settings.require_key()
    limits = LimiterSettings()
    host, port = args.host or settings.proxy_host, _port(args.port, settings.proxy_port)
    serve(settings, limits, host, port)
    return 0


def _serve(app: Any, host: str, port: int, **options: Any) -> int:
    """Serve a control-plane application as `up` serves it (up.service_config)."""
    import uvicorn

    from zai_proxy.up import service_config

    server = uvicorn.Server(service_config(app, host, port, **options))
    server.run()
    if not server.started:
        raise SystemExit(3)
    return 0


def _run_limiter(args: argparse.Namespace) -> int:
    from zai_proxy.limiter.app import build_app
    from zai_proxy.limiter.settings import LimiterSettings
    from zai_proxy.shared.logs import configure_logging

    settings = LimiterSettings()
    configure_logging(settings.log_level)
    host = args.host or settings.limiter_host
    return _serve(build_app(settings), host, _port(args.port, settings.limiter_port))


def _run_collector(args: argparse.Namespace) -> int:
    import asyncio

    from zai_proxy.collector import migrate
    from zai_proxy.collector.app import build_app
    from zai_proxy.collector.settings import CollectorSettings
    from zai_proxy.shared.logs import configure_logging

    settings = CollectorSettings()
    configure_logging(settings.log_level)
    asyncio.run(migrate.upgrade(settings.database_url))
    host = args.host or settings.collector_host
    return _serve(build_app(settings), host, _port(args.port, settings.collector_port))


def _run_dashboard(args: argparse.Namespace) -> int:
    import asyncio

    from zai_proxy.collector import migrate
    from zai_proxy.dashboard_api.app import build_app
    from zai_proxy.dashboard_api.settings import DashboardSettings
    from zai_proxy.shared.logs import configure_logging

    settings = DashboardSettings()
    configure_logging(settings.log_level)
    # So that it can start before the collector, on an empty database.
    asyncio.run(migrate.upgrade(settings.database_url))
    host = args.host or settings.dashboard_host
    # Live streams end at shutdown; the timeout bounds the wait for the last writes.
    return _serve(build_app(settings), host, _port(args.port, settings.dashboard_port),
                  timeout_graceful_shutdown=5)  # fmt: skip


def _run_migrate(args: argparse.Namespace) -> int:
    import asyncio

    from zai_proxy.collector import migrate
    from zai_proxy.collector.database import masked, normalise_url
    from zai_proxy.collector.settings import DatabaseSettings

    url = DatabaseSettings().database_url
    if args.downgrade is not None:
        asyncio.run(migrate.downgrade(url, args.downgrade))
    else:
        asyncio.run(migrate.upgrade(url))
    revision = asyncio.run(migrate.current(url))
    print(f"{masked(normalise_url(url))}: at revision {revision or 'base (empty)'}")
    return 0


def _reported_errors() -> tuple[type[Exception], ...]:
    """Errors shown as one line: bad configuration, and the rollup database failing."""
    # Only the collector's commands import the storage layer (SQLAlchemy takes a quarter
    # of a second to import): a StorageError can only have been raised once it is loaded.
    database = sys.modules.get("zai_proxy.collector.database")
    return (ValueError,) if database is None else (ValueError, database.StorageError)


def _run_status(args: argparse.Namespace) -> int:
    from zai_proxy.status import report

    text, all_up = report(args.host)
    print(text)
    return 0 if all_up else 1


def _run_up(args: argparse.Namespace) -> int:
    """--host: where every part listens; --port: the proxy's port."""
    from zai_proxy.up import run

    return run(demo=False, host=args.host, port=args.port, access_log=args.access_log)


def _run_demo(args: argparse.Namespace) -> int:
    from zai_proxy.up import run

    return run(demo=True, host=args.host, port=args.port, access_log=args.access_log)


def _port(cli: int | None, configured: int) -> int:
    return configured if cli is None else cli


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="zai-proxy",
        description="LLM gateway: token accounting, metrics and an adaptive rate limiter.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def service(name: str, help_text: str, run: Callable[[argparse.Namespace], int]) -> None:
        command = sub.add_parser(name, help=help_text)
        command.add_argument("--host", help="listen address (default from the environment)")
        command.add_argument("--port", type=int, help="listen port (default from the environment)")
        command.set_defaults(run=run)
        if name == "proxy":
            command.add_argument("--processes", type=int, help="worker processes (PROXY_PROCESSES)")
        if name in ("up", "demo"):
            default = "a file the banner names" if name == "demo" else "the terminal"
            command.add_argument(
                "--access-log",
                metavar="FILE",
                help=f"append the access log to FILE, '-': the terminal (ACCESS_LOG_FILE; "
                f"default: {default})",
            )

    service("proxy", "the data plane (:8080)", _run_proxy)
    service("limiter", "the rate limiter control plane (:8090)", _run_limiter)
    service("collector", "scrape proxies and write SQL rollups (:8091)", _run_collector)
    service("dashboard", "the dashboard API and web UI (:3000)", _run_dashboard)
    service("up", "everything on one machine", _run_up)
    service("demo", "up plus a simulated upstream and load", _run_demo)
    migrate = sub.add_parser("migrate", help="apply the rollup database's migrations")
    migrate.add_argument(
        "--downgrade", metavar="REV", help="migrate down to this revision (base: drop all)"
    )
    migrate.set_defaults(run=_run_migrate)
    status = sub.add_parser("status", help="health and figures of a running system")
    status.add_argument("--host", default="127.0.0.1", help="where the parts run")
    status.set_defaults(run=_run_status)
    return parser


def command_names() -> list[str]:
    """Every subcommand's name."""
    parser = build_parser()
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(commands.choices)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ValidationError as exc:
        print(f"zai-proxy {args.command}: {_settings_error(exc)}", file=sys.stderr)
    except Exception as exc:
        if not isinstance(exc, _reported_errors()):
            raise
        print(f"zai-proxy {args.command}: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
