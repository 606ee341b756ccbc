"""Keys named by alias, inline (``alias:key,alias:key``) or in a file (``alias key`` per
line, ``#`` comments): the form of the client keys (``PROXY_API_KEYS``) and of the
upstream keys (``ZAI_API_KEYS``). An entry may go on with ``name=value`` options after
the key, separated by spaces (``alias:key weight=2 class=batch``, or in a file ``alias
key weight=2 class=batch``), where its variable takes options (the client keys' policy).
Errors name the variable, the entry and the alias, never the key.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

ALIAS = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
MIN_KEY_LENGTH = 8


@dataclass(frozen=True, slots=True)
class Entry:
    """One key and the options written after it."""

    key: str
    options: dict[str, str] = field(default_factory=dict)


def parse_inline(text: str, variable: str, options: Collection[str] = ()) -> dict[str, Entry]:
    """``alias:key [name=value ...],...`` into {alias: entry}."""
    entries: dict[str, Entry] = {}
    for number, item in enumerate(text.split(","), start=1):
        if item.strip():
            alias, sep, rest = item.strip().partition(":")
            fields = rest.split() if sep else []
            where = f"{variable} entry {number}"
            _add(entries, alias.strip(), fields, where, options)
    return entries


def parse_file(text: str, source: str, options: Collection[str] = ()) -> dict[str, Entry]:
    """A keys file (``alias key [name=value ...]`` per line, ``#`` comments)."""
    entries: dict[str, Entry] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if fields:
            _add(entries, fields[0], fields[1:], f"{source} line {number}", options)
    return entries


def read_entries(
    inline: str, file: Path | None, variable: str, options: Collection[str] = ()
) -> dict[str, Entry]:
    """Entries from a variable and its file (``<variable>_FILE``); both may be given, but
    an alias only once. ``options``: the option names an entry may carry."""
    entries = parse_inline(inline, variable, options) if inline.strip() else {}
    if file is not None:
        try:
            text = file.read_text()
        except OSError as exc:
            raise ValueError(f"{variable}_FILE {file}: {exc.strerror}") from None
        for alias, entry in parse_file(text, str(file), options).items():
            if alias in entries:
                raise ValueError(f"alias {alias!r} is in both {variable} and {file}")
            entries[alias] = entry
    return entries


def read_keys(inline: str, file: Path | None, variable: str) -> dict[str, str]:
    """Keys alone (no options allowed) from a variable and its file."""
    return {alias: entry.key for alias, entry in read_entries(inline, file, variable).items()}


def _add(
    entries: dict[str, Entry],
    alias: str,
    fields: list[str],
    where: str,
    allowed: Collection[str],
) -> None:
    if not ALIAS.match(alias):
        raise ValueError(f"{where}: the alias must be 1-32 letters, digits, '.', '_' or '-'")
    key = fields[0] if fields else ""
    if len(key) < MIN_KEY_LENGTH or ("=" in key and key.split("=", 1)[0] in allowed):
        raise ValueError(
            f"{where} ({alias}): expected 'alias key' with a key of {MIN_KEY_LENGTH} or more"
        )
    options: dict[str, str] = {}
    for option in fields[1:]:
        name, sep, value = option.partition("=")
        if not allowed:
            raise ValueError(f"{where} ({alias}): expected 'alias key' and nothing after it")
        if not sep or name not in allowed or not value:
            known = ", ".join(sorted(allowed))
            raise ValueError(f"{where} ({alias}): {name!r} is not an option ({known}=value)")
        if name in options:
            raise ValueError(f"{where} ({alias}): option {name!r} is given twice")
        options[name] = value
    if alias in entries:
        raise ValueError(f"{where}: alias {alias!r} appears twice")
    entries[alias] = Entry(key, options)
