"""What arrived at the simulator, byte for byte, so tests can check what a proxy forwarded."""

import base64
import hashlib
from typing import Any

import orjson

from .types import Scope


def request_view(scope: Scope, body: bytes) -> dict[str, Any]:
    """The JSON view of a received request (method, path, query, headers in order, body)."""
    return {
        "method": scope["method"],
        "path": scope["path"],
        "raw_path": (scope.get("raw_path") or scope["path"].encode()).decode("latin-1"),
        "query_string": scope["query_string"].decode("latin-1"),
        "headers": [
            [name.decode("latin-1"), value.decode("latin-1")] for name, value in scope["headers"]
        ],
        "body_b64": base64.b64encode(body).decode("ascii"),
        "body_sha256": hashlib.sha256(body).hexdigest(),
    }


class RequestRecorder:
    """Remembers the last `capacity` requests by their X-Request-Id value."""

    __slots__ = ("_capacity", "_records")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        # The view is built only when asked for, so recording a request stays cheap.
        self._records: dict[str, tuple[Scope, bytes, int]] = {}

    def add(self, request_id: str, scope: Scope, body: bytes) -> None:
        """Remember a request; a repeated id (a retry) replaces the earlier one and is counted."""
        previous = self._records.pop(request_id, None)
        seen = 1 if previous is None else previous[2] + 1
        # Only what the view reads: a whole scope would keep server state alive.
        kept = {
            "method": scope["method"],
            "path": scope["path"],
            "raw_path": scope.get("raw_path"),
            "query_string": scope["query_string"],
            "headers": scope["headers"],
        }
        self._records[request_id] = (kept, body, seen)
        if len(self._records) > self._capacity:
            del self._records[next(iter(self._records))]

    def view(self, request_id: str) -> bytes | None:
        """The JSON record of the last request with that id (plus `seen`), or None."""
        entry = self._records.get(request_id)
        if entry is None:
            return None
        scope, body, seen = entry
        view = request_view(scope, body)
        view["seen"] = seen
        return orjson.dumps(view)
