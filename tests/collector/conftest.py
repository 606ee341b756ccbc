"""Databases for the storage tests: each runs on a SQLite file and on a real PostgreSQL.

PostgreSQL runs are isolated in databases of their own, created for this session and
dropped after it: one migrated database that every store test finds empty (its tables
are truncated), and fresh empty ones for the migration tests.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from zai_proxy.collector import migrate
from zai_proxy.collector.database import create_engine
from zai_proxy.collector.store import SnapshotStore

# The PostgreSQL that runs beside the tests on developer machines and in CI.
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The real PostgreSQL's URL: CI fails without it; elsewhere its runs skip (SQLite ran)."""
    try:
        asyncio.run(_admin(POSTGRES_URL, "SELECT 1"))
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        if os.environ.get("CI"):
            pytest.fail(
                f"CI must test against a real PostgreSQL, none at {POSTGRES_URL}: {exc}",
                pytrace=False,
            )
        pytest.skip(
            f"no PostgreSQL at {POSTGRES_URL} ({exc}): the PostgreSQL runs are skipped; "
            "the same tests ran on SQLite"
        )
    return POSTGRES_URL


class PostgresDatabases:
    """Creates databases for this session on the test server, and drops them all after."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.created: list[str] = []

    def create(self) -> str:
        """A new empty database's URL."""
        name = f"zai_proxy_test_{uuid.uuid4().hex[:12]}"
        asyncio.run(_admin(self.server_url, f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return make_url(self.server_url).set(database=name).render_as_string(False)

    def drop(self, url: str) -> None:
        """Drop one of the created databases."""
        name = str(make_url(url).database)
        asyncio.run(_admin(self.server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.created.remove(name)

    def drop_all(self) -> None:
        for name in list(self.created):
            asyncio.run(_admin(self.server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.created.clear()


async def _admin(url: str, statement: str) -> None:
    connection = await asyncpg.connect(url, timeout=3)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def postgres_databases(postgres_url: str) -> Iterator[PostgresDatabases]:
    """Databases of this session on the real PostgreSQL, dropped at its end."""
    databases = PostgresDatabases(postgres_url)
    try:
        yield databases
    finally:
        databases.drop_all()


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
            await connection.execute(text("TRUNCATE snapshots, rollup_watermarks"))
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
