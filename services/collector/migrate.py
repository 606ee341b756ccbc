"""Schema migrations of the rollup database: ``zai-proxy migrate`` and every start-up.

Alembic runs on one connection inside one transaction, under a lock: a PostgreSQL
advisory lock, or SQLite's write lock taken up front, so services that start together
migrate one after the other and the later ones find nothing to do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from zai_proxy.collector.database import (
    StorageError,
    create_engine,
    normalise_url,
    storage_error,
)

MIGRATIONS = Path(__file__).with_name("migrations")
# Any fixed 64-bit number, the same in every process that migrates this database.
MIGRATION_LOCK_KEY = 0x7A61_6970_726F_7879  # "zaiproxy"


def alembic_config() -> Config:
    """Alembic's configuration for the collector's migrations (no ini file needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head() -> str:
    """The newest revision."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if revision is None:
        raise StorageError(f"no migrations found under {MIGRATIONS}")
    return revision


async def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Migrate the database at ``url`` (unset: the default SQLite file) up to ``revision``."""
    await _run(url, lambda config: command.upgrade(config, revision))


async def downgrade(url: str | None = None, revision: str = "base") -> None:
    """Migrate the database at ``url`` down to ``revision`` (``base``: drop everything)."""
    await _run(url, lambda config: command.downgrade(config, revision))


async def current(url: str | None = None) -> str | None:
    """The revision the database at ``url`` is at; None before the first migration."""
    revisions: list[str | None] = []

    def read(connection: Connection) -> None:
        revisions.append(MigrationContext.configure(connection).get_current_revision())

    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(read)
    except (DBAPIError, OSError, TimeoutError) as exc:
        raise storage_error(exc, normalise_url(url)) from exc
    finally:
        await engine.dispose()
    return revisions[0]


async def _run(url: str | None, step: Callable[[Config], None]) -> None:
    def migrate(connection: Connection) -> None:
        _lock(connection)
        config = alembic_config()
        config.attributes["connection"] = connection
        step(config)

    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(migrate)
    except (DBAPIError, OSError, TimeoutError) as exc:
        raise storage_error(exc, normalise_url(url)) from exc
    finally:
        await engine.dispose()


def _lock(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Released when the migration's transaction ends.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    elif connection.dialect.name == "sqlite":
        # The driver would start the transaction only at the first INSERT, after Alembic
        # has read the current revision: take the write lock before that read instead.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
