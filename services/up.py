"""``zai-proxy up`` and ``zai-proxy demo``: every part in one process on one machine.

One event loop serves the proxy, the limiter (its control loop and admin API, over the
in-process store the proxy admits from), the collector (writing a SQLite file unless
DATABASE_URL says otherwise) and the dashboard, each on its own port. Every port is bound
before anything starts, so a taken port is a one-line error rather than a half-started
system; Ctrl-C (or SIGTERM) stops every part, the proxy draining first.

``demo`` adds a simulated upstream with a hidden rate limit that changes over time, a
canary proxy beside the production one, and a synthetic load with a progress line; its
access log goes to a file (DEMO_ACCESS_LOG) unless ACCESS_LOG_FILE or --access-log says
otherwise ('-': the terminal), so that the progress line stays readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import secrets
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import uvicorn
import uvloop
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from zai_proxy import __version__
from zai_proxy.collector.settings import CollectorSettings
from zai_proxy.dashboard_api.settings import DashboardSettings
from zai_proxy.limiter.settings import LimiterSettings
from zai_proxy.limiter.stores import open_store
from zai_proxy.progress import ProgressLine
from zai_proxy.proxy.accesslog import to_terminal
from zai_proxy.proxy.settings import ProxySettings

# A background job that runs beside the servers (the demo load).
Job = Callable[[], Coroutine[Any, Any, None]]

# The demo's hidden limit (requests/s) over time: it halves, then rises above the start.
DEMO_SCHEDULE = ((0.0, 30.0), (90.0, 15.0), (180.0, 45.0))
DEMO_QUOTA = (("5h", 200_000), ("weekly", 2_000_000))
DEMO_KEY = "sk-demo-not-a-real-key"
DEMO_DATABASE_URL = "sqlite+aiosqlite:///./zai-proxy-demo.db"
# Beside the demo's database, in the working directory: ~60 lines a second would bury the
# progress line on the terminal.
DEMO_ACCESS_LOG = "zai-proxy-demo-access.log"


class StackSettings(BaseSettings):
    """Where `up` and `demo` listen (each part's port is its own service's setting)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    up_host: str = Field(
        default="127.0.0.1", description="Address every part of `up` and `demo` listens on."
    )
    demo_simulator_port: int = Field(
        default=8070, ge=1, le=65535, description="Port of the demo's simulated upstream."
    )
    demo_canary_port: int = Field(
        default=8081, ge=1, le=65535, description="Port of the demo's canary proxy."
    )


@dataclass
class Part:
    """One server of the stack: what it is, and how uvicorn serves it where."""

    name: str
    config: uvicorn.Config
    note: str = ""

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def port(self) -> int:
        return self.config.port


