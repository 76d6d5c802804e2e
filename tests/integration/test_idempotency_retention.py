"""Idempotency keys outlive `outbox purge` (issue 19 §4): a producer's retry with the key of a
purged message is still a no-op, until `--keep-keys` after the message was created."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db.retention import RetentionStore
from outbox.domain.operations import Purged
from outbox.services.operations import Purge, Retention
from tests.support import PRODUCER_SESSION, fetch, outbox_command

# The README's producer insert, as written there.
README_INSERT = """
INSERT INTO outbox.messages (channel, recipient, payload, idempotency_key, metadata)
VALUES ('shop-de', '+49 151 1234 5678',
        '{"type": "text", "text": {"body": "Your order 1234 has shipped", "preview_url": true}}',
        $1, '{"order": 1234}')
ON CONFLICT (channel, idempotency_key) DO NOTHING
RETURNING id;
"""


async def _produce(db_url: str, key: str) -> int | None:
    connection = await asyncpg.connect(db_url)
    try:
        await connection.execute(PRODUCER_SESSION)
        found = await connection.fetchval(README_INSERT, key)
        return None if found is None else int(found)
    finally:
        await connection.close()


async def _finish_long_ago(db_url: str, message_id: int, days: int) -> None:
    await fetch(
        db_url,
        "UPDATE outbox.messages SET state = 'read', updated_at = now() - $2::interval,"
        " created_at = now() - $2::interval WHERE id = $1",
        message_id,
        timedelta(days=days),
    )


async def test_a_purged_messages_key_still_makes_the_readme_insert_a_no_op(
    db_url: str, engine: AsyncEngine
) -> None:
    first = await _produce(db_url, "order-1234-shipped")
    assert first is not None
    assert await _produce(db_url, "order-1234-shipped") is None  # the live key, as before
    await _finish_long_ago(db_url, first, days=40)
    other = await _produce(db_url, "order-1-shipped")
    assert other is not None
    await _finish_long_ago(db_url, other, days=500)

    now = datetime.now(UTC)
    retention = Retention(RetentionStore(engine), clock=lambda: now)
    purge = Purge(timedelta(days=30), batch_size=1)  # keys kept 400 days by default
    cutoff, counts = await retention.count(purge)
    assert counts[Purged.MESSAGES] == 2
    deleted: dict[Purged, int] = {}
    await retention.purge(purge, cutoff, deleted.__setitem__)
    # Both keys were recorded; the one whose message was created 500 days ago went at once.
    assert (deleted[Purged.MESSAGES], deleted[Purged.IDEMPOTENCY_KEYS]) == (2, 1)
    assert await fetch(db_url, "SELECT count(*) AS n FROM outbox.messages") == [(0,)]
    keys = await fetch(
        db_url, "SELECT channel, idempotency_key, message_id FROM outbox.idempotency_keys"
    )
    assert [tuple(k) for k in keys] == [("shop-de", "order-1234-shipped", first)]

    # The producer's retry after the purge: nothing inserted, nothing returned, no error.
    assert await _produce(db_url, "order-1234-shipped") is None
    assert await fetch(db_url, "SELECT count(*) AS n FROM outbox.messages") == [(0,)]
    # A key past its own retention protects no more; a new key was never in doubt.
    assert await _produce(db_url, "order-1-shipped") is not None
    assert await _produce(db_url, "order-5678-shipped") is not None

    # A shorter --keep-keys lets the key go, and then it may be used again.
    short = Purge(timedelta(days=30), batch_size=10, keep_keys=timedelta(days=35))
    cutoff, counts = await retention.count(short)
    assert counts[Purged.IDEMPOTENCY_KEYS] == 1
    await retention.purge(short, cutoff, lambda table, n: None)
    assert await _produce(db_url, "order-1234-shipped") is not None


async def test_purge_refuses_keys_kept_shorter_than_messages() -> None:
    code, _, err = await outbox_command(
        "purge", "--older-than", "30d", "--keep-keys", "7d", "--dry-run"
    )
    assert code != 0
    assert "--keep-keys must be at least --older-than" in err
