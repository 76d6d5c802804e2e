"""The shared rate limit against a real PostgreSQL: claims take tokens from one bucket row."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db.channel_state import ChannelStateStore
from outbox.db.engine import create_engine
from outbox.db.messages import MessageStore
from outbox.domain.ratelimit import Limits
from tests.support import fetch

LEASE = timedelta(minutes=1)
SLOW = Limits(rate=1.0, burst=5.0)  # one token a second: nothing refills during a test step

_ROWS = """
INSERT INTO outbox.messages (channel, recipient, payload)
SELECT 'c', '49151' || lpad((g + $2)::text, 8, '0'), '{"type":"text","text":{"body":"x"}}'
FROM generate_series(1, $1) AS g
"""


async def _bucket(db_url: str) -> dict[str, object]:
    [row] = await fetch(db_url, "SELECT * FROM outbox.channel_state WHERE channel = 'c'")
    return dict(row)


async def test_a_claim_takes_no_more_rows_than_the_bucket_holds(
    db_url: str, engine: AsyncEngine
) -> None:
    await fetch(db_url, _ROWS, 20, 0)
    store = MessageStore(engine)
    first = await store.claim("c", 10, "w", LEASE, SLOW)
    assert len(first.messages) == 5  # a new bucket starts full: burst 5
    assert first.wait is not None
    assert 0.5 < first.wait <= 1.0  # the next whole token, at one a second
    second = await store.claim("c", 10, "w", LEASE, SLOW)
    assert second.messages == []
    assert second.wait is not None
    assert second.wait > 0


async def test_tokens_not_used_go_back_into_the_bucket(db_url: str, engine: AsyncEngine) -> None:
    await fetch(db_url, _ROWS, 2, 0)
    store = MessageStore(engine)
    claim = await store.claim("c", 10, "w", LEASE, SLOW)
    assert len(claim.messages) == 2
    assert claim.wait is None  # tokens are left: only rows were missing
    tokens = (await _bucket(db_url))["tokens"]
    assert isinstance(tokens, float)
    assert 2.9 < tokens <= 3.1
    await fetch(db_url, _ROWS, 10, 100)
    assert len((await store.claim("c", 10, "w", LEASE, SLOW)).messages) == 3


async def test_replicas_claiming_at_once_share_one_bucket(db_url: str) -> None:
    """Eight engines (as eight processes would) race for 200 rows: 5 tokens are 5 rows."""
    await fetch(db_url, _ROWS, 200, 0)
    engines = [create_engine(db_url, pool_size=1) for _ in range(8)]
    try:
        claims = await asyncio.gather(
            *(MessageStore(e).claim("c", 50, f"w{n}", LEASE, SLOW) for n, e in enumerate(engines))
        )
    finally:
        await asyncio.gather(*(e.dispose() for e in engines))
    claimed = [m.id for c in claims for m in c.messages]
    assert len(claimed) == 5
    assert len(set(claimed)) == 5


async def test_a_throttle_halves_the_rate_and_holds_every_claim(
    db_url: str, engine: AsyncEngine
) -> None:
    await fetch(db_url, _ROWS, 20, 0)
    store = MessageStore(engine)
    channel_state = ChannelStateStore(engine)
    limits = Limits(rate=100.0, burst=10.0)
    assert len((await store.claim("c", 5, "w", LEASE, limits)).messages) == 5
    rate, until = await channel_state.slow_down("c", limits, timedelta(seconds=30))
    assert rate == 50.0
    bucket = await _bucket(db_url)
    assert (bucket["rate"], bucket["hold_until"]) == (50.0, until)
    assert bucket["tokens"] == 0.0
    held = await store.claim("c", 5, "w", LEASE, limits)
    assert held.messages == []
    assert held.rate == pytest.approx(50.0, abs=0.5)  # recovering already, at 5 /s a second
    assert held.wait is not None
    assert 29 < held.wait <= 30
    # The same event's later answers cut nothing more ...
    rate, _ = await channel_state.slow_down("c", limits, timedelta(seconds=1))
    assert rate == pytest.approx(50.0, abs=0.5)
    # ... but each later event halves again, down to the floor of 5 % and no further.
    for _ in range(10):
        await fetch(
            db_url,
            "UPDATE outbox.channel_state SET slowed_at = slowed_at - interval '1 hour', "
            "hold_until = now() - interval '1 second'",
        )
        rate, _ = await channel_state.slow_down("c", limits, timedelta(seconds=1))
    assert rate == 5.0


async def test_a_paused_channel_is_not_claimed_by_any_replica(
    db_url: str, engine: AsyncEngine
) -> None:
    await fetch(db_url, _ROWS, 5, 0)
    store = MessageStore(engine)
    assert len((await store.claim("c", 1, "w", LEASE, SLOW)).messages) == 1
    await fetch(
        db_url,
        "UPDATE outbox.channel_state SET paused_until = now() + interval '1 minute' "
        "WHERE channel = 'c'",
    )
    paused = await store.claim("c", 5, "w2", LEASE, SLOW)
    assert paused.messages == []
    assert paused.wait is not None
    assert paused.wait > 50


async def test_the_fraction_of_a_token_is_kept_between_claims(
    db_url: str, engine: AsyncEngine
) -> None:
    """Claims come often and each earns a fraction of a token: dropping it lost a fifth of the
    rate in the benchmark."""
    await fetch(db_url, _ROWS, 20, 0)
    store = MessageStore(engine)
    # A token in 100 s: even a step stalled for seconds on a busy machine earns next to nothing.
    crawl = Limits(rate=0.01, burst=5.0)
    await store.claim("c", 1, "w", LEASE, crawl)  # creates the bucket
    await fetch(db_url, "UPDATE outbox.channel_state SET tokens = 3.5, refilled_at = now()")
    assert len((await store.claim("c", 10, "w", LEASE, crawl)).messages) == 3
    tokens = (await _bucket(db_url))["tokens"]
    assert isinstance(tokens, float)
    assert 0.45 < tokens < 0.6


async def test_a_database_clock_that_stepped_back_does_not_stop_the_channel(
    db_url: str, engine: AsyncEngine
) -> None:
    """The state a 10-minute backward step leaves right after a claim: `refilled_at` ahead of
    the database's clock. The bucket re-anchors at the clock it reads and earns from there."""
    await fetch(db_url, _ROWS, 50, 0)
    store = MessageStore(engine)
    fast = Limits(rate=5000.0, burst=10.0)
    await store.claim("c", 1, "w", LEASE, fast)
    await fetch(
        db_url,
        "UPDATE outbox.channel_state SET tokens = 0, refilled_at = now() + interval '10 minutes'",
    )
    claimed = 0
    for _ in range(40):
        claim = await store.claim("c", 10, "w", LEASE, fast)
        claimed += len(claim.messages)
        await asyncio.sleep(0.01)
    assert claimed == 49
    assert (await _bucket(db_url))["refilled_at"] < (await fetch(db_url, "SELECT now()"))[0][0]


