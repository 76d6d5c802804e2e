"""Applies and inspects the Alembic migrations from inside the program."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from alembic import command, op
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db.errors import RUNTIME_HINT, describe, privileges, translated_errors
from outbox.db.operation_tables import schema_compat
from outbox.db.tables import SCHEMA
from outbox.domain.schema import Declaration, judge_schema
from outbox.errors import DatabaseError, PrivilegeMissing, SchemaOutdated

_PACKAGE = Path(__file__).resolve().parent.parent
# CREATE SCHEMA IF NOT EXISTS checks CREATE on the database even when the schema exists: the
# migrator role owns a schema an administrator made for it and holds nothing on the database.
ENSURE_SCHEMA = (
    f"DO $$ BEGIN IF to_regnamespace('{SCHEMA}') IS NULL THEN CREATE SCHEMA {SCHEMA};"
    " END IF; END $$"
)


def _script_location() -> Path:
    # A wheel carries the migrations inside the package; a source checkout has them beside it.
    for candidate in (_PACKAGE / "_migrations", _PACKAGE.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("the outbox migrations directory is missing from this installation")


MIGRATOR_HINT = 'run migrations as the migrator role (the schema owner; README "Database roles")'


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_script_location()))
    return config


@functools.cache
def code_revisions() -> tuple[str, ...]:
    """This release's revisions, oldest first. Read once per process: reading them imports and
    runs every migration file, which `/readyz` must not do per request."""
    script = ScriptDirectory.from_config(alembic_config())
    script.get_current_head()  # raises unless the history is one line
    return tuple(reversed([s.revision for s in script.walk_revisions()]))


def head_revision() -> str:
    return code_revisions()[-1]


async def schema_state(engine: AsyncEngine) -> tuple[str | None, dict[str, Declaration]]:
    """The database's revision and, when this release does not know it, what the migrations it
    does not know declared; one connection, no migration file read."""
    with privileges(RUNTIME_HINT):
        return await _schema_state(engine)


async def _schema_state(engine: AsyncEngine) -> tuple[str | None, dict[str, Declaration]]:
    async with engine.connect() as connection:
        versions, compat = (
            await connection.execute(
                text(
                    f"SELECT to_regclass('{SCHEMA}.alembic_version') IS NOT NULL, "
                    f"to_regclass('{SCHEMA}.schema_compat') IS NOT NULL"
                )
            )
        ).one()
        current = None
        if versions:
            rows = await connection.execute(
                text(f"SELECT version_num FROM {SCHEMA}.alembic_version")
            )
            # Several rows only with branches, which these migrations never make: unknown to all.
            current = "+".join(sorted(r[0] for r in rows)) or None
        if not compat or current is None or current in code_revisions():
            return current, {}
        rows = await connection.execute(
            select(
                schema_compat.c.revision,
                schema_compat.c.down_revision,
                schema_compat.c.compatible_with,
            )
        )
        return current, {r.revision: Declaration(r.down_revision, r.compatible_with) for r in rows}


async def check_schema(engine: AsyncEngine) -> str:
    """Raise unless the database is reachable and its schema fits this release: at this
    release's newest revision, or newer and declared compatible by every later migration
    (outbox.domain.schema). Returns what was found, as one line."""
    try:
        with translated_errors():
            current, declared = await schema_state(engine)
    except PrivilegeMissing:
        raise  # issue 19: reachable, and the message names the privilege
    except DatabaseError as exc:
        # PostgreSQL's own words (no secrets): a wrong database, user or privilege is not an
        # outage, and `/readyz` and `outbox check` must say which (issue 19 §4).
        raise type(exc)(describe(exc)) from exc.__cause__ or exc
    verdict = judge_schema(current, code_revisions(), declared)
    if not verdict.usable:
        raise SchemaOutdated(verdict.message)
    return verdict.message


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    await _run(engine, lambda config: command.upgrade(config, revision))


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    await _run(engine, lambda config: command.downgrade(config, revision))


async def current_revision(engine: AsyncEngine) -> str | None:
    def read(connection: Connection) -> str | None:
        context = MigrationContext.configure(connection, opts={"version_table_schema": SCHEMA})
        return context.get_current_revision()

    with privileges(MIGRATOR_HINT):
        async with engine.connect() as connection:
            return await connection.run_sync(read)


async def _run(engine: AsyncEngine, action: Callable[[Config], None]) -> None:
    def run(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        action(config)

    # Not engine.begin(): Alembic opens a transaction per revision itself, so that a revision
    # can step out of it (CREATE INDEX CONCURRENTLY).
    with privileges(MIGRATOR_HINT):
        async with engine.connect() as connection:
            await connection.run_sync(run)


def declare_compatibility(revision: str, down_revision: str | None, compatible_with: str) -> None:
    """Record, from a migration's upgrade(), the oldest release (by its newest revision) that
    still runs on the schema this migration leaves: its own down_revision when it only adds,
    its own revision when older code would break on it. Older releases cannot know a newer
    migration's file, so they read this row from the database instead."""
    values = {
        "revision": revision,
        "down_revision": down_revision,
        "compatible_with": compatible_with,
    }
    # An upsert, so that a migration interrupted after this statement can run again.
    statement = insert(schema_compat).values(values)
    kept = {name: statement.excluded[name] for name in ("down_revision", "compatible_with")}
    op.execute(statement.on_conflict_do_update(index_elements=["revision"], set_=kept))


def earlier_revision(beside: str, filename: str) -> ModuleType:
    """The module of the revision file `filename` in the folder of `beside` (a migration's
    `__file__`): a migration that rewrites or restores an earlier one's bodies reads them there."""
    spec = importlib.util.spec_from_file_location(filename, Path(beside).with_name(filename))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def forget_compatibility(revision: str) -> None:
    """From a migration's downgrade(): the schema no longer holds what the row declared."""
    op.execute(schema_compat.delete().where(schema_compat.c.revision == revision))
