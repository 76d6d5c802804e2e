"""Order per recipient, scoped and released (issue 15, item 4, the ordering_key section, item 9).

A line is a channel, a recipient and an `ordering_key` (empty by default: one line per
recipient). Cases seed rows as tests/integration/test_claim.py does and name the labels one
claim returns, in order.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db.housekeeping import HousekeepingStore
from outbox.db.messages import MessageStore
from outbox.domain.models import SendResult, State
from outbox.domain.ratelimit import Limits
from outbox.sandbox import Sandbox
from outbox.sandbox.faults import Fault
from tests.integration.test_claim import LEASE, LIMITS, A, B, Seed, _seed
from tests.support import fetch, insert, row, running, settings_for, wait_until

OTP = {"ordering_key": "'otp'"}
LATER = "now() + interval '1 hour'"

CASES: dict[str, tuple[list[Seed], list[str]]] = {
    "another-key-passes-a-head-in-backoff": (
        [("a1", A, "queued", {"next_attempt_at": LATER}), ("a2", A, "queued", OTP)],
        ["a2"],
    ),
    "another-key-passes-a-head-in-flight": (
        [("a1", A, "sending", {}), ("a2", A, "queued", OTP)],
        ["a2"],
    ),
    "another-key-passes-a-head-scheduled-for-later": (
        [("a1", A, "queued", {"send_after": LATER}), ("a2", A, "queued", OTP)],
        ["a2"],
    ),
    "another-key-passes-an-unknown-head": (
        [("a1", A, "unknown", {}), ("a2", A, "queued", OTP)],
        ["a2"],
    ),
    # Strict order stays the default: the same (or no) key waits.
    "no-key-waits-behind-a-head-scheduled-for-later": (
        [("a1", A, "queued", {"send_after": LATER}), ("a2", A, "queued", {})],
        [],
    ),
    "one-key-keeps-its-order": (
        [("a1", A, "sending", OTP), ("a2", A, "queued", OTP), ("a3", A, "queued", {})],
        ["a3"],
    ),
    "a-key-names-a-line-per-recipient": (
        [("a1", A, "sending", OTP), ("b1", B, "queued", OTP)],
        ["b1"],
    ),
    # Item 9: an older row opened again (a replay) waits for a newer row already in flight.
    "a-newer-row-in-flight-holds-an-older-one": (
        [("a1", A, "queued", {}), ("a2", A, "sending", {})],
        [],
    ),
    "a-newer-row-in-flight-on-another-key-does-not": (
        [("a1", A, "queued", {}), ("a2", A, "sending", OTP)],
        ["a1"],
    ),
}


@pytest.mark.parametrize("case", CASES)
async def test_lines(db_url: str, engine: AsyncEngine, case: str) -> None:
    seeds, expected = CASES[case]
    labels = await _seed(db_url, seeds)
    claimed = (await MessageStore(engine).claim("c", 10, "w", LEASE, LIMITS)).messages
    assert sorted(labels[m.id] for m in claimed) == expected


async def _back_off(engine: AsyncEngine, message_id: int, seconds: float) -> None:
    """The head was claimed and its answer was a transient error: a retry `seconds` away."""
    now = datetime.now(UTC)
    retry = SendResult(
        message_id,
        State.QUEUED,
        now,
        error_code="http_503",
        next_attempt_at=now + timedelta(seconds=seconds),
    )
    assert await MessageStore(engine).complete([retry], "w") == 1


ENDINGS = {
    "cancelled by an operator": "UPDATE outbox.messages SET state = 'cancelled' WHERE id = $1",
    "settled by a status": "UPDATE outbox.messages SET state = 'delivered' WHERE id = $1",
    "expired by maintenance": "UPDATE outbox.messages SET expires_at = now() WHERE id = $1",
}


@pytest.mark.parametrize("ending", ENDINGS)
async def test_rows_behind_a_head_in_backoff_go_at_once_when_it_ends(
    db_url: str, engine: AsyncEngine, ending: str
) -> None:
    """Item 4: the head backs off for 300 s, then ends another way; its next row goes now."""
    labels = await _seed(db_url, [("a1", A, "queued", {}), ("a2", A, "queued", {})])
    head, follower = sorted(labels)
    store = MessageStore(engine)
    [claimed] = (await store.claim("c", 10, "w", LEASE, LIMITS)).messages
    assert claimed.id == head
    await _back_off(engine, head, 300)
    await fetch(db_url, ENDINGS[ending], head)
    await HousekeepingStore(engine).expire_due()
    [row] = await fetch(db_url, "SELECT state FROM outbox.messages WHERE id = $1", head)
    assert row["state"] != "queued"
    assert [m.id for m in (await store.claim("c", 10, "w", LEASE, LIMITS)).messages] == [follower]


async def test_a_released_row_keeps_its_own_send_after(db_url: str, engine: AsyncEngine) -> None:
    labels = await _seed(
        db_url,
        [("a1", A, "queued", {}), ("a2", A, "queued", {"send_after": LATER})],
    )
    head, follower = sorted(labels)
    store = MessageStore(engine)
    await store.claim("c", 10, "w", LEASE, LIMITS)
    await _back_off(engine, head, 7200)
    await fetch(db_url, ENDINGS["cancelled by an operator"], head)
    [row] = await fetch(
        db_url,
        "SELECT head, next_attempt_at, send_after FROM outbox.messages WHERE id = $1",
        follower,
    )
    assert row["head"]
    assert row["next_attempt_at"] == row["send_after"]
    assert (await store.claim("c", 10, "w", LEASE, LIMITS)).messages == []


async def test_heads_are_kept_per_line(db_url: str, engine: AsyncEngine) -> None:
    labels = await _seed(
        db_url,
        [
            ("a1", A, "queued", {}),
            ("o1", A, "queued", OTP),
            ("a2", A, "queued", {}),
            ("o2", A, "queued", OTP),
        ],
    )
    rows = await fetch(db_url, "SELECT id, head FROM outbox.messages ORDER BY id")
    assert {labels[r["id"]]: r["head"] for r in rows} == {
        "a1": True,
        "o1": True,
        "a2": False,
        "o2": False,
    }
    ids = {label: i for i, label in labels.items()}
    await fetch(db_url, "UPDATE outbox.messages SET state = 'accepted' WHERE id = $1", ids["o1"])
    [o2] = await fetch(db_url, "SELECT head FROM outbox.messages WHERE id = $1", ids["o2"])
    [a2] = await fetch(db_url, "SELECT head FROM outbox.messages WHERE id = $1", ids["a2"])
    assert o2["head"]
    assert not a2["head"]


async def test_a_missing_key_is_the_recipients_own_line(db_url: str) -> None:
    await fetch(
        db_url,
        "INSERT INTO outbox.messages (channel, recipient, payload, ordering_key) "
        "VALUES ('c', $1, '{}', NULL), ('c', $1, '{}', '')",
        A,
    )
    rows = await fetch(db_url, "SELECT ordering_key, head FROM outbox.messages ORDER BY id")
    assert [(r["ordering_key"], r["head"]) for r in rows] == [("", True), ("", False)]


PACED = Limits(rate=10_000, burst=10_000, paced=True)


async def test_pacing_stays_per_recipient(db_url: str, engine: AsyncEngine) -> None:
    """Lines to one recipient share its pair pacing: one row per claim, none while another
    line's row is in flight or the recipient's gap runs."""
    labels = await _seed(
        db_url,
        [("a1", A, "queued", {}), ("o1", A, "queued", OTP), ("b1", B, "queued", {})],
    )
    store = MessageStore(engine)
    first = (await store.claim("c", 10, "w", LEASE, PACED)).messages
    assert sorted(labels[m.id] for m in first) == ["a1", "b1"]
    assert (await store.claim("c", 10, "w", LEASE, PACED)).messages == []
    # Without pacing, the other line goes beside the row in flight.
    [other] = (await store.claim("c", 10, "w", LEASE, LIMITS)).messages
    assert labels[other.id] == "o1"


async def test_replayed_rows_that_back_off_stay_in_the_replay_lane(
    db_url: str, engine: AsyncEngine
) -> None:
    """Item 9: a replayed row due for its retry is replayed traffic, not live traffic: with
    no replay quota left in a claim of one, the live row goes first."""
    due = "now() - interval '1 second'"
    labels = await _seed(
        db_url,
        [
            ("r1", A, "queued", {"replayed_at": "now()", "next_attempt_at": due}),
            ("b1", B, "queued", {}),
        ],
    )
    store = MessageStore(engine, rand=lambda: 0.99)  # 0.2 of one token rounds down to none
    [first] = (await store.claim("c", 1, "w", LEASE, LIMITS)).messages
    assert labels[first.id] == "b1"
    [second] = (await store.claim("c", 1, "w", LEASE, LIMITS)).messages
    assert labels[second.id] == "r1"


async def test_show_says_what_a_waiting_row_waits_for(db_url: str, engine: AsyncEngine) -> None:
    """`outbox show` names the head a row waits behind, with its state and next attempt."""
    from outbox.cli.render import format_message
    from outbox.db.inspection import InspectionStore

    labels = await _seed(db_url, [("a1", A, "queued", {}), ("a2", A, "queued", {})])
    head, follower = sorted(labels)
    await MessageStore(engine).claim("c", 10, "w", LEASE, LIMITS)
    await _back_off(engine, head, 300)
    store = InspectionStore(engine)
    waiting = await store.waiting(follower)
    assert waiting is not None
    assert waiting.startswith(f"message {head} ahead in its line (queued, next attempt 20")
    row = await store.message(follower)
    assert row is not None
    assert f"waits for       message {head} ahead" in format_message(row, [], [], waiting)
    assert await store.waiting(head) is not None
    assert (await store.waiting(head) or "").startswith("its retry at ")


async def test_a_one_time_password_with_its_own_key_passes_a_notice_retrying_503s(
    db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    """The issue's scenario through the sender and the sandbox: an order notice answered 503
    backs off (for up to an hour here); a one-time password to the same person, priority 10,
    a 40 s expires_at and its own ordering_key, is accepted at once."""
    api, base_url = sandbox
    api.faults.add(Fault("status", recipients=frozenset({A}), times=1, status=503))
    settings = settings_for(
        db_url, base_url, backoff_base=timedelta(hours=1), backoff_cap=timedelta(hours=1)
    )
    async with running(settings):
        notice = await insert(db_url, "cloud", A, {"type": "text", "text": {"body": "order"}})

        async def backing_off() -> bool:
            return (await row(db_url, notice))["next_attempt_at"] is not None

        await wait_until(backing_off)
        otp = await insert(
            db_url,
            "cloud",
            A,
            {"type": "text", "text": {"body": "123456"}},
            priority=10,
            expires_at=datetime.now(UTC) + timedelta(seconds=40),
            ordering_key="otp",
        )

        async def accepted() -> bool:
            return bool((await row(db_url, otp))["state"] == "accepted")

        await wait_until(accepted, within=10)
    assert (await row(db_url, notice))["state"] == "queued"
