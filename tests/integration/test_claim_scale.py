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

from outbox.db.messages import MessageStore
from outbox.domain.ratelimit import Limits
from outbox.ports import ClaimRequest
from tests.plans import explained_engine, insert_during_analyze
from tests.support import fetch

CHANNELS = 100
BACKLOG = 200  # rows per channel
CLAIMS = 6
LIMITS = Limits(rate=1e6, burst=1e6)
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
    requests = [ClaimRequest(f"c{n}", 1, LIMITS) for n in range(CHANNELS)]
    claim = await _explained_claims(db_url, requests, CLAIMS)  # each leaves more in flight
    loops = [int(n) for n in _PROBE_LOOPS.findall(claim)]
    assert loops, claim
    # One probe per row taken (a channel's next row may be looked at too); the plans above ran
    # each probe for every row of the backlog (20,000 here) and read every row in flight.
    assert max(loops) <= 2 * CHANNELS, claim
    discarded = sum(int(n) for n in re.findall(r"Rows Removed by Filter: (\d+)", claim))
    assert discarded <= 2 * CHANNELS, claim


async def test_a_claim_after_statistics_taken_mid_insert_reads_only_the_rows_it_takes(
    db_url: str,
) -> None:
    """An ANALYZE while a bulk INSERT is uncommitted (autovacuum's, any time) records an empty
    table; once the INSERT commits, the claim's UPDATE joined to the picked rows walked every
    row of the table against them: 3 s per claim of 200 at 20,000 rows, 4,000,000 comparisons.
    It now updates the picked ids through the primary key."""
    await insert_during_analyze(db_url, 5000)  # a table of 5,000 rows, believed empty
    claim = await _explained_claims(db_url, [ClaimRequest("c0", 200, LIMITS)], 1)
    compared = sum(int(n) for n in re.findall(r"Rows Removed by (?:Join )?Filter: (\d+)", claim))
    assert compared <= 200, claim  # a join over the table compared 200 x 5,000


async def _explained_claims(db_url: str, requests: list[ClaimRequest], claims: int) -> str:
    """Run `claims` claims; the last one's plan, as auto_explain reported it."""
    async with explained_engine(db_url) as (engine, plans):
        store = MessageStore(engine)
        for _ in range(claims):
            plans.clear()
            got = await store.claim_many(
                requests, "w", timedelta(minutes=5), window_margin=timedelta(0)
            )
            assert sum(len(c.messages) for c in got.values()) == sum(r.limit for r in requests)
    [claim] = [plan for plan in plans if "CROSS JOIN LATERAL" in plan]
    return claim
