"""`outbox stats` at a partner's scale: thousands of channels, one pass over the messages."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db.inspection import _PER_CHANNEL, InspectionStore
from tests.support import fetch

CHANNELS = 3_000
STATES = ("read", "delivered", "failed", "queued", "sent")


async def test_stats_reads_every_channel_in_one_pass_and_counts_right(
    engine: AsyncEngine, db_url: str
) -> None:
    """Each channel's counts came from a subquery over every (channel, state) pair: 4.8 s for
    10,000 channels with 200,000 rows (0.2 s now), growing with channels times pairs."""
    await fetch(
        db_url,
        "INSERT INTO outbox.channel_state (channel)"
        f" SELECT 'c' || lpad(g::text, 5, '0') FROM generate_series(0, {CHANNELS - 1}) AS g",
    )
    # 20,000 rows over the first 2,000 channels, each channel with two rows in each state;
    # the `sent` ones were accepted a minute ago, the `delivered` ones two hours ago.
    await fetch(
        db_url,
        """
        INSERT INTO outbox.messages (channel, recipient, payload, state, accepted_at)
        SELECT 'c' || lpad((g % 2000)::text, 5, '0'), '49151' || lpad(g::text, 8, '0'),
               '{"type": "text", "text": {"body": "x"}}', s.state,
               CASE s.state WHEN 'sent' THEN now() - interval '1 minute'
                            WHEN 'delivered' THEN now() - interval '2 hours' END
        FROM generate_series(0, 3999) AS g,
             unnest(CAST($1 AS text[])) AS s(state)
        """,
        list(STATES),
    )
    stats = await InspectionStore(engine).channel_stats(["file-only"], recent_seconds=3600)

    by_channel = {s.channel: s for s in stats}
    assert len(by_channel) == CHANNELS + 1
    assert by_channel["c00007"].states == dict.fromkeys(STATES, 2)
    assert by_channel["c00007"].recent == 2  # the two `sent`, not the `delivered`
    assert (by_channel["c02999"].states, by_channel["c02999"].recent) == ({}, 0)
    assert by_channel["file-only"].states == {}
    assert sum(sum(s.states.values()) for s in stats) == 20_000

    async with engine.connect() as connection:
        plan = await connection.execute(
            text(f"EXPLAIN (COSTS OFF) {_PER_CHANNEL.element}"),
            {"configured": [], "recent_seconds": 60},
        )
        lines = [line for (line,) in plan]
    assert not [line for line in lines if "SubPlan" in line], lines
