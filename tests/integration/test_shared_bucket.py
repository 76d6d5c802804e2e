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
    # A second throttle halves again, down to the floor of 5 % and no further.
    for _ in range(10):
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
    await store.claim("c", 1, "w", LEASE, SLOW)  # creates the bucket
    await fetch(db_url, "UPDATE outbox.channel_state SET tokens = 3.5, refilled_at = now()")
    assert len((await store.claim("c", 10, "w", LEASE, SLOW)).messages) == 3
    tokens = (await _bucket(db_url))["tokens"]
    assert isinstance(tokens, float)
    assert 0.45 < tokens < 0.6
