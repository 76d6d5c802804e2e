"""The claim rules against a real PostgreSQL: order per recipient, priority, schedules, pacing.

Each case seeds rows straight into `outbox.messages` (label, recipient, state, extras) and names
the labels one claim must return, in order.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db import claim as store_module
from outbox.db import due as due_module
from outbox.db.housekeeping import HousekeepingStore
from outbox.db.messages import MessageStore
from outbox.domain.ratelimit import Limits
from outbox.ports import ClaimRequest
from tests.support import enqueue_in_window as enqueue
from tests.support import fetch

LEASE = timedelta(minutes=1)
LIMITS = Limits(rate=10_000, burst=10_000)
A, B = "4915100000001", "4915100000002"

# Each seeded row: (label, recipient, state, {column: SQL expression})
Seed = tuple[str, str, str, dict[str, str]]

CASES: dict[str, tuple[list[Seed], list[str]]] = {
    "oldest-first-per-recipient": ([("a1", A, "queued", {}), ("a2", A, "queued", {})], ["a1"]),
    "recipient-order-beats-priority": (
        [("a1", A, "queued", {}), ("a2", A, "queued", {"priority": "9"})],
        ["a1"],
    ),
    "priority-across-recipients": (
        [("a1", A, "queued", {}), ("b1", B, "queued", {"priority": "5"})],
        ["b1", "a1"],
    ),
    "head-sending-holds-next": ([("a1", A, "sending", {}), ("a2", A, "queued", {})], []),
    "head-unknown-holds-next": ([("a1", A, "unknown", {}), ("a2", A, "queued", {})], []),
    "head-in-backoff-holds-next": (
        [
            ("a1", A, "queued", {"next_attempt_at": "now() + interval '1 hour'"}),
            ("a2", A, "queued", {}),
            ("b1", B, "queued", {}),
        ],
        ["b1"],
    ),
    "failed-head-releases-next": ([("a1", A, "failed", {}), ("a2", A, "queued", {})], ["a2"]),
    "expired-head-releases-next": ([("a1", A, "expired", {}), ("a2", A, "queued", {})], ["a2"]),
    "cancelled-head-releases-next": (
        [("a1", A, "cancelled", {}), ("a2", A, "queued", {})],
        ["a2"],
    ),
    "accepted-head-releases-next": (
        [("a1", A, "accepted", {}), ("a2", A, "queued", {})],
        ["a2"],
    ),
    "due-retry-is-claimed": (
        [("a1", A, "queued", {"next_attempt_at": "now() - interval '1 second'"})],
        ["a1"],
    ),
    "due-retry-goes-before-its-followers": (
        [
            ("a1", A, "queued", {"next_attempt_at": "now() - interval '1 second'"}),
            ("a2", A, "queued", {"priority": "9"}),
        ],
        ["a1"],
    ),
    "future-send-after-waits": (
        [("a1", A, "queued", {"send_after": "now() + interval '1 hour'"}), ("b1", B, "queued", {})],
        ["b1"],
    ),
    "past-send-after-goes": (
        [("a1", A, "queued", {"send_after": "now() - interval '1 hour'"})],
        ["a1"],
    ),
    "spellings-of-one-number-are-one-recipient": (
        [("a1", "+49 151-000 00001", "queued", {}), ("a2", A, "queued", {})],
        ["a1"],
    ),
    "another-channel-is-another-line": (
        [("a1", A, "sending", {}), ("x1", A, "queued", {"channel": "'other'"})],
        [],
    ),
}


async def _seed(db_url: str, seeds: list[Seed]) -> dict[int, str]:
    connection = await asyncpg.connect(db_url)
    labels: dict[int, str] = {}
    try:
        for label, recipient, state, extra in seeds:
            columns = {"channel": "'c'", **extra}
            names = ", ".join(["recipient", "payload", "state", *columns])
            values = ", ".join(["$1", "$2::jsonb", "$3", *columns.values()])
            message_id = await connection.fetchval(
                f"INSERT INTO outbox.messages ({names}) VALUES ({values}) RETURNING id",
                recipient,
                json.dumps({"type": "text", "text": {"body": label}}),
                state,
            )
            labels[message_id] = label
    finally:
        await connection.close()
    return labels


@pytest.mark.parametrize("case", CASES)
async def test_claim_rules(db_url: str, engine: AsyncEngine, case: str) -> None:
    seeds, expected = CASES[case]
    labels = await _seed(db_url, seeds)
    claimed = (await MessageStore(engine).claim("c", 10, "w", LEASE, LIMITS)).messages
    assert [labels[m.id] for m in claimed] == expected


async def test_one_claim_takes_one_row_per_recipient_and_the_next_claim_none(
    db_url: str, engine: AsyncEngine
) -> None:
    await _seed(db_url, [(f"a{i}", A, "queued", {}) for i in range(5)])
    store = MessageStore(engine)
    assert len((await store.claim("c", 10, "w1", LEASE, LIMITS)).messages) == 1
    assert (await store.claim("c", 10, "w2", LEASE, LIMITS)).messages == []


async def test_a_claim_tells_whether_its_channel_has_more_rows_ready(
    db_url: str, engine: AsyncEngine
) -> None:
    """`more`: the channel had more claimable rows than it was granted. The row read past the
    grant to tell is not claimed: the next claim takes it."""
    await enqueue(db_url, 3, channel="a")
    await enqueue(db_url, 2, after=10, channel="b")
    # Two rows to one recipient: the second is not claimable while the first is open.
    await _seed(db_url, [("c1", A, "queued", {}), ("c2", A, "queued", {})])
    store, limits = MessageStore(engine), {"a": LIMITS, "b": LIMITS, "c": LIMITS}
    first = await store.claim_many(
        [ClaimRequest(channel, 2, limit) for channel, limit in limits.items()], "w", LEASE
    )
    assert {channel: (len(c.messages), c.more) for channel, c in first.items()} == {
        "a": (2, True),
        "b": (2, False),
        "c": (1, False),
    }
    [[queued]] = await fetch(db_url, "SELECT count(*) FROM outbox.messages WHERE state = 'queued'")
    assert queued == 2  # a's third row and c's second
    again = await store.claim_many([ClaimRequest("a", 2, LIMITS)], "w", LEASE)
    assert (len(again["a"].messages), again["a"].more) == (1, False)


async def test_a_claimed_row_carries_its_priority(db_url: str, engine: AsyncEngine) -> None:
    """Rows claimed ahead wait for a request slot by priority (`RequestGate`): the claim must
    hand the producer's priority over, not the default."""
    await _seed(db_url, [("a1", A, "queued", {"priority": "7"}), ("b1", B, "queued", {})])
    claimed = (await MessageStore(engine).claim("c", 10, "w", LEASE, LIMITS)).messages
    assert [m.priority for m in claimed] == [7, 0]


