"""A claim over many channels reads the rows it takes, not every row of every channel.

With statistics from a moment when nothing was in flight, two plans made each claim's cost grow
with the backlog and with the rows in flight (issue 16: a claim of one row on each of 100
channels took 0.2 s, then 0.5 s more with every claim, 3.3 s by the eighth):
- each channel's candidates came from a bitmap scan of all its rows, every one probed three
  times and then sorted, instead of the first rows of `ix_messages_live` (the probes, written
  `(...) IS NULL`, were priced as passing one row in 200, so the planner expected to read
  everything anyway);
- the probe for a newer row of the line in flight read every row in flight through the lease
  index, which the same statistics priced as empty.
auto_explain reports how often each probe ran: about once per row taken, whatever the backlog.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from sqlalchemy import event

from outbox.db.engine import create_engine
from outbox.db.messages import MessageStore
from outbox.domain.ratelimit import Limits
from outbox.ports import ClaimRequest
from tests.support import fetch

CHANNELS = 100
BACKLOG = 200  # rows per channel
CLAIMS = 6
_EXPLAIN = (
    "LOAD 'auto_explain'",
    "SET auto_explain.log_min_duration = 0",
    "SET auto_explain.log_analyze = on",
    "SET client_min_messages = log",
)
_PROBE_LOOPS = re.compile(r"Scan using \w+ on (?:messages e\w*|recipient_pace p\w*) .*loops=(\d+)")


async def test_claiming_one_row_on_each_of_many_channels_probes_only_those_rows(
    db_url: str,
) -> None:
    await fetch(
        db_url,
        "INSERT INTO outbox.messages (channel, recipient, payload)"
        ' SELECT \'c\' || (g % $1), \'49151\' || g, \'{"type": "text", "text": {"body": "x"}}\''
        " FROM generate_series(1, $2) AS g",
        CHANNELS,
        CHANNELS * BACKLOG,
    )
    await fetch(db_url, "ANALYZE outbox.messages")  # nothing in flight
    plans: list[str] = []
    engine = create_engine(db_url, pool_size=1)

    @event.listens_for(engine.sync_engine, "connect")
    def explain(connection: Any, _record: Any) -> None:
        connection.driver_connection.add_log_listener(lambda _c, m: plans.append(str(m)))

    store = MessageStore(engine)
    limits = Limits(rate=1e6, burst=1e6)
    requests = [ClaimRequest(f"c{n}", 1, limits) for n in range(CHANNELS)]
    try:
        async with engine.connect() as connection:
            for setting in _EXPLAIN:
                await connection.exec_driver_sql(setting)
            await connection.commit()
        for _ in range(CLAIMS):  # each leaves CHANNELS more rows in flight
            plans.clear()
            claims = await store.claim_many(
                requests, "w", timedelta(minutes=5), window_margin=timedelta(0)
            )
            assert sum(len(c.messages) for c in claims.values()) == CHANNELS
    finally:
        await engine.dispose()
    [claim] = [plan for plan in plans if "CROSS JOIN LATERAL" in plan]
    loops = [int(n) for n in _PROBE_LOOPS.findall(claim)]
    assert loops, claim
    # One probe per row taken (a channel's next row may be looked at too); the plans above ran
    # each probe for every row of the backlog (20,000 here) and read every row in flight.
    assert max(loops) <= 2 * CHANNELS, claim
    discarded = sum(int(n) for n in re.findall(r"Rows Removed by Filter: (\d+)", claim))
    assert discarded <= 2 * CHANNELS, claim
