"""Every state change the send side's statements make is one `codes.TRANSITIONS` allows.

Each statement runs against PostgreSQL over rows seeded in every state, fresh and stale (lease
run out, long quiet, past `expires_at`, rescued from a live holder); every row it moved is
checked, before and after, against the transition table for the statement's mover.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db.housekeeping import HousekeepingStore
from outbox.db.messages import MessageStore
from outbox.domain.codes import Mover, allowed
from outbox.domain.models import SendResult, State
from outbox.domain.ratelimit import Limits

LEASE = timedelta(minutes=1)
LIMITS = Limits(rate=10_000, burst=10_000)
WORKER = "w"

# Column values per variant, as SQL expressions.
VARIANTS = {
    "fresh": {"lease_until": "now() + interval '1 hour'"},
    "stale": {
        "lease_until": "now() - interval '1 hour'",
        "created_at": "now() - interval '1 day'",
        "updated_at": "now() - interval '1 day'",
    },
    "past-expiry": {
        "lease_until": "now() - interval '1 hour'",
        "created_at": "now() - interval '1 day'",
        "updated_at": "now() - interval '1 day'",
        "expires_at": "now() - interval '1 minute'",
    },
    # Rescued by housekeeping from a holder (WORKER) that is still alive and owes its answer.
    "rescued": {"lease_until": "NULL", "error_code": "'lease_expired'"},
}

Run = Callable[[AsyncEngine, list[int]], Awaitable[object]]


def _complete(state: State) -> Run:
    async def run(engine: AsyncEngine, ids: list[int]) -> object:
        now = datetime.now(UTC)
        results = [SendResult(i, state, now, error_code="x", error_title="x") for i in ids]
        return await MessageStore(engine).complete(results, WORKER)

    return run


STATEMENTS: dict[str, tuple[Mover, Run]] = {
    "claim": (
        Mover.CLAIM,
        lambda engine, _: MessageStore(engine).claim("c", 1000, "w2", LEASE, LIMITS),
    ),
    **{
        f"complete-{state}": (Mover.SEND, _complete(state))
        for state in (State.QUEUED, State.ACCEPTED, State.FAILED, State.EXPIRED, State.UNKNOWN)
    },
    "release": (Mover.RELEASE, lambda engine, ids: MessageStore(engine).release(ids, WORKER)),
    "renew": (Mover.RENEW, lambda engine, ids: MessageStore(engine).renew(ids, WORKER, LEASE)),
    "rescue": (
        Mover.HOUSEKEEPING,
        lambda engine, _: HousekeepingStore(engine).rescue_expired_leases(),
    ),
    "expire": (Mover.HOUSEKEEPING, lambda engine, _: HousekeepingStore(engine).expire_due()),
    "resend-unknown": (
        Mover.HOUSEKEEPING,
        lambda engine, _: HousekeepingStore(engine).resend_unknown(["c"], timedelta(0)),
    ),
    "fail-unknown-channel": (
        Mover.HOUSEKEEPING,
        lambda engine, _: HousekeepingStore(engine).fail_unknown_channels({"other"}, timedelta(0)),
    ),
}


async def _seed(db_url: str) -> list[int]:
    connection = await asyncpg.connect(db_url)
    ids = []
    try:
        for number, (state, variant) in enumerate(
            (state, variant) for state in State for variant in VARIANTS.values()
        ):
            columns = {"channel": "'c'", "claimed_by": f"'{WORKER}'", **variant}
            names = ", ".join(["recipient", "payload", "state", *columns])
            values = ", ".join(["$1", "$2::jsonb", "$3", *columns.values()])
            ids.append(
                await connection.fetchval(
                    f"INSERT INTO outbox.messages ({names}) VALUES ({values}) RETURNING id",
                    f"49151{number:08d}",  # one recipient each: no row waits behind another
                    '{"type": "text", "text": {"body": "x"}}',
                    state.value,
                )
            )
    finally:
        await connection.close()
    return ids


async def _states(db_url: str) -> dict[int, State]:
    connection = await asyncpg.connect(db_url)
    try:
        rows = await connection.fetch("SELECT id, state FROM outbox.messages")
    finally:
        await connection.close()
    return {row["id"]: State(row["state"]) for row in rows}


@pytest.mark.parametrize("statement", STATEMENTS)
async def test_every_move_is_in_the_transition_table(
    db_url: str, engine: AsyncEngine, statement: str
) -> None:
    mover, run = STATEMENTS[statement]
    ids = await _seed(db_url)
    before = await _states(db_url)
    await run(engine, ids)
    after = await _states(db_url)
    moves = {(before[i], after[i]) for i in ids if before[i] is not after[i]}
    assert moves, f"{statement} moved no row: the seed does not exercise it"
    refused = {(b.value, a.value) for b, a in moves if not allowed(b, a, mover)}
    assert not refused, f"{statement} ({mover}) made moves the table does not allow: {refused}"
