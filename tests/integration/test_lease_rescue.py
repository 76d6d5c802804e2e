"""The holder of an answer wins over the lease rescue (issue 14, item 3).

Housekeeping turns a `sending` row whose lease ran out into `unknown`; if the process that holds
the row is alive (its result waits for a database that was away), its answer must still be
written, and the row must not be sent a second time. Here the rows are rescued by moving their
lease into the past, with PostgreSQL up all along; tests/faults stops PostgreSQL for real.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db.housekeeping import RESCUE_LEASES, RESCUE_PARAMS, HousekeepingStore
from outbox.db.messages import MessageStore
from outbox.domain.models import SendResult, State
from outbox.domain.ratelimit import Limits
from outbox.sandbox import Sandbox
from tests.support import KEYS, enqueue_in_window, fetch, running, settings_for, wait_until

WORKER = "w1"
LEASE = timedelta(minutes=5)
LIMITS = Limits(rate=10_000, burst=10_000)


async def _claimed(db_url: str, engine: AsyncEngine, count: int) -> list[int]:
    await enqueue_in_window(db_url, count, channel="cloud")
    claim = await MessageStore(engine).claim("cloud", count, WORKER, LEASE, LIMITS)
    return sorted(m.id for m in claim.messages)


async def _rescue_now(engine: AsyncEngine, ids: list[int]) -> list[int]:
    """Let the leases of `ids` run out and rescue them, in one transaction: nothing (a renewal)
    can come between."""
    params = {"limit": 1000, **RESCUE_PARAMS}
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "UPDATE outbox.messages SET lease_until = now() - interval '1 second'"
                " WHERE id = ANY(:ids) AND state = 'sending'"
            ),
            {"ids": ids},
        )
        rows = (await connection.execute(RESCUE_LEASES, params)).all()
    return sorted(r.id for r in rows)


async def _states(db_url: str, ids: list[int]) -> dict[int, str]:
    rows = await fetch(db_url, "SELECT id, state FROM outbox.messages WHERE id = ANY($1)", ids)
    return {r["id"]: r["state"] for r in rows}


async def test_the_holders_answer_is_written_over_a_rescued_row(
    db_url: str, engine: AsyncEngine
) -> None:
    ids = await _claimed(db_url, engine, 3)
    assert await _rescue_now(engine, ids) == ids
    now = datetime.now(UTC)
    results = [SendResult(i, State.ACCEPTED, now, wamid=f"wamid.{i}") for i in ids]

    written = await MessageStore(engine).complete(results, WORKER)

    assert written == 3
    rows = await fetch(db_url, "SELECT * FROM outbox.messages WHERE id = ANY($1)", ids)
    assert {(r["state"], r["wamid"], r["claimed_by"]) for r in rows} == {
        ("accepted", f"wamid.{i}", None) for i in ids
    }
    assert all(r["error_code"] is None for r in rows)
    # Nothing left for the unknown policy to send again.
    assert await HousekeepingStore(engine).resend_unknown(["cloud"], timedelta(0)) == 0


async def test_another_workers_answer_does_not_touch_a_rescued_row(
    db_url: str, engine: AsyncEngine
) -> None:
    ids = await _claimed(db_url, engine, 2)
    await _rescue_now(engine, ids)
    now = datetime.now(UTC)
    results = [SendResult(i, State.ACCEPTED, now, wamid=f"wamid.{i}") for i in ids]

    assert await MessageStore(engine).complete(results, "someone-else") == 0
    assert await MessageStore(engine).renew(ids, "someone-else", LEASE) == ([], [])
    assert set((await _states(db_url, ids)).values()) == {"unknown"}


async def test_a_resent_row_is_no_longer_the_old_holders(db_url: str, engine: AsyncEngine) -> None:
    ids = await _claimed(db_url, engine, 2)
    await _rescue_now(engine, ids)
    assert await HousekeepingStore(engine).resend_unknown(["cloud"], timedelta(0)) == 2
    rows = await fetch(db_url, "SELECT claimed_by FROM outbox.messages WHERE id = ANY($1)", ids)
    assert {r["claimed_by"] for r in rows} == {None}
    now = datetime.now(UTC)
    results = [SendResult(i, State.ACCEPTED, now, wamid=f"wamid.{i}") for i in ids]

    # The old holder's late answer and renewal lose: the row is queued to be sent again.
    assert await MessageStore(engine).renew(ids, WORKER, LEASE) == ([], [])
    assert await MessageStore(engine).complete(results, WORKER) == 0
    assert set((await _states(db_url, ids)).values()) == {"queued"}


async def test_renew_extends_held_leases_and_takes_back_rescued_rows(
    db_url: str, engine: AsyncEngine
) -> None:
    ids = await _claimed(db_url, engine, 4)
    rescued, held = ids[:2], ids[2:]
    await _rescue_now(engine, rescued)
    await fetch(
        db_url,
        "UPDATE outbox.messages SET lease_until = now() + interval '1 second' WHERE id = ANY($1)",
        held,
    )

    extended, taken_back = await MessageStore(engine).renew(ids, WORKER, LEASE)

    assert (sorted(extended), sorted(taken_back)) == (held, rescued)
    rows = await fetch(
        db_url,
        "SELECT state, claimed_by, error_code, lease_until > now() + interval '4 minutes' AS long"
        " FROM outbox.messages WHERE id = ANY($1)",
        ids,
    )
    assert {tuple(r) for r in rows} == {("sending", WORKER, None, True)}


async def test_a_rescue_while_the_answer_is_on_its_way_sends_each_row_once(
    db_url: str, engine: AsyncEngine
) -> None:
    """The daemon in-process against a slow sandbox: its rows are rescued while their requests
    are in flight, with a quiet period short enough that the unknown policy would resend them."""
    count = 5
    api = Sandbox(KEYS, latency=1.0, statuses=False)
    base_url = await api.start()
    try:
        settings = settings_for(
            db_url,
            base_url,
            lease=timedelta(seconds=3),
            request_timeout=timedelta(seconds=2),
            unknown_quiet=timedelta(seconds=1),
            maintenance_interval=timedelta(milliseconds=200),
        )
        async with running(settings):
            await enqueue_in_window(db_url, count, channel="onprem")
            await wait_until(lambda: len(api.message_requests()) == count, within=10)
            ids = [r["id"] for r in await fetch(db_url, "SELECT id FROM outbox.messages")]
            assert await _rescue_now(engine, ids) == sorted(ids)

            async def settled() -> bool:
                states = await _states(db_url, ids)
                return set(states.values()) == {"accepted"}

            # Long enough for a resend after the 1 s quiet period, had the answers been lost.
            await wait_until(settled, within=15)
    finally:
        await api.stop()
    per_recipient = Counter(r.body["to"] for r in api.message_requests())
    assert sorted(per_recipient.values()) == [1] * count, per_recipient
