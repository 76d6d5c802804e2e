"""Applies and inspects the Alembic migrations from inside the program."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db.tables import SCHEMA

_PACKAGE = Path(__file__).resolve().parent.parent


def _script_location() -> Path:
    # A wheel carries the migrations inside the package; a source checkout has them beside it.
    for candidate in (_PACKAGE / "_migrations", _PACKAGE.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("the outbox migrations directory is missing from this installation")


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_script_location()))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    await _run(engine, lambda config: command.upgrade(config, revision))


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    await _run(engine, lambda config: command.downgrade(config, revision))


async def current_revision(engine: AsyncEngine) -> str | None:
    def read(connection: Connection) -> str | None:
        context = MigrationContext.configure(connection, opts={"version_table_schema": SCHEMA})
        return context.get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(read)


async def _run(engine: AsyncEngine, action: Callable[[Config], None]) -> None:
    def run(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        action(config)

    # Not engine.begin(): Alembic opens a transaction per revision itself, so that a revision
    # can step out of it (CREATE INDEX CONCURRENTLY).
    async with engine.connect() as connection:
        await connection.run_sync(run)
