"""Serving the simulator with uvicorn on a socket it binds itself, announcing the real port."""

import logging
import socket

import uvicorn

from .app import build_app
from .config import SimulatorConfig
from .responses import ConnectionBreak

READY_PREFIX = "listening on "
KEEP_ALIVE_S = 75
GRACEFUL_SHUTDOWN_S = 1  # a simulator has nothing worth waiting for


class _DropConnectionBreaks(logging.Filter):
    """Keeps uvicorn from logging a traceback for every x-sim-break-after it carries out."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ConnectionBreak))


class _AnnouncingServer(uvicorn.Server):
    """A uvicorn server that prints one ready line once it accepts connections."""

    def __init__(self, config: uvicorn.Config, announcement: str) -> None:
        super().__init__(config)
        self._announcement = announcement

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(self._announcement, flush=True)


def install_log_filter() -> None:
    """Silence uvicorn's error log for deliberate connection breaks (for in-process servers)."""
    logging.getLogger("uvicorn.error").addFilter(_DropConnectionBreaks())


def base_url(host: str, port: int) -> str:
    """The http URL of a server bound to host and port."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(config: SimulatorConfig, host: str, port: int, log_level: str = "warning") -> None:
    """Serve until SIGINT or SIGTERM; print `listening on <url>` to stdout once ready."""
    uv_config = uvicorn.Config(
        build_app(config),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level=log_level,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        # Like a real API front (nginx's default): longer than the proxy's pooled keep-alive,
        # so the proxy, not the upstream, closes idle connections.
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    install_log_filter()
    sock = uv_config.bind_socket()
    url = base_url(host, sock.getsockname()[1])
    _AnnouncingServer(uv_config, READY_PREFIX + url).run(sockets=[sock])
