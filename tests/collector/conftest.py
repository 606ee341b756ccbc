"""Databases for the storage tests: each runs on a SQLite file and on a real PostgreSQL.

The real PostgreSQL's fixtures (``postgres_url``, ``postgres_databases``) are the whole
suite's, in ``tests/conftest.py``.

PostgreSQL runs are isolated in databases of their own, created for this session and
dropped after it: one migrated database that every store test finds empty (its tables
are truncated), and fresh empty ones for the migration tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.databases import PostgresDatabases
from zai_proxy.collector import migrate
from zai_proxy.collector.database import create_engine
from zai_proxy.collector.store import SnapshotStore

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def migrated_postgres_url(postgres_databases: PostgresDatabases) -> str:
    """One PostgreSQL database of this session, migrated to the newest revision."""
    url = postgres_databases.create()
    asyncio.run(migrate.upgrade(url))
    return url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each storage test runs once on SQLite and once on PostgreSQL."""
    if request.param == "postgresql":
        request.getfixturevalue("postgres_url")  # the one rule: fail under CI, else skip
    return str(request.param)


@pytest.fixture
def empty_database_url(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[str]:
    """An empty, unmigrated database on the test's backend (dropped after the test)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    url = databases.create()
    yield url
    databases.drop(url)


# Sync fixtures, so that PostgreSQL's session fixtures (asyncio.run) are set up outside
# the test's event loop.
@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A migrated database with empty tables, on the test's backend."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'rollups.db'}"
        asyncio.run(migrate.upgrade(url))
        return url
    url = str(request.getfixturevalue("migrated_postgres_url"))
    asyncio.run(_truncate(url))
    return url


async def _truncate(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text("TRUNCATE snapshots, rollup_watermarks, target_baselines")
            )
    finally:
        await engine.dispose()


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SnapshotStore]:
    """A store on a migrated, empty database (default retention and settle)."""
    opened = SnapshotStore.open(database_url)
    try:
        yield opened
    finally:
        await opened.close()
