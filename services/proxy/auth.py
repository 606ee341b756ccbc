"""Client keys: who may use the proxy, and the alias their traffic is labelled with.

With ``PROXY_API_KEYS`` (``alias:key,alias:key``) or ``PROXY_API_KEYS_FILE`` (one
``alias key`` per line, ``#`` comments) set, a request must carry one of the keys, the
way its SDK sends it: ``Authorization: Bearer <key>`` or ``x-api-key: <key>``. Keys are
kept only as SHA-256 digests and compared with ``hmac.compare_digest`` against every entry
(no early exit), so neither a key nor how much of it matched leaks through timing. With
neither set, every request passes under the alias ``anonymous``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

from zai_proxy.proxy.errors import ProxyError

ANONYMOUS = "anonymous"
_ALIAS = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


class Unauthorized(ProxyError):
    """The request carries no valid client key."""

    status = 401
    code = "invalid_api_key"
    anthropic_type = "authentication_error"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [*super().headers(), (b"www-authenticate", b'Bearer realm="zai-proxy"')]


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


def parse_inline(text: str) -> dict[str, str]:
    """PROXY_API_KEYS (``alias:key,alias:key``) into {alias: key}."""
    keys: dict[str, str] = {}
    for number, entry in enumerate(text.split(","), start=1):
        if entry.strip():
            alias, sep, key = entry.strip().partition(":")
            _add(keys, alias.strip(), key.strip() if sep else "", f"PROXY_API_KEYS entry {number}")
    return keys


def parse_file(text: str, source: str) -> dict[str, str]:
    """A keys file (``alias key`` per line, ``#`` comments) into {alias: key}."""
    keys: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if fields:
            key = fields[1] if len(fields) == 2 else ""
            _add(keys, fields[0], key, f"{source} line {number}")
    return keys


def _add(keys: dict[str, str], alias: str, key: str, where: str) -> None:
    # Messages name the alias and the place, never the key.
    if not _ALIAS.match(alias):
        raise ValueError(f"{where}: the alias must be 1-32 letters, digits, '.', '_' or '-'")
    if len(key) < 8:
        raise ValueError(f"{where} ({alias}): expected 'alias key' with a key of 8 or more")
    if alias in keys:
        raise ValueError(f"{where}: alias {alias!r} appears twice")
    keys[alias] = key


class ClientKeys:
    """Checks a request's client key and names its alias."""

    def __init__(self, keys: dict[str, str]) -> None:
        self._entries = [(alias, _digest(key)) for alias, key in keys.items()]
        self.enabled = bool(self._entries)
        self.aliases = [alias for alias, _ in self._entries] or [ANONYMOUS]

    @classmethod
    def from_settings(cls, inline: str, file: Path | None) -> ClientKeys:
        """Keys from PROXY_API_KEYS and PROXY_API_KEYS_FILE (both may be given)."""
        keys = parse_inline(inline) if inline else {}
        if file is not None:
            try:
                text = file.read_text()
            except OSError as exc:
                raise ValueError(f"PROXY_API_KEYS_FILE {file}: {exc.strerror}") from None
            for alias, key in parse_file(text, str(file)).items():
                if alias in keys:
                    raise ValueError(f"alias {alias!r} is in both PROXY_API_KEYS and {file}")
                keys[alias] = key
        return cls(keys)

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
