"""The rollup database: URL handling, engine creation and the storage errors.

``DATABASE_URL`` may name a synchronous driver (``sqlite:///path``, ``postgresql://``,
``postgres://``); every URL is normalised to its asyncio driver (aiosqlite, asyncpg).
SQLite runs in WAL mode (readers never block the collector's writes), with a busy
timeout (a writer waits for the lock instead of failing at once) and
``synchronous=NORMAL`` (durable at checkpoints, which is enough for telemetry).

Error hierarchy:

    StorageError            the rollup store failed (bad configuration, rejected data)
    └── StorageUnavailable  the database did not answer now: retry later
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./zai-proxy.db"
DEFAULT_BUSY_TIMEOUT = 5.0  # seconds a SQLite writer waits for the lock
DEFAULT_CONNECT_TIMEOUT = 5.0  # seconds; asyncpg's own default is a minute

# Synchronous or bare driver names → the asyncio driver this service uses.
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+psycopg": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}
_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")
# SQLSTATE classes worth a retry: connection exception, insufficient resources, operator
# intervention (shutdown, cancelled statement), transaction rollback (deadlock), object not
# in prerequisite state (a database not accepting connections, a lock not available).
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "53", "55", "57", "40"})


class StorageError(Exception):
    """The rollup store failed."""


class StorageUnavailable(StorageError):
    """The rollup database did not answer now; the same call may succeed later."""


def storage_error(exc: BaseException, url: str | URL) -> StorageError:
    """The storage error for a driver or network failure (StorageUnavailable if transient)."""
    if isinstance(exc, StorageError):
        return exc
    detail = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    transient = isinstance(
        exc, OSError | TimeoutError | OperationalError | InterfaceError | DisconnectionError
    )
    if isinstance(exc, DBAPIError):
        sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
        transient = (
            transient or exc.connection_invalidated or sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES
        )
    kind = StorageUnavailable if transient else StorageError
    return kind(f"database {masked(url)}: {type(detail).__name__}: {detail}")


def masked(url: str | URL) -> str:
    """The URL as it may appear in a message: its password replaced by ``***``."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    return _PASSWORD.sub(r"\1***@", url)


def normalise_url(url: str | None) -> URL:
    """The asyncio form of a database URL (unset: the default SQLite file)."""
    raw = url or DEFAULT_DATABASE_URL
    try:
        parsed = make_url(raw)
    except ArgumentError:
        # from None: SQLAlchemy's message repeats the URL with its password.
        raise ValueError(f"DATABASE_URL is not a database URL: {masked(raw)}") from None
    driver = _ASYNC_DRIVERS.get(parsed.drivername)
    if driver is None:
        raise ValueError(
            f"DATABASE_URL names an unsupported database {parsed.drivername!r} "
            f"({masked(parsed)}): use sqlite:///path or postgresql://user@host/db"
        )
    parsed = parsed.set(drivername=driver)
    if is_sqlite(parsed) and _in_memory(parsed.database):
        # Migrations, the collector and the dashboard each open their own engine, and
        # each would see a database of its own.
        raise ValueError(
            f"DATABASE_URL names an in-memory SQLite database ({masked(parsed)}): "
            "use a file, sqlite:///path/to/zai-proxy.db"
        )
    return parsed


def is_sqlite(url: URL) -> bool:
    """Whether the URL names a SQLite database."""
    return url.get_backend_name() == "sqlite"


def _in_memory(database: str | None) -> bool:
    return not database or database == ":memory:" or database.startswith("file::memory:")


def _check_writable(path: Path) -> None:
    # WAL mode writes two files beside the database, so its folder must be writable too.
    folder = path.resolve().parent
    if not folder.is_dir():
        raise StorageError(f"cannot create the SQLite database {path}: {folder} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise StorageError(f"cannot write the SQLite database {path}: permission denied")


def create_engine(
    url: str | None = None,
    *,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    **engine_args: Any,
) -> AsyncEngine:
    """An asyncio engine for ``url`` (unset: the default SQLite file)."""
    parsed = normalise_url(url)
    options: dict[str, Any] = {
        "json_serializer": lambda value: orjson.dumps(value).decode(),
        "json_deserializer": orjson.loads,
    }
    if is_sqlite(parsed):
        _check_writable(Path(str(parsed.database)))
        options["connect_args"] = {"timeout": busy_timeout}
    else:
        options["pool_pre_ping"] = True  # a restarted server leaves dead pooled connections
        options["connect_args"] = {"timeout": connect_timeout}
    options.update(engine_args)
    engine = create_async_engine(parsed, **options)
    if is_sqlite(parsed):
        _set_sqlite_pragmas(engine, busy_timeout)
    return engine


def _set_sqlite_pragmas(engine: AsyncEngine, busy_timeout: float) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            _enter_wal_mode(cursor, busy_timeout)
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()


def _enter_wal_mode(cursor: Any, busy_timeout: float) -> None:
    """Switch a new database file to WAL mode, waiting up to ``busy_timeout`` for the lock.

    The switch needs the database to itself, and SQLite refuses it at once (its busy
    timeout does not apply) while another connection writes: services that start
    together on a new file (the collector and the dashboard API migrating at once) would
    fail. A file already in WAL mode needs no switch.
    """
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:  # the driver's OperationalError, wrapped or not
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(0.05)
