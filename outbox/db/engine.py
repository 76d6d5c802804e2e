"""Engine construction from a libpq URL, and the driver choice.

The driver is asyncpg: its binary protocol and prepared statements make it the fastest PostgreSQL
driver for asyncio, and its DSN parser takes every libpq URL form, Unix sockets included
(`postgresql://user@/db?host=/socket/dir`). SQLAlchemy gets the connections through
`async_creator`, so the URL reaches asyncpg untouched rather than being re-parsed by SQLAlchemy.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from outbox.db import jsonb

APPLICATION_NAME = "outbox"


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def connect(dsn: str, *, role: str = "daemon") -> Any:
    """A raw asyncpg connection, named so operators can tell outbox sessions apart."""
    return await asyncpg.connect(
        dsn, server_settings={"application_name": f"{APPLICATION_NAME}:{role}"}
    )


def create_engine(dsn: str, *, pool_size: int = 10, role: str = "daemon") -> AsyncEngine:
    return create_async_engine(
        "postgresql+asyncpg://",
        async_creator=lambda: connect(dsn, role=role),
        pool_size=pool_size,
        max_overflow=0,
        # No ping per checkout: it costs a round trip per transaction. A connection found dead
        # fails its statement, SQLAlchemy then invalidates the pool, and the callers retry.
        json_serializer=_json_dumps,
        # Producers write jsonb the fast decoder may refuse: one such row must fail alone.
        json_deserializer=jsonb.decode,
    )
