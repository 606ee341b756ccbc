"""Serving the proxy: uvicorn with a drain on SIGTERM, in one or several processes.

Shutdown order on SIGTERM: report not ready at once (so load balancers stop sending),
keep serving for SHUTDOWN_DELAY seconds, then let uvicorn stop accepting, close idle
connections and wait up to SHUTDOWN_GRACE seconds for in-flight requests and streams,
and cancel what is left. A second signal skips the delay.

With PROXY_PROCESSES > 1 the parent binds the socket, starts that many spawned children
that share it, forwards SIGTERM/SIGINT to them and waits; metrics are merged through
PROMETHEUS_MULTIPROC_DIR, which the parent creates empty before the children start.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
from types import FrameType

import uvicorn

from zai_proxy.limiter.settings import LimiterSettings
from zai_proxy.proxy.app import Lifecycle, ProxyApp
from zai_proxy.proxy.protocol import HardenedProtocol
from zai_proxy.proxy.settings import ProxySettings
from zai_proxy.shared.logs import configure_logging


class DrainingServer(uvicorn.Server):
    """A uvicorn server that reports not-ready and waits before it stops accepting."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, delay: float) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.delay = delay

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Unlike uvicorn's own handler this does not re-raise the signal after shutdown:
        # a drained proxy exits with status 0.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        elif self.lifecycle.draining or self.delay <= 0:
            self.lifecycle.draining = True
            self.should_exit = True
        else:
            self.lifecycle.draining = True
            timer = threading.Timer(self.delay, self._stop)
            timer.daemon = True
            timer.start()

    def _stop(self) -> None:
        self.should_exit = True


def server_config(app: ProxyApp, settings: ProxySettings, host: str, port: int) -> uvicorn.Config:
    """How the proxy is served, by every command that serves it (`proxy`, `up`, `demo`):
    the hardened protocol, no Date or Server header of uvicorn's, the drain's grace."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        # uvicorn only calls it, as it would a protocol class.
        http=functools.partial(  # type: ignore[arg-type]
            HardenedProtocol,
            max_head_bytes=settings.max_request_header_bytes,
            head_timeout=settings.client_header_timeout,
        ),
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,  # the client address is not used; skip the middleware
        date_header=False,  # the upstream's Date passes through
        timeout_graceful_shutdown=int(settings.shutdown_grace),
        timeout_keep_alive=75,
    )


def _serve(
    settings: ProxySettings,
    limits: LimiterSettings,
    host: str,
    port: int,
    sock: socket.socket | None,
) -> None:
    configure_logging(settings.log_level)
    app = ProxyApp(settings, limits)
    server = DrainingServer(
        server_config(app, settings, host, port), app.lifecycle, settings.shutdown_delay
    )
    server.run(sockets=[sock] if sock is not None else None)
    if not server.started:
        raise SystemExit(3)


def serve(settings: ProxySettings, limits: LimiterSettings, host: str, port: int) -> None:
    """Run the proxy until it is told to stop."""
    if settings.proxy_processes == 1:
        _serve(settings, limits, host, port, None)
        return
    if limits.redis_url is None:
        raise ValueError(
            "PROXY_PROCESSES > 1 needs REDIS_URL: the in-process limiter serves one process, "
            "and separate ones would each admit the whole rate"
        )
    _serve_processes(settings, limits, host, port)


def _serve_processes(
    settings: ProxySettings, limits: LimiterSettings, host: str, port: int
) -> None:
    metrics_dir = tempfile.mkdtemp(prefix="zai-proxy-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_serve, args=(settings, limits, host, port, sock), daemon=False)
        for _ in range(settings.proxy_processes)
    ]
    for child in children:
        child.start()

    def forward(sig: int, frame: FrameType | None) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        for child in children:
            child.join()
    finally:
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
