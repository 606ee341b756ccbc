"""Suite-wide rules: under CI nothing may be skipped; one rule each for the real Redis and
the real PostgreSQL (CI fails without them, elsewhere their tests skip)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Generator, Iterator

import asyncpg
import pluggy
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.databases import POSTGRES_URL, PostgresDatabases, admin


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    outcome = yield
    report = outcome.get_result()
    # CI must run every test: a skip there hides a missing service or package.
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped under CI, which must run every test: {reason}"


# The Redis that runs beside the tests on developer machines and in CI.
REAL_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def real_redis_url() -> str:
    """The real Redis's URL: CI fails without it; elsewhere its tests skip (fakeredis ran)."""
    client = redis.Redis.from_url(
        REAL_REDIS_URL, socket_connect_timeout=1, socket_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI"):
            pytest.fail(
                f"CI must test against a real Redis, none at {REAL_REDIS_URL}: {exc}",
                pytrace=False,
            )
        pytest.skip(
            f"no Redis at {REAL_REDIS_URL} ({exc}): the real-Redis runs are skipped; "
            "the same contract ran on fakeredis"
        )
    finally:
        client.close()
    return REAL_REDIS_URL


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The real PostgreSQL's URL: CI fails without it; elsewhere its runs skip (SQLite ran)."""
    try:
        asyncio.run(admin(POSTGRES_URL, "SELECT 1"))
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


@pytest.fixture(scope="session")
def postgres_databases(postgres_url: str) -> Iterator[PostgresDatabases]:
    """Databases of this session on the real PostgreSQL, dropped at its end."""
    databases = PostgresDatabases(postgres_url)
    try:
        yield databases
    finally:
        databases.drop_all()
