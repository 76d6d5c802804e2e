"""The result statement's rows travel as one JSON parameter (`outbox.db.arrays.JsonRows`, issue
16): every column arrives as written, instants with their offset and microseconds, any text the
database takes; a value it cannot take is refused alone, and the rest of the batch is written."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db.messages import MessageStore
from outbox.domain.codes import Code
from outbox.domain.models import SendResult, SentAs, State
from outbox.errors import StatementRejected
from outbox.services.results import ResultBuffer
from tests.support import fetch, insert, row

TEXT = {"type": "text", "text": {"body": "hi"}}
# Quotes, a backslash, a newline, a tab, non-Latin letters and an emoji: JSON escapes each.
AWKWARD = "Nachricht \"a\\b\"\n\tünï Привет 🎉 'x'"


async def _held(db_url: str, count: int) -> list[int]:
    """Rows as a claim by worker "w" leaves them: `sending`, leased, one attempt charged."""
    ids = [
        await insert(db_url, "c", f"4915100000{n:03d}", TEXT, inbound_ago=None)
        for n in range(count)
    ]
    await fetch(
        db_url,
        "UPDATE outbox.messages SET state = 'sending', claimed_by = 'w', attempts = 1,"
        " lease_until = now() + interval '1 minute' WHERE id = ANY($1)",
        ids,
    )
    return ids


async def test_every_column_arrives_as_written(db_url: str, engine: AsyncEngine) -> None:
    accepted_id, retry_id = await _held(db_url, 2)
    # Not UTC, with microseconds: the instant must survive the text form.
    at = datetime(2026, 12, 7, 19, 4, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
    retry_at = datetime(2026, 12, 7, 18, 30, 0, 654321, tzinfo=UTC)
    results = [
        SendResult(
            accepted_id,
            State.ACCEPTED,
            at,
            wamid="wamid.HBgLNDkxNTE=",
            sent_as=SentAs.TEMPLATE,
            message_status="held_for_quality_assessment",
        ),
        SendResult(
            retry_id,
            State.QUEUED,
            at,
            error_code="http_503",
            error_title=AWKWARD,
            error_detail=AWKWARD * 3,
            next_attempt_at=retry_at,
            attempts_delta=-1,
            held_template=9_007_199_254_740_993,  # beyond a double's exact integers
        ),
    ]
    assert await MessageStore(engine).complete(results, "w") == 2

    accepted, retry = await row(db_url, accepted_id), await row(db_url, retry_id)
    assert (accepted["state"], accepted["wamid"], accepted["sent_as"]) == (
        "accepted",
        "wamid.HBgLNDkxNTE=",
        "template",
    )
    assert accepted["accepted_at"] == at
    assert accepted["message_status"] == "held_for_quality_assessment"
    assert accepted["claimed_by"] is None
    assert (retry["state"], retry["error_code"], retry["attempts"]) == ("queued", "http_503", 0)
    assert (retry["error_title"], retry["error_detail"]) == (AWKWARD, AWKWARD * 3)
    assert retry["next_attempt_at"] == retry_at
    assert retry["held_template"] == 9_007_199_254_740_993
    assert (retry["wamid"], retry["accepted_at"]) == (None, None)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"wamid": "wamid.\x00"}, id="nul"),
        pytest.param({"error_detail": "half a pair \ud800"}, id="lone-surrogate"),
    ],
)
async def test_a_value_the_database_cannot_take_is_refused_alone(
    db_url: str, engine: AsyncEngine, bad: dict[str, Any]
) -> None:
    store = MessageStore(engine)
    first, refused, last = await _held(db_url, 3)
    now = datetime.now(UTC)
    with pytest.raises(StatementRejected):  # the kind the buffer halves a batch for
        await store.complete([replace(SendResult(refused, State.ACCEPTED, now), **bad)], "w")

    buffer = ResultBuffer(store, "w", flush_interval=0.0, on_written=lambda: None)
    for message_id in (first, refused, last):
        extra = bad if message_id == refused else {}
        buffer.add(
            SendResult(message_id, State.ACCEPTED, now, **{"wamid": f"w{message_id}"} | extra)
        )
    await buffer.drain()

    assert [(await row(db_url, i))["wamid"] for i in (first, last)] == [f"w{first}", f"w{last}"]
    kept = await row(db_url, refused)
    assert (kept["state"], kept["error_code"], kept["wamid"]) == (
        "accepted",
        Code.RESULT_REFUSED,
        None,
    )
