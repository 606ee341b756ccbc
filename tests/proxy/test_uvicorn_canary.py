"""A canary for the uvicorn internals the proxy's front door is built on.

`HardenedProtocol` (services/proxy/protocol.py) subclasses uvicorn's httptools protocol,
which is not a public API (docs/plan/0015-the-proxy-owns-its-front-door.md): it overrides
its methods and reads and sets attributes of the protocol and of its request-response
cycle. pyproject.toml pins the uvicorn range this was tested with; when an upgrade moves
one of these names, this test fails and names it, instead of a hostile-input test failing
for reasons far from the cause (or, for an override that no longer runs, nothing failing).
"""

from __future__ import annotations

import asyncio
import inspect
from importlib.metadata import version
from pathlib import Path
from typing import Any

import uvicorn
from packaging.requirements import Requirement
from uvicorn.protocols.http import httptools_impl
from uvicorn.server import ServerState

from zai_proxy.proxy.protocol import HardenedProtocol

ROOT = Path(__file__).resolve().parents[2]
# Module names the protocol imports.
MODULE_NAMES = ("HttpToolsProtocol", "RequestResponseCycle", "STATUS_LINE")
# Methods of uvicorn's protocol the hardened one overrides: each must still be uvicorn's
# (else the override is dead code), with the same parameters.
OVERRIDDEN = (
    "connection_made",
    "connection_lost",
    "data_received",
    "send_400_response",
    "on_message_begin",
    "on_header",
    "on_headers_complete",
    "on_body",
    "on_response_complete",
)
# Callbacks httptools calls when the protocol has them (uvicorn defines none of these).
PARSER_CALLBACKS = ("on_chunk_header", "on_chunk_complete")
# Attributes of a protocol that has begun a request.
PROTOCOL_ATTRIBUTES = (
    "loop", "transport", "flow", "parser", "server_state", "cycle", "pipeline", "headers",
    "url", "scope", "client",
)  # fmt: skip
# Attributes of a request's cycle, read or set.
CYCLE_ATTRIBUTES = (
    "scope", "send", "more_body", "keep_alive", "response_complete", "response_started",
    "disconnected", "message_event",
)  # fmt: skip


class Transport(asyncio.Transport):
    """A transport that keeps what is written and is never closing."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""

    def write(self, data: Any) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_the_installed_uvicorn_is_in_the_pinned_range_which_has_an_upper_bound() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    pinned = next(
        Requirement(line.strip().strip('",'))
        for line in text.splitlines()
        if line.strip().startswith('"uvicorn[')
    )
    assert any(spec.operator in ("<", "<=", "==", "~=") for spec in pinned.specifier), (
        f"uvicorn has no upper bound ({pinned.specifier}): a release may move its internals"
    )
    assert version("uvicorn") in pinned.specifier, (version("uvicorn"), str(pinned.specifier))


def test_every_uvicorn_name_the_protocol_relies_on_is_still_there() -> None:
    for name in MODULE_NAMES:
        assert hasattr(httptools_impl, name), f"uvicorn's httptools_impl lost {name}"
    base = httptools_impl.HttpToolsProtocol
    for name in OVERRIDDEN:
        assert name in vars(base), f"HttpToolsProtocol.{name} is gone: the override is dead"
        ours, theirs = getattr(HardenedProtocol, name), getattr(base, name)
        assert inspect.signature(ours).parameters.keys() == (
            inspect.signature(theirs).parameters.keys()
        ), f"HttpToolsProtocol.{name} changed its parameters"
    for name in PARSER_CALLBACKS:
        assert name not in vars(base), f"uvicorn now defines {name}: call it from the override"

    async def begin_a_request() -> tuple[HardenedProtocol, Transport]:
        config = uvicorn.Config(app, lifespan="off", log_config=None)
        config.load()
        protocol = HardenedProtocol(config, ServerState(), {}, asyncio.get_running_loop())
        transport = Transport()
        protocol.connection_made(transport)
        protocol.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
        await asyncio.sleep(0.01)  # the application answers before the body came
        return protocol, transport

    protocol, transport = asyncio.run(begin_a_request())
    for name in PROTOCOL_ATTRIBUTES:
        assert hasattr(protocol, name), f"HttpToolsProtocol lost the attribute {name}"
    assert isinstance(protocol.server_state.total_requests, int), "ServerState.total_requests"
    # The protocol resumes reading through its flow control when a body waits for the app.
    assert callable(getattr(protocol.flow, "resume_reading", None)), "FlowControl.resume_reading"
    cycle = protocol.cycle
    assert isinstance(cycle, httptools_impl.RequestResponseCycle)
    for name in CYCLE_ATTRIBUTES:
        assert hasattr(cycle, name), f"RequestResponseCycle lost the attribute {name}"
    # And what they are used for still holds: an answer before the body says it closes.
    assert transport.written.startswith(b"HTTP/1.1 204 "), transport.written
    assert b"connection: close\r\n" in transport.written, transport.written
