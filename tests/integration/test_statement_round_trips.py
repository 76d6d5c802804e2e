"""The sender's statements that stand alone go without BEGIN and COMMIT (issue 16): each of those
two round trips waits for a turn of a busy event loop. The claim keeps its transaction: its
rows are leased under the buckets' locks, which must hold until the commit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from outbox.db.engine import create_engine
from outbox.db.messages import MessageStore
from outbox.domain.models import SendResult, State
from outbox.domain.ratelimit import Limits
from outbox.ports import ClaimRequest
from tests.support import insert

LEASE = timedelta(minutes=1)
_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK")


@pytest.fixture
async def logged(db_url: str) -> AsyncIterator[tuple[MessageStore, list[str]]]:
    """A store whose connections report the queries they send outside prepared statements:
    the transaction's control statements (asyncpg's query loggers see no prepared ones)."""
    queries: list[str] = []
    engine = create_engine(db_url, pool_size=1)

    @event.listens_for(engine.sync_engine, "connect")
    def log(connection: Any, _record: Any) -> None:
        connection.driver_connection.add_query_logger(lambda q: queries.append(q.query))

    try:
        yield MessageStore(engine), queries
    finally:
        await engine.dispose()


def _control(queries: list[str]) -> list[str]:
    return [
        q.strip().rstrip(";").upper() for q in queries if q.strip().upper().startswith(_CONTROL)
    ]


async def test_the_look_the_answers_and_the_renewal_go_without_a_transaction(
    db_url: str, logged: tuple[MessageStore, list[str]]
) -> None:
    store, queries = logged
    message_id = await insert(db_url, "c", "4915100000001", {"type": "text", "text": {"body": "x"}})
    claim = await store.claim("c", 1, "w", LEASE, Limits(100.0, 10.0))
    assert [m.id for m in claim.messages] == [message_id]

    alone: dict[str, Callable[[], Awaitable[object]]] = {
        "due_channels": lambda: store.due_channels("", 10),
        "renew": lambda: store.renew([message_id], "w", LEASE),
        "complete": lambda: store.complete(
            [SendResult(message_id, State.ACCEPTED, datetime.now(UTC), wamid="w1")], "w"
        ),
    }
    for name, call in alone.items():
        queries.clear()
        await call()
        assert _control(queries) == [], name


async def test_the_claim_keeps_its_transaction(
    db_url: str, logged: tuple[MessageStore, list[str]]
) -> None:
    store, queries = logged
    await insert(db_url, "c", "4915100000001", {"type": "text", "text": {"body": "x"}})
    await store.ensure_buckets({"c": Limits(100.0, 10.0)})
    queries.clear()
    await store.claim_many([ClaimRequest("c", 1, Limits(100.0, 10.0))], "w", LEASE)
    assert _control(queries) == ["BEGIN", "COMMIT"]