async def test_one_throttling_event_cuts_the_shared_rate_once_whatever_the_replicas(
    db_url: str,
) -> None:
    """Three replicas each see the event's 429s: the rate is halved once (80 -> 40), not three
    times (80 -> 10)."""
    limits = Limits(rate=80.0, burst=8.0)
    engines = [create_engine(db_url, pool_size=1) for _ in range(3)]
    try:
        rates = [
            (await ChannelStateStore(e).slow_down("c", limits, timedelta(seconds=2)))[0]
            for e in engines
        ]
    finally:
        await asyncio.gather(*(e.dispose() for e in engines))
    assert rates == [40.0, 40.0, 40.0]
    assert (await _bucket(db_url))["rate"] == 40.0


async def test_the_rate_regains_and_tokens_accrue_only_after_the_hold(
    db_url: str, engine: AsyncEngine
) -> None:
    """Counting from the slow-down, a hold undid the cut before the first claim after it and
    that claim got a full burst at the full rate, straight back into the limit."""
    await fetch(db_url, _ROWS, 50, 0)
    store = MessageStore(engine)
    limits = Limits(rate=80.0, burst=8.0)
    await store.claim("c", 1, "w", LEASE, limits)
    _, until = await ChannelStateStore(engine).slow_down("c", limits, timedelta(seconds=1.5))
    [[db_now]] = await fetch(db_url, "SELECT now()")
    await asyncio.sleep((until - db_now).total_seconds() + 0.1)
    first = await store.claim("c", 8, "w", LEASE, limits)
    # A tenth of a second or so after the hold: at most a few tokens at about 40/s.
    assert len(first.messages) <= 5
    assert 40.0 <= first.rate < 42.0
