"""Alembic environment: migrations run on a connection handed in by ``migrate.py``.

``zai-proxy migrate`` and start-up pass an open connection (``config.attributes``); the
``alembic`` command line (``alembic -c services/collector/alembic.ini ...``, for writing
new revisions) gets an engine from ``DATABASE_URL`` instead.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from zai_proxy.collector.database import create_engine, normalise_url
from zai_proxy.collector.models import Base

config = context.config
target_metadata = Base.metadata


def run_on(connection: Connection) -> None:
    """Run the pending migrations on one connection."""
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: autogenerate batch (copy-and-move) operations.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_with_engine(url: str | None) -> None:
    """Run the pending migrations on a fresh engine for ``url``."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_on)
            await connection.commit()
    finally:
        await engine.dispose()


def main() -> None:
    """Alembic's entry point into this environment."""
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL")
    if context.is_offline_mode():
        context.configure(
            url=normalise_url(url), target_metadata=target_metadata, literal_binds=True
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is None:
        if config.config_file_name:
            fileConfig(config.config_file_name, disable_existing_loggers=False)
        asyncio.run(run_with_engine(url))
    else:
        run_on(connection)


main()
