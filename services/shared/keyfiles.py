"""Keys named by alias, inline (``alias:key,alias:key``) or in a file (``alias key`` per
line, ``#`` comments): the form of the client keys (``PROXY_API_KEYS``) and of the
upstream keys (``ZAI_API_KEYS``). Errors name the variable, the entry and the alias, never
the key.
"""

from __future__ import annotations

import re
from pathlib import Path

ALIAS = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
MIN_KEY_LENGTH = 8


def parse_inline(text: str, variable: str) -> dict[str, str]:
    """``alias:key,alias:key`` into {alias: key}."""
    keys: dict[str, str] = {}
    for number, entry in enumerate(text.split(","), start=1):
        if entry.strip():
            alias, sep, key = entry.strip().partition(":")
            _add(keys, alias.strip(), key.strip() if sep else "", f"{variable} entry {number}")
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


def read_keys(inline: str, file: Path | None, variable: str) -> dict[str, str]:
    """Keys from a variable and its file (``<variable>_FILE``); both may be given, but an
    alias only once."""
    keys = parse_inline(inline, variable) if inline.strip() else {}
    if file is not None:
        try:
            text = file.read_text()
        except OSError as exc:
            raise ValueError(f"{variable}_FILE {file}: {exc.strerror}") from None
        for alias, key in parse_file(text, str(file)).items():
            if alias in keys:
                raise ValueError(f"alias {alias!r} is in both {variable} and {file}")
            keys[alias] = key
    return keys


def _add(keys: dict[str, str], alias: str, key: str, where: str) -> None:
    if not ALIAS.match(alias):
        raise ValueError(f"{where}: the alias must be 1-32 letters, digits, '.', '_' or '-'")
    if len(key) < MIN_KEY_LENGTH:
        raise ValueError(
            f"{where} ({alias}): expected 'alias key' with a key of {MIN_KEY_LENGTH} or more"
        )
    if alias in keys:
        raise ValueError(f"{where}: alias {alias!r} appears twice")
    keys[alias] = key