def service_config(
    app: Any,
    host: str,
    port: int,
    *,
    lifespan: Literal["auto", "on", "off"] = "on",
    timeout_graceful_shutdown: int = 10,
) -> uvicorn.Config:
    """How a control-plane part (limiter, collector, dashboard, simulator) is served, by
    its own command and inside `up`; the proxy has its own (proxy.server.server_config)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        lifespan=lifespan,
        log_config=None,
        access_log=False,
        timeout_keep_alive=75,
        timeout_graceful_shutdown=timeout_graceful_shutdown,
    )


class StackServer(uvicorn.Server):
    """A uvicorn server that leaves signals to the stack (several share one loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(part: Part) -> socket.socket:
    """The part's listening socket; a clear error when the port is taken."""
    family = socket.AF_INET6 if ":" in part.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((part.host, part.port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ValueError(
                f"port {part.port} ({part.name}) is already in use: stop what holds it, or "
                f"choose another port in the environment (see README)"
            ) from None
        raise ValueError(f"cannot listen on {part.host}:{part.port} ({part.name}): {exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def serve(
    parts: list[Part],
    extra: list[Job] | None = None,
    announce: Callable[[], None] | None = None,
) -> None:
    """Serve every part until SIGINT or SIGTERM; then stop them all, the proxies first."""
    sockets = []
    try:
        for part in parts:
            sockets.append(bind(part))
    except ValueError:
        for sock in sockets:
            sock.close()
        raise
    if announce is not None:
        announce()
    servers = [StackServer(part.config) for part in parts]
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    tasks = [
        asyncio.create_task(server.serve(sockets=[sock]), name=part.name)
        for part, server, sock in zip(parts, servers, sockets, strict=True)
    ]
    helpers = [asyncio.create_task(job(), name="helper") for job in extra or ()]
    waiter = asyncio.create_task(stopping.wait())
    await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for job in helpers:
        job.cancel()
    for server in servers:  # parts are listed proxies first
        server.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    waiter.cancel()
    for sock in sockets:
        sock.close()
    failed = [part.name for part, server in zip(parts, servers, strict=True) if not server.started]
    if failed and not stopping.is_set():
        raise ValueError(f"{', '.join(failed)} did not start (see the log above)")


S = TypeVar("S", bound=BaseSettings)


def unless_set(settings: S, **defaults: Any) -> S:
    """The settings with `up`'s own defaults for the fields the environment left unset."""
    update = {k: v for k, v in defaults.items() if k not in settings.model_fields_set}
    return settings.model_copy(update=update) if update else settings


@dataclass
class StackConfig:
    """The settings of every part of the stack: the same classes the single commands read,
    with `up`'s (and the demo's) defaults where the environment sets nothing."""

    stack: StackSettings
    host: str
    proxies: list[ProxySettings]  # production first (the demo adds a canary)
    limits: LimiterSettings
    collector: CollectorSettings
    dashboard: DashboardSettings
    demo: bool

    @property
    def simulator_url(self) -> str:
        return f"http://{self.host}:{self.stack.demo_simulator_port}"

    @property
    def limiter_url(self) -> str:
        return f"http://{self.host}:{self.limits.limiter_port}"

    @property
    def proxy_urls(self) -> list[str]:
        return [f"http://{self.host}:{proxy.proxy_port}" for proxy in self.proxies]


def compose(
    demo: bool, host: str | None = None, port: int | None = None, access_log: str | None = None
) -> StackConfig:
    """Every part's settings from the environment, the command line's --host, --port and
    --access-log (where every part listens / the proxy's port / where its access log goes)
    and the stack's defaults."""
    stack = StackSettings()
    host = host or stack.up_host
    proxy, limits = ProxySettings(), LimiterSettings()
    collector, dashboard = CollectorSettings(), DashboardSettings()
    if port is not None:
        proxy = proxy.model_copy(update={"proxy_port": port})
    if access_log is not None:
        proxy = proxy.model_copy(update={"access_log_file": access_log})
    if demo:
        simulator = f"http://{host}:{stack.demo_simulator_port}"
        proxy = unless_set(
            proxy,
            zai_api_key=SecretStr(DEMO_KEY),
            zai_target_url=f"{simulator}/api/paas/v4",
            zai_anthropic_url=f"{simulator}/api/anthropic",
            access_log_file=DEMO_ACCESS_LOG,
        )
        collector = unless_set(collector, database_url=DEMO_DATABASE_URL)
        dashboard = unless_set(dashboard, database_url=DEMO_DATABASE_URL)
    proxy.require_key()
    # The limiter names its pools after the proxies' upstream (keys and URL).
    limits = limits.model_copy(
        update={
            "zai_api_key": proxy.zai_api_key,
            "zai_api_keys": proxy.zai_api_keys,
            "zai_api_keys_file": proxy.zai_api_keys_file,
            "zai_target_url": proxy.zai_target_url,
        }
    )
    limits = unless_set(limits, limiter_admin_token=SecretStr(secrets.token_urlsafe(24)))
    proxies = [proxy]
    if demo:
        proxies.append(
            proxy.model_copy(
                update={"deployment_variant": "canary", "proxy_port": stack.demo_canary_port}
            )
        )
    limiter_url = f"http://{host}:{limits.limiter_port}"
    collector = unless_set(
        collector,
        collector_targets=",".join(f"http://{host}:{p.proxy_port}" for p in proxies),
        collector_limiter_targets=limiter_url,
    )
    dashboard = unless_set(dashboard, limiter_url=limiter_url)
    dashboard = dashboard.model_copy(update={"limiter_admin_token": limits.limiter_admin_token})
    return StackConfig(stack, host, proxies, limits, collector, dashboard, demo)


def _stack(
    config: StackConfig, line: ProgressLine | None = None
) -> tuple[list[Part], list[Job], list[tuple[str, str]]]:
    """Build every part from its settings (demo: with its simulated upstream and load, its
    progress redrawn on `line` when given)."""
    from zai_proxy.collector import migrate
    from zai_proxy.collector.app import build_app as collector_app
    from zai_proxy.dashboard_api.app import build_app as dashboard_app
    from zai_proxy.limiter.app import build_app as limiter_app
    from zai_proxy.proxy.app import ProxyApp
    from zai_proxy.proxy.server import server_config

    host, limits = config.host, config.limits
    collector, dashboard = config.collector, config.dashboard
    # One store for every part of this process: the proxies admit from it, the limiter
    # steps it (REDIS_URL, when set, shares it with other machines too).
    store = open_store(limits.redis_url, limits.store_config(), socket_timeout=limits.redis_timeout)
    asyncio.run(migrate.upgrade(collector.database_url))

    parts = [
        Part(
            f"proxy ({settings.deployment_variant})",
            server_config(
                ProxyApp(settings, limits, store=store, run_control=False),
                settings,
                host,
                settings.proxy_port,
            ),
            "OpenAI /v1/chat/completions, Anthropic /v1/messages",
        )
        for settings in config.proxies
    ]
    parts += [
        Part("limiter", service_config(limiter_app(limits, store=store), host, limits.limiter_port),
             "Redis" if limits.redis_url else "in-process store"),
        Part("collector",
             service_config(collector_app(collector), host, collector.collector_port),
             f"writes {_where(collector.database_url)}"),
        Part("dashboard",
             service_config(dashboard_app(dashboard), host, dashboard.dashboard_port), ""),
    ]  # fmt: skip
    extra: list[Job] = []
    # The demo's upstream is one of its parts, listed above: no row of its own here.
    notes = [] if config.demo else [("upstream", config.proxies[0].zai_target_url)]
    proxy = config.proxies[0]
    if proxy.access_log and not to_terminal(proxy.access_log_file):
        notes.append(("access log", str(Path(proxy.access_log_file).resolve())))
    if config.demo:
        from zai_proxy.demo import DemoLoad
        from zai_proxy.simulator.app import build_app as simulator_app
        from zai_proxy.simulator.config import SimulatorConfig

        simulator = simulator_app(
            SimulatorConfig(schedule=DEMO_SCHEDULE, quota_requests=DEMO_QUOTA)
        )
        port = config.stack.demo_simulator_port
        parts.append(
            Part("upstream (simulated)", service_config(simulator, host, port, lifespan="off"),
                 "hidden limit 30 → 15 → 45 req/s, no key, no network")
        )  # fmt: skip
        load = DemoLoad(
            config.proxy_urls, simulator=config.simulator_url, limiter=config.limiter_url,
            line=line,
        )  # fmt: skip
        extra.append(load.run)
    return parts, extra, notes


def _where(database_url: str | None) -> str:
    from zai_proxy.collector.database import DEFAULT_DATABASE_URL

    database_url = database_url or DEFAULT_DATABASE_URL
    if database_url.startswith("sqlite"):
        return str(Path(database_url.split("///", 1)[-1]).resolve())
    return database_url.split("@")[-1]


def banner(parts: list[Part], notes: list[tuple[str, str]]) -> str:
    """What listens where, and where the data (and the access log) goes."""
    lines = [f"zai-proxy {__version__} is up"]
    for part in parts:
        url = f"http://{part.host}:{part.port}"
        lines.append(f"  {part.name:<22} {url:<24} {part.note}".rstrip())
    lines += [f"  {label:<22} {value}" for label, value in notes]
    lines.append("Ctrl-C stops everything.")
    return "\n".join(lines)


def run(
    demo: bool = False,
    host: str | None = None,
    port: int | None = None,
    access_log: str | None = None,
) -> int:
    """Compose every part's settings, build the stack, print the banner, serve until stopped."""
    from zai_proxy.shared.logs import configure_logging

    config = compose(demo, host, port, access_log)
    # On a terminal the demo's progress line is redrawn in place, and whatever else goes to
    # stderr (the log) is written above it rather than glued to its end.
    line = ProgressLine(sys.stderr) if demo and sys.stderr.isatty() else None
    with contextlib.redirect_stderr(line) if line is not None else contextlib.nullcontext():
        configure_logging(config.proxies[0].log_level)
        parts, extra, notes = _stack(config, line)

        def announce() -> None:
            print(banner(parts, notes), file=sys.stderr, flush=True)

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(parts, extra, announce))
    return 0