async def test_claim_reports_the_window_and_the_planned_form(
    db_url: str, engine: AsyncEngine
) -> None:
    await _seed(db_url, [("a1", A, "queued", {"sent_as": "'fallback_template'"})])
    await fetch(
        db_url,
        "INSERT INTO outbox.contacts (channel, wa_id, last_inbound_at) "
        "VALUES ('c', $1, '2026-01-02T03:04:05Z')",
        A,
    )
    [message] = (await MessageStore(engine).claim("c", 10, "w", LEASE, LIMITS)).messages
    assert message.last_inbound_at is not None
    assert message.last_inbound_at.isoformat() == "2026-01-02T03:04:05+00:00"
    assert message.planned == "fallback_template"


async def test_a_producer_scheduling_for_later_lands_in_the_due_index(db_url: str) -> None:
    await _seed(db_url, [("a1", A, "queued", {"send_after": "now() + interval '1 day'"})])
    [scheduled] = await fetch(db_url, "SELECT send_after, next_attempt_at FROM outbox.messages")
    assert scheduled["next_attempt_at"] == scheduled["send_after"]


def _index_rows(plan: dict[str, Any]) -> int:
    """Index entries read by every index scan in an EXPLAIN ANALYZE plan."""
    own = 0
    if "Index" in plan.get("Node Type", ""):
        own = int(plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1))
    return own + sum(_index_rows(child) for child in plan.get("Plans", []))


