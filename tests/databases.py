"""The real PostgreSQL beside the tests: databases created for a session, dropped after it."""

from __future__ import annotations

import asyncio
import os
import uuid

import asyncpg
from sqlalchemy.engine import make_url

# The PostgreSQL that runs beside the tests on developer machines and in CI.
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


class PostgresDatabases:
    """Creates databases for this session on the test server, and drops them all after."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.created: list[str] = []

    def create(self) -> str:
        """A new empty database's URL."""
        name = f"zai_proxy_test_{uuid.uuid4().hex[:12]}"
        asyncio.run(admin(self.server_url, f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return make_url(self.server_url).set(database=name).render_as_string(False)

    def drop(self, url: str) -> None:
        """Drop one of the created databases."""
        name = str(make_url(url).database)
        asyncio.run(admin(self.server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.created.remove(name)

    def drop_all(self) -> None:
        for name in list(self.created):
            asyncio.run(admin(self.server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.created.clear()


async def admin(url: str, statement: str) -> None:
    """Run one statement on the server (outside a transaction)."""
    connection = await asyncpg.connect(url, timeout=3)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()
