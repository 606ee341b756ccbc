"""The upstream keys of a deployment, each with its alias and its limiter pool.

``ZAI_API_KEYS`` (``alias:key,...``) and ``ZAI_API_KEYS_FILE`` (``alias key`` per line)
name several keys; ``ZAI_API_KEY`` is one more under the alias ``default``. Each key is
its own pool: the single ``ZAI_API_KEY`` keeps the pool it always had (``RATE_LIMIT_POOL``,
else ``key-`` and a digest of the key), so an upgrade keeps what it learned; a key of
``ZAI_API_KEYS`` is ``<RATE_LIMIT_POOL or "key">-<alias>``, so metrics, logs and the admin
API read the alias (and two deployments sharing a Redis tell their pools apart by
``RATE_LIMIT_POOL``). Keys are never printed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from zai_proxy.shared.keyfiles import read_keys

DEFAULT_ALIAS = "default"


@dataclass(frozen=True, slots=True)
class UpstreamKey:
    """One upstream key: its alias, the key (never in repr) and its limiter pool."""

    alias: str
    key: str = field(repr=False)
    pool: str


def legacy_pool(key: str, pool_name: str) -> str:
    """The pool of the single ZAI_API_KEY: set, or a short digest of the key."""
    if pool_name:
        return pool_name
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12] if key else "default"


def upstream_keys(single: str, inline: str, file: Path | None, pool_name: str) -> list[UpstreamKey]:
    """Every configured upstream key, ZAI_API_KEY (alias ``default``) first."""
    found: list[UpstreamKey] = []
    if single.strip():
        found.append(UpstreamKey(DEFAULT_ALIAS, single.strip(), legacy_pool(single, pool_name)))
    for alias, key in read_keys(inline, file, "ZAI_API_KEYS").items():
        if alias == DEFAULT_ALIAS and found:
            raise ValueError(
                f"ZAI_API_KEYS: the alias {DEFAULT_ALIAS!r} is ZAI_API_KEY's; rename the entry"
            )
        found.append(UpstreamKey(alias, key, f"{pool_name or 'key'}-{alias}"))
    if len({k.key for k in found}) < len(found):
        raise ValueError("ZAI_API_KEYS: the same key appears under two aliases")
    return found
