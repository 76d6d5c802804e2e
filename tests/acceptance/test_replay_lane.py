"""The replay lane, measured at the claim: a big replay gets its share of the channel's rate
beside live traffic, all of it when alone, and never holds up live rows inserted while it drains.

One Cloud channel at 200 messages a second, `outbox run` in its own process, the sandbox taking
the requests. Claims are timed by the shared bucket's clock, the database's (`record_claims`):
the rate is applied there, and that clock does not stall when this process is starved, as the
sandbox's arrival times do. The replayed rows are the older ones, so plain id or priority order
would send them first.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.config import ChannelConfig, Secret
from outbox.db.operator_store import OperatorStore
from outbox.domain.models import Dialect, State
from outbox.sandbox import RecordedRequest, Sandbox
from tests.support import (
    claims,
    config_toml,
    fetch,
    record_claims,
    spawn_daemon,
    stop_daemon,
    wait_for_progress,
)

pytestmark = pytest.mark.slow

RATE = 200.0
ROWS = 2000
SHARE = 0.2
_TEMPLATE = '{"type":"template","template":{"name":"t","language":{"code":"en"}}}'

# Distinct recipients (a prefix per kind of row), so that no row waits for an older one to the
# same recipient and the lanes alone decide the order.
_INSERT = """
INSERT INTO outbox.messages (channel, recipient, payload, state)
SELECT 'cloud', $1 || lpad(g::text, 7, '0'), $2::jsonb, $3
FROM generate_series(1, $4) AS g
RETURNING id, extract(epoch FROM created_at)::float8 AS at
"""


async def _rows(db_url: str, prefix: str, state: str, count: int) -> list[int]:
    return [r["id"] for r in await fetch(db_url, _INSERT, prefix, _TEMPLATE, state, count)]


def _config(db_url: str, base_url: str) -> str:
    text = config_toml(db_url, base_url, rate=RATE, poll_interval=0.05)
    return text.replace('id = "cloud"', f'id = "cloud"\nreplay_share = {SHARE}')


def _row_id(request: RecordedRequest) -> int:
    return int(str(request.body["biz_opaque_callback_data"]).removeprefix("outbox:"))


async def _claimed_among(db_url: str, ids: set[int]) -> int:
    rows = await fetch(
        db_url, "SELECT count(*) FROM public.claims WHERE message_id = any($1::bigint[])", list(ids)
    )
    return int(rows[0][0])


@pytest.mark.timeout(900)  # progress-bounded: a starved machine is slow, not wrong
async def test_the_replay_lane_shares_the_rate_and_never_delays_live_rows(
    db_url: str, engine: AsyncEngine, sandbox: tuple[Sandbox, str], tmp_path: Path
) -> None:
    api, base_url = sandbox
    failed = await _rows(db_url, "4915200", "failed", ROWS)
    applied = await OperatorStore(engine).replay(
        failed, [State.FAILED], actor="test", forced=False, expires_at=None, note=None
    )
    assert len(applied.done) == ROWS
    replayed = set(failed)
    await record_claims(db_url)
    live = set(await _rows(db_url, "4915100", "queued", ROWS))
    config = tmp_path / "outbox.toml"
    config.write_text(_config(db_url, base_url))
    log = tmp_path / "daemon.log"
    process = await spawn_daemon(config, log)
    inserted: dict[int, float] = {}
    try:
        # Both lanes full, then live rows done while the replay keeps draining.
        await wait_for_progress(lambda: _claimed_among(db_url, live), ROWS, daemons=[process])
        # 3. Live rows inserted while the replay drains, 5 every 100 ms (50/s, well within the
        # 80 % they may take). Each claim comes at most a token-refill apart (burst 10 at
        # 200/s: ~50 ms) and gives live rows first pick of 80 % of its tokens, and the insert's
        # NOTIFY wakes the sender at once; so a row waits about one claim. Without the lane a
        # row would queue behind every replayed row left, ~600 rows or 3 s at this point.
        # Inserted 3 s after the last live claim, so that the window measured in 2. is over.
        await asyncio.sleep(3.0)
        connection = await asyncpg.connect(db_url)
        try:
            for batch in range(20):
                rows = await connection.fetch(_INSERT, f"49153{batch:02d}", _TEMPLATE, "queued", 5)
                inserted.update((r["id"], r["at"]) for r in rows)
                await asyncio.sleep(0.1)
            [waiting] = await connection.fetch(
                "SELECT count(*) FROM outbox.messages"
                " WHERE state = 'queued' AND replayed_at IS NOT NULL"
            )
        finally:
            await connection.close()
        assert waiting[0] > 100, "the replay must still be draining when the last row goes in"
        await wait_for_progress(
            lambda: _claimed_among(db_url, set(inserted)), len(inserted), daemons=[process]
        )
    finally:
        code = await stop_daemon(process, log)
    assert code == 0, log.read_text()[-3000:]
    claimed = await claims(db_url)
    at = dict(claimed)

    # 1. Both lanes full: the replay gets its share of the first thousand claims.
    first = [i for i, _ in claimed[:1000]]
    share = sum(1 for i in first if i in replayed) / len(first)
    assert SHARE - 0.06 <= share <= SHARE + 0.06, share

    # 2. Live rows done: the replay takes the whole rate. At 200/s with 80 % for live rows that
    # is ~12.5 s in; ~1,500 replayed rows (7.5 s) are left, so the lane is still full over the
    # whole window. Never more than the bucket allows (the rate, plus what it held at the
    # start). Nor less than the channel claimed just before with both lanes full: on a starved
    # machine the sender may not reach 200/s, but alone the replay must keep the pace the
    # channel had, where its share would be a fifth of it.
    live_done = max(at[i] for i in live)
    before = [i for i, t in claimed if live_done - 3.0 <= t < live_done - 0.5]
    alone = [i for i, t in claimed if live_done + 0.5 <= t < live_done + 3.0]
    assert all(i in replayed for i in alone)
    limits = ChannelConfig("cloud", Dialect.CLOUD, base_url, Secret(""), RATE).limits()
    assert len(before) <= RATE * 2.5 + limits.burst, len(before) / 2.5
    assert 0.6 * len(before) <= len(alone) <= RATE * 2.5 + limits.burst, (len(before), len(alone))

    # 3. Each inserted row waited about one claim: from its INSERT to its claim, both by the
    # database's clock. Without the lane it would wait for the replayed rows still queued when
    # it went in, `left` rows at the pace the replay had alone: seconds (on a starved machine
    # more). The bound is a second or half that wait, whichever is longer.
    first_insert = min(inserted.values())
    left = ROWS - sum(1 for i, t in claimed if i in replayed and t < first_insert)
    without_lane = left / (len(alone) / 2.5)
    delays = sorted(at[i] - inserted[i] for i in inserted)
    p95 = delays[int(0.95 * len(delays)) - 1]
    assert p95 < max(1.0, 0.5 * without_lane), (p95, delays[-1], without_lane)

    # Nothing was sent twice, and no row of another kind slipped in.
    ids = [_row_id(r) for r in api.message_requests()]
    assert len(ids) == len(set(ids))
    assert set(ids) <= replayed | live | set(inserted)
