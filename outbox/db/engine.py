"""Engine construction from a libpq URL, and the driver choice.

The driver is asyncpg: its binary protocol and prepared statements make it the fastest PostgreSQL
driver for asyncio, and its DSN parser takes every libpq URL form, Unix sockets included
(`postgresql://user@/db?host=/socket/dir`). SQLAlchemy gets the connections through a `creator`
that hands them to its asyncpg dialect, so the URL reaches asyncpg untouched rather than being
re-parsed by SQLAlchemy.

Behind PgBouncer in transaction mode (`[database] pooler = "pgbouncer"`) consecutive
transactions of one connection run on different server sessions, and named prepared statements
break: the next transaction finds "__asyncpg_stmt_N__" missing, or another client's of the same
name in its way. There both statement caches are off (asyncpg's `statement_cache_size`, the
dialect's `prepared_statement_cache_size`). The dialect still prepares each statement, under the
name its `prepared_statement_name_func` gives; its documentation suggests unique names, which
pile up on the server sessions unless PgBouncer discards them. This one gives the unnamed
statement's name instead: it lives only until the next Parse on that session, so nothing is left
behind for another client to trip over, and asyncpg, with its cache off, parses it again in the
message that runs it: one more Parse per statement, the price of the pooler.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from outbox.config import Pooler
from outbox.db import jsonb

APPLICATION_NAME = "outbox"


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def connect(dsn: str, *, role: str = "daemon", pooler: Pooler = Pooler.NONE) -> Any:
    """A raw asyncpg connection, named so operators can tell outbox sessions apart."""
    return await asyncpg.connect(
        dsn,
        server_settings={"application_name": f"{APPLICATION_NAME}:{role}"},
        **({"statement_cache_size": 0} if pooler is Pooler.PGBOUNCER else {}),
    )


def _unnamed() -> str:
    return ""  # asyncpg's name for the unnamed statement; None would make it name one


# SQLAlchemy's asyncpg dialect takes these per DBAPI connection, not per engine.
_STATEMENTS: dict[Pooler, dict[str, Any]] = {
    Pooler.NONE: {},
    Pooler.PGBOUNCER: {
        "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": _unnamed,
    },
}


def create_engine(
    dsn: str, *, pool_size: int = 10, role: str = "daemon", pooler: Pooler = Pooler.NONE
) -> AsyncEngine:
    def creator() -> Any:
        # What `async_creator` does, plus the statement options it cannot pass.
        dbapi: Any = engine.sync_engine.dialect.dbapi
        return dbapi.connect(
            async_creator_fn=lambda: connect(dsn, role=role, pooler=pooler), **_STATEMENTS[pooler]
        )

    engine = create_async_engine(
        "postgresql+asyncpg://",
        creator=creator,
        pool_size=pool_size,
        max_overflow=0,
        # No ping per checkout: it costs a round trip per transaction. A connection found dead
        # fails its statement, SQLAlchemy then invalidates the pool, and the callers retry.
        json_serializer=_json_dumps,
        # Producers write jsonb the fast decoder may refuse: one such row must fail alone.
        json_deserializer=jsonb.decode,
    )
    return engine
