"""The rollup schema's migrations run up and down on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import bindparam, inspect, select, text
from sqlalchemy.engine import Connection

from zai_proxy.collector import migrate
from zai_proxy.collector.database import StorageUnavailable, create_engine
from zai_proxy.collector.models import SNAPSHOT_COLUMNS, Base, from_row, snapshots, to_row
from zai_proxy.collector.snapshot import Snapshot

TABLES = {"snapshots", "rollup_watermarks", "target_baselines"}


async def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            names = await connection.run_sync(lambda c: inspect(c).get_table_names())
    finally:
        await engine.dispose()
    return set(names) - {"alembic_version"}


async def _differences(url: str) -> list[object]:
    def compare(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(compare)
    finally:
        await engine.dispose()


async def test_upgrade_creates_the_schema_the_models_describe(empty_database_url: str) -> None:
    assert await migrate.current(empty_database_url) is None

    await migrate.upgrade(empty_database_url)

    assert await migrate.current(empty_database_url) == migrate.head()
    assert await _tables(empty_database_url) == TABLES
    assert await _differences(empty_database_url) == []


async def test_downgrade_removes_everything_and_upgrade_runs_again(
    empty_database_url: str,
) -> None:
    await migrate.upgrade(empty_database_url)

    await migrate.downgrade(empty_database_url, "base")
    assert await migrate.current(empty_database_url) is None
    assert await _tables(empty_database_url) == set()

    await migrate.upgrade(empty_database_url)
    assert await migrate.current(empty_database_url) == migrate.head()
    assert await _tables(empty_database_url) == TABLES


async def test_upgrade_of_an_up_to_date_database_does_nothing(empty_database_url: str) -> None:
    await migrate.upgrade(empty_database_url)
    await migrate.upgrade(empty_database_url)

    assert await migrate.current(empty_database_url) == migrate.head()


async def test_services_that_start_together_migrate_one_after_the_other(
    empty_database_url: str,
) -> None:
    await asyncio.gather(*(migrate.upgrade(empty_database_url) for _ in range(3)))

    assert await migrate.current(empty_database_url) == migrate.head()
    assert await _tables(empty_database_url) == TABLES


async def test_a_new_sqlite_file_written_by_another_connection_waits_for_wal_mode(
    tmp_path: Path,
) -> None:
    # SQLite refuses the switch to WAL mode at once while another connection writes in
    # the rollback-journal mode a new file starts in: the service waits for it instead.
    path = tmp_path / "new.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE other_service (id INTEGER)")
    done = threading.Timer(0.5, other.commit)
    done.start()
    try:
        await migrate.upgrade(f"sqlite:///{path}")
    finally:
        done.join()
        other.close()
    assert await migrate.current(f"sqlite:///{path}") == migrate.head()


async def test_an_unreachable_database_is_reported_unavailable() -> None:
    # A port nothing listens on: connecting is refused at once.
    with pytest.raises(StorageUnavailable, match=r"postgresql\+asyncpg://u:\*\*\*@127.0.0.1:9"):
        await migrate.upgrade("postgresql://u:secret@127.0.0.1:9/rollups")


async def test_the_baselines_revision_downgrades_alone(empty_database_url: str) -> None:
    await migrate.upgrade(empty_database_url)

    await migrate.downgrade(empty_database_url, "0001_snapshot_rollups")
    assert await migrate.current(empty_database_url) == "0001_snapshot_rollups"
    assert await _tables(empty_database_url) == TABLES - {"target_baselines"}

    await migrate.upgrade(empty_database_url)
    assert await migrate.current(empty_database_url) == migrate.head()
    assert await _differences(empty_database_url) == []


async def test_rows_from_before_the_refusal_and_client_figures_read_back_without_them(
    empty_database_url: str,
) -> None:
    await migrate.upgrade(empty_database_url, "0002_target_baselines")
    engine = create_engine(empty_database_url)
    old = Snapshot(ts=1000.0, seconds=5.0, variant="production", requests_total=3.0)
    old.latency_buckets = {0.5: 1.0, 2.5: 3.0, math.inf: 3.0}  # the buckets of old proxies
    row = to_row(old, 5)
    for name in ("refusals_total", "refusal_wait_p50", "refusal_wait_p95", "refusal_wait_p99"):
        del row[name]
    del row["refusal_wait_buckets"]
    del row["clients"]  # revision 0004
    columns = ", ".join(row)
    values = ", ".join(f":{name}" for name in row)
    try:
        async with engine.begin() as connection:
            statement = text(f"INSERT INTO snapshots ({columns}) VALUES ({values})")
            statement = statement.bindparams(
                *(bindparam(n, type_=snapshots.c[n].type) for n in row)
            )
            await connection.execute(statement, row)

        await migrate.upgrade(empty_database_url)

        async with engine.connect() as connection:
            [stored] = (await connection.execute(select(*SNAPSHOT_COLUMNS))).all()
    finally:
        await engine.dispose()
    back = from_row(stored)
    assert (back.refusals_total, back.refusal_wait_buckets, back.refusal_wait_p95) == (0, {}, None)
    assert back.latency_buckets == old.latency_buckets
    assert back.clients == {}
