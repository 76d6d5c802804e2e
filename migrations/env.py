"""Alembic environment: runs on a connection handed over by `outbox migrate`, or on its own."""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from outbox.db.engine import create_engine
from outbox.db.migrate import ENSURE_SCHEMA
from outbox.db.tables import SCHEMA, metadata

config = context.config


def _include_name(name: str | None, type_: str, parent_names: object) -> bool:
    return type_ != "schema" or name == SCHEMA


def run_migrations(connection: Connection) -> None:
    # The version table lives in our schema, which must exist before Alembic creates it.
    connection.execute(text(ENSURE_SCHEMA))
    connection.commit()
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table_schema=SCHEMA,
        include_schemas=True,
        include_name=_include_name,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone() -> None:
    # Behind PgBouncer the direct URL, as `outbox migrate` uses it (README, "Behind PgBouncer").
    dsn = (
        os.environ.get("OUTBOX_LISTEN_DATABASE_URL")
        or os.environ.get("OUTBOX_DATABASE_URL")
        or config.get_main_option("sqlalchemy.url")
    )
    if not dsn:
        raise SystemExit("set OUTBOX_DATABASE_URL to the database to migrate")
    engine = create_engine(dsn, pool_size=1, role="migrate")
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_migrations)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
handed_over = config.attributes.get("connection")
if handed_over is not None:
    run_migrations(handed_over)
else:
    asyncio.run(_run_standalone())