async def _claim_plan(db_url: str) -> tuple[dict[str, Any], int]:
    """EXPLAIN ANALYZE of one claim of up to 100 rows on channel 'c', rolled back."""
    sql = str(store_module.CLAIM_MESSAGES)
    for name, value in {
        "channel": "ARRAY['c']",
        "granted": "ARRAY[100]",
        "replay_quota": "ARRAY[20]",
        "worker": "'w'",
        "lease_seconds": "60",
        "burst": "ARRAY[1000.0]",
        "tokens": "ARRAY[1000.0]",
        "rate": "ARRAY[NULL::float8]",
        "refilled_at": "ARRAY[now()]",
    }.items():
        sql = sql.replace(f":{name}", value)
    connection = await asyncpg.connect(db_url)
    try:
        transaction = connection.transaction()
        await transaction.start()
        [plan_json] = await connection.fetchrow(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")
        claimed = await connection.fetchval(
            "SELECT count(*) FROM outbox.messages WHERE state = 'sending'"
        )
        await transaction.rollback()
    finally:
        await connection.close()
    return json.loads(plan_json)[0]["Plan"], int(claimed)


async def test_rows_in_backoff_are_not_walked_by_the_claim(db_url: str) -> None:
    """10,000 rows backing off in front of the ready ones cost the claim next to nothing."""
    await fetch(
        db_url,
        """
        INSERT INTO outbox.messages (channel, recipient, payload, next_attempt_at)
        SELECT 'c', '49151' || lpad(g::text, 8, '0'), '{"type":"text","text":{"body":"x"}}',
               now() + interval '1 hour'
        FROM generate_series(1, 10000) AS g
        """,
    )
    await _seed(db_url, [(f"c{i}", "4915200000001", "queued", {}) for i in range(3)])
    await fetch(db_url, "ANALYZE outbox.messages")
    plan, claimed = await _claim_plan(db_url)
    assert claimed == 1
    assert _index_rows(plan) < 50, plan


async def test_the_claim_stays_cheap_when_the_statistics_predate_the_backlog(db_url: str) -> None:
    """A campaign lands in a table analysed when it held only finished rows: the order check
    must still probe one recipient per candidate, not scan every open row of the channel."""
    await fetch(
        db_url,
        """
        INSERT INTO outbox.messages (channel, recipient, payload, state, wamid, accepted_at)
        SELECT 'c', '49161' || lpad(g::text, 8, '0'), '{"type":"text","text":{"body":"x"}}',
               'accepted', 'wamid.old' || g, now()
        FROM generate_series(1, 10000) AS g
        """,
    )
    await fetch(db_url, "VACUUM ANALYZE outbox.messages")
    await fetch(
        db_url,
        """
        INSERT INTO outbox.messages (channel, recipient, payload)
        SELECT 'c', '49151' || lpad(g::text, 8, '0'), '{"type":"text","text":{"body":"x"}}'
        FROM generate_series(1, 10000) AS g
        """,
    )
    plan, claimed = await _claim_plan(db_url)
    assert claimed == 100
    # 100 candidates, one index probe each for their recipient's older rows, plus the walk of
    # the ready index; a scan per candidate would read 100 x 10,000.
    assert _index_rows(plan) < 2000, plan


async def test_a_backlog_to_one_recipient_is_not_walked_by_the_claim(db_url: str) -> None:
    """Only a recipient's head can be claimed: its 20,000 later rows, ranked first by priority,
    must not be read by every claim of the channel (each claim holds the bucket's lock)."""
    await fetch(
        db_url,
        """
        INSERT INTO outbox.messages (channel, recipient, payload, priority)
        SELECT 'c', '4917000000001', '{"type":"text","text":{"body":"x"}}', 1
        FROM generate_series(1, 20000) AS g
        """,
    )
    await enqueue(db_url, 300, channel="c")
    await fetch(db_url, "ANALYZE outbox.messages")
    plan, claimed = await _claim_plan(db_url)
    assert claimed == 100
    assert _index_rows(plan) < 2000, plan


async def test_the_next_row_of_a_recipient_becomes_claimable_when_its_head_ends(
    db_url: str, engine: AsyncEngine
) -> None:
    """Whichever way the head ends (a result, housekeeping, an operator), the next row goes."""
    labels = await _seed(db_url, [(f"a{i}", A, "queued", {}) for i in range(4)])
    ids = sorted(labels)
    store = MessageStore(engine)
    for ending, head in zip(("accepted", "failed", "cancelled"), ids[:3], strict=True):
        [claimed] = (await store.claim("c", 10, "w", LEASE, LIMITS)).messages
        assert claimed.id == head
        await fetch(db_url, "UPDATE outbox.messages SET state = $1 WHERE id = $2", ending, head)
    [last] = (await store.claim("c", 10, "w", LEASE, LIMITS)).messages
    assert last.id == ids[3]


async def test_a_row_inserted_while_its_head_ended_is_not_left_behind(
    db_url: str, engine: AsyncEngine
) -> None:
    """The head ends and commits while a producer's INSERT behind it is still uncommitted: the
    hand-over cannot see the new row. Maintenance's sweep makes it the head."""
    labels = await _seed(db_url, [("a1", A, "sending", {})])
    [head] = labels
    producer = await asyncpg.connect(db_url)
    try:
        transaction = producer.transaction()
        await transaction.start()
        follower = await producer.fetchval(
            "INSERT INTO outbox.messages (channel, recipient, payload) "
            "VALUES ('c', $1, '{}') RETURNING id",
            A,
        )
        await fetch(db_url, "UPDATE outbox.messages SET state = 'accepted' WHERE id = $1", head)
        await transaction.commit()
    finally:
        await producer.close()
    store = MessageStore(engine)
    assert (await store.claim("c", 10, "w", LEASE, LIMITS)).messages == []
    repaired, after = await HousekeepingStore(engine).repair_heads(("", "", ""))
    assert (repaired, after) == (1, ("", "", ""))
    [claimed] = (await store.claim("c", 10, "w", LEASE, LIMITS)).messages
    assert claimed.id == follower


async def test_the_sweep_of_missed_hand_overs_walks_recipients_a_page_at_a_time(
    db_url: str, engine: AsyncEngine
) -> None:
    recipients = [f"49170000000{n:02}" for n in range(5)]
    await _seed(db_url, [(f"{r}-{i}", r, "queued", {}) for r in recipients for i in range(2)])
    housekeeping = HousekeepingStore(engine)
    pages = []
    after = ("", "", "")
    for _ in range(3):
        repaired, after = await housekeeping.repair_heads(after, limit=2)
        pages.append((repaired, after))
    assert pages == [
        (0, ("c", recipients[1], "")),
        (0, ("c", recipients[3], "")),
        (0, ("", "", "")),
    ]


async def test_the_look_for_due_channels_probes_no_further_than_its_answer(db_url: str) -> None:
    """Issue 16: the channels up to the cursor (the wrap-around) were probed up to the limit
    even when those past it had filled the answer, which cut them all: half of every look's
    probes with rows on 10,000 channels. Now only what is left of the limit is probed."""
    await fetch(
        db_url,
        """
        INSERT INTO outbox.messages (channel, recipient, payload)
        SELECT 'd' || lpad(g::text, 2, '0'), '4915100000001', '{"type":"text","text":{"body":"x"}}'
        FROM generate_series(0, 39) AS g
        """,
    )
    sql = str(due_module.DUE_CHANNELS)
    for name, value in {"after": "'d09'", "limit": "10", "also": "ARRAY[]::text[]"}.items():
        sql = sql.replace(f":{name}", value)
    connection = await asyncpg.connect(db_url)
    try:
        [plan_json] = await connection.fetchrow(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")
        answer = await connection.fetchval(sql)
        wrapped = await connection.fetchval(sql.replace("'d09'", "'d35'"))
    finally:
        await connection.close()
    assert answer == [f"d{n}" for n in range(10, 20)]
    assert wrapped == [*(f"d{n}" for n in range(36, 40)), *(f"d0{n}" for n in range(6))]
    # 10 channels past the cursor and the wrap-around's first probe; 20 before.
    assert _index_rows(json.loads(plan_json)[0]["Plan"]) <= 12
