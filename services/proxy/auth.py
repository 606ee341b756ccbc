"""Client keys: who may use the proxy, and the alias their traffic is labelled with.

With ``PROXY_API_KEYS`` (``alias:key,alias:key``) or ``PROXY_API_KEYS_FILE`` (one
``alias key`` per line, ``#`` comments) set, a request must carry one of the keys, the
way its SDK sends it: ``Authorization: Bearer <key>`` or ``x-api-key: <key>``. Keys are
kept only as SHA-256 digests and compared with ``hmac.compare_digest`` against every entry
(no early exit), so neither a key nor how much of it matched leaks through timing. With
neither set, every request passes under the alias ``anonymous``. An entry's options
(``clients.OPTIONS``) make its client's policy: weight, class and budgets.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from zai_proxy.limiter.store import Claim
from zai_proxy.proxy.clients import OPTIONS, ClientPolicy, policy
from zai_proxy.proxy.errors import ProxyError
from zai_proxy.shared import keyfiles
from zai_proxy.shared.keyfiles import Entry

ANONYMOUS = "anonymous"
VARIABLE = "PROXY_API_KEYS"
__all__ = ["ANONYMOUS", "ClientKeys", "Unauthorized", "parse_file", "parse_inline"]


class Unauthorized(ProxyError):
    """The request carries no valid client key."""

    status = 401
    code = "invalid_api_key"
    anthropic_type = "authentication_error"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [*super().headers(), (b"www-authenticate", b'Bearer realm="zai-proxy"')]


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


def parse_inline(text: str) -> dict[str, Entry]:
    """PROXY_API_KEYS (``alias:key [option=value ...],...``) into {alias: entry}."""
    return keyfiles.parse_inline(text, VARIABLE, OPTIONS)


def parse_file(text: str, source: str) -> dict[str, Entry]:
    """A client keys file (``alias key [option=value ...]`` per line)."""
    return keyfiles.parse_file(text, source, OPTIONS)


class ClientKeys:
    """Checks a request's client key, names its alias, and makes its limiter claim."""

    def __init__(self, entries: dict[str, Entry]) -> None:
        self._entries = [(alias, _digest(entry.key)) for alias, entry in entries.items()]
        self.enabled = bool(self._entries)
        self.aliases = [alias for alias, _ in self._entries] or [ANONYMOUS]
        self.policies = {
            alias: policy(alias, entry.options, VARIABLE) for alias, entry in entries.items()
        }
        self._anonymous = ClientPolicy(ANONYMOUS)

    @classmethod
    def from_settings(cls, inline: str, file: Path | None) -> ClientKeys:
        """Keys from PROXY_API_KEYS and PROXY_API_KEYS_FILE (both may be given)."""
        return cls(keyfiles.read_entries(inline, file, VARIABLE, OPTIONS))

    def claim(self, alias: str, headers: list[tuple[bytes, bytes]]) -> Claim | None:
        """The limiter claim of a request by ``alias``. None without client keys when the
        request keeps the default class: one flow, the limiter's path without clients."""
        held = self.policies.get(alias, self._anonymous)
        rank = held.rank_of(headers)
        if not self.enabled and rank == 0:
            return None
        return held.claim(rank)

    def alias_of(self, headers: list[tuple[bytes, bytes]]) -> str:
        """The alias of the request's key; Unauthorized when keys are required and none fits."""
        if not self.enabled:
            return ANONYMOUS
        presented = None
        for name, value in headers:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    presented = token.strip()
            elif name == b"x-api-key":
                presented = value.strip()
            if presented:
                break
        if not presented:
            raise Unauthorized("this proxy needs an API key (Authorization: Bearer or x-api-key)")
        digest = _digest(presented)
        found = None
        for alias, expected in self._entries:
            if hmac.compare_digest(digest, expected) and found is None:
                found = alias
        if found is None:
            raise Unauthorized("the API key is not valid for this proxy")
        return found
