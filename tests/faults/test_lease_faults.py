"""A database outage longer than the lease, while answers wait to be written (issue 14, item 3).

A real `outbox run` sends rows to a slow sandbox; PostgreSQL is stopped while the requests are
in flight and kept down for twice the lease, so the answers come back with nowhere to go and
every lease runs out. When PostgreSQL returns, housekeeping (here another replica's, played by
the test) rescues the rows before the holder is back: the holder's answer must still win, and
no row may be sent twice.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from outbox.db.engine import create_engine
from outbox.db.housekeeping import HousekeepingStore
from tests.faults.test_process_faults import (
    _all_done,
    _events,
    _ids_by_recipient,
    _kill,
    _listening,
    _requests_per_message,
    _sandbox,
    _tail,
    _terminate,
    _until,
)
from tests.support import config_toml, enqueue_in_window, fetch, spawn_daemon

if TYPE_CHECKING:  # the fixtures' types only; pytest imports the conftest itself
    from tests.faults.conftest import RestartablePostgres
    from tests.figures import Figures

pytestmark = [pytest.mark.faults, pytest.mark.slow]


async def _rescue(db_url: str) -> int:
    engine = create_engine(db_url, pool_size=1)
    try:
        return len(await HousekeepingStore(engine).rescue_expired_leases())
    finally:
        await engine.dispose()


@pytest.mark.timeout(120)
async def test_an_outage_longer_than_the_lease_sends_each_answered_row_once(
    own_pg: RestartablePostgres, restartable_db_url: str, tmp_path: Path, figures: Figures
) -> None:
    db = restartable_db_url
    total, lease, outage, latency = 8, 3, 6.0, 1.5
    # unknown_quiet outlasts the holder's reconnect (a second or two here), not the outage.
    quiet = 5
    config = tmp_path / "outbox.toml"
    log = tmp_path / "daemon.log"
    async with _sandbox(latency=latency) as (api, base_url):
        config.write_text(
            config_toml(
                db,
                base_url,
                lease=lease,
                request_timeout=2,
                unknown_quiet=quiet,
                maintenance_interval=1,
            )
        )
        process = await spawn_daemon(config, log)
        pg_down = False
        try:
            await _until(process, log, lambda: _listening(db), within=30)
            await enqueue_in_window(db, total)
            # Every request is out and none answered yet (the sandbox takes 1.5 s to answer).
            await _until(process, log, lambda: len(api.message_requests()) >= total, 10, 0.005)
            pg_down = True
            await asyncio.to_thread(own_pg.stop)
            down = time.monotonic()
            await _until(process, log, lambda: time.monotonic() >= down + outage, outage + 5)
            answered_in_outage = sum(
                r.status != 0 and r.message_id is not None for r in api.message_requests()
            )
            await asyncio.to_thread(own_pg.start)
            pg_down = False
            up = time.monotonic()
            # Another replica's maintenance, first to reach the database: it rescues the
            # rows whose leases ran out in the outage, before their holder is back.
            rescued = await _rescue(db)
            await _until(process, log, lambda: _all_done(db), within=60, interval=0.1)
            settled = time.monotonic() - up
            # Past the quiet period: a row the holder lost would be sent again by now.
            await asyncio.sleep(quiet + 2)
            code, _ = await _terminate(process, log)
        finally:
            await _kill(process)
            if pg_down:  # a failure mid-outage must not leave the suite's server stopped
                await asyncio.to_thread(own_pg.start)
        requests = api.message_requests()
    assert code == 0, _tail(log)

    # The scenario happened: answers waited through an outage longer than the lease.
    assert answered_in_outage == total, answered_in_outage
    assert _events(log, "outbox.results.db_error"), _tail(log)
    counts = _requests_per_message(requests, await _ids_by_recipient(db))
    assert len(counts) == total
    assert sorted(counts.values()) == [1] * total, counts
    rows = await fetch(db, "SELECT state, unknown_resends, wamid FROM outbox.messages")
    assert {(r["state"], r["unknown_resends"]) for r in rows} == {("accepted", 0)}
    assert all(r["wamid"] for r in rows)

    rescued += len(_events(log, "outbox.rescue.lease_expired"))
    taken_back = sum(e["count"] for e in _events(log, "outbox.lease.taken_back"))
    scenario = (
        f"outage longer than the lease ({total} rows in flight, sandbox {latency:g} s,"
        f" lease {lease} s, PostgreSQL down {outage:g} s, unknown_quiet {quiet} s)"
    )
    figures.add(
        scenario,
        f"requests: {len(requests)} for {total} rows, each sent once; all accepted with"
        f" their wamid {settled:.1f} s after PostgreSQL was back",
    )
    figures.add(
        scenario,
        f"rows rescued to `unknown` by housekeeping (another replica's first): {rescued};"
        f" taken back by the holder's renewal: {taken_back}; the rest of those written by"
        " the holder over the rescue",
    )
