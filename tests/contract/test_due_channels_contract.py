"""The store's many-channel side, on the fake and on PostgreSQL alike: which channels have rows
due (from a cursor, wrapping, up to a limit), when the next comes due, and one claim that serves
several channels, each within its own bucket."""

# ruff: noqa: F811  (the `harness` fixture is imported from the store's contract, then requested)
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from outbox.domain.models import State
from outbox.domain.ratelimit import Limits
from outbox.ports import ClaimRequest
from tests.contract.test_message_store_contract import (  # noqa: F401  (the fixture)
    FAST,
    LEASE,
    A,
    B,
    C,
    FakeHarness,
    Harness,
    harness,
)


def _now() -> datetime:
    return datetime.now(UTC)


async def test_due_names_channels_with_ready_rows_from_the_cursor_on(harness: Harness) -> None:
    for channel in ("a", "b", "d"):
        await harness.add(A, channel=channel)
    await harness.add(A, channel="e", next_attempt_at=_now() + timedelta(hours=1))
    due = await harness.store.due_channels("b", 10)
    assert due.channels == ["d", "a", "b"]  # after the cursor, then from the start again
    assert due.next_in is not None
    assert 3590 < due.next_in <= 3600
    assert (await harness.store.due_channels("", 2)).channels == ["a", "b"]


async def test_a_retry_due_now_names_its_channel_and_a_busy_line_does_not(
    harness: Harness,
) -> None:
    await harness.add(A, channel="r", next_attempt_at=_now() - timedelta(seconds=5))
    await harness.add(B, channel="s", state=State.SENDING)
    await harness.add(B, channel="s")  # waits behind the row in flight
    due = await harness.store.due_channels("", 10)
    assert due.channels == ["r"]
    assert due.next_in is None


async def test_channels_asked_about_by_name_come_after_the_cursor_s_list(
    harness: Harness,
) -> None:
    """A client's numbers the cursor's list leaves out (outbox.services.slots' client probes):
    those with a row ready or a retry due now follow the list, once each; the others do not."""
    for channel in ("a", "b", "c", "x"):
        await harness.add(A, channel=channel)
    await harness.add(A, channel="y", next_attempt_at=_now() - timedelta(seconds=5))
    await harness.add(A, channel="z", next_attempt_at=_now() + timedelta(hours=1))
    await harness.add(B, channel="w", state=State.ACCEPTED)
    due = await harness.store.due_channels("", 2, ["x", "y", "z", "w", "a", "x"])
    assert due.channels == ["a", "b", "x", "y"]


async def test_nothing_due_names_nothing(harness: Harness) -> None:
    await harness.add(A, channel="a", state=State.ACCEPTED)
    assert await harness.store.due_channels("", 10) == ([], None)


async def test_one_claim_serves_several_channels_each_within_its_bucket(harness: Harness) -> None:
    for channel in ("a", "b"):
        for recipient in (A, B, C):
            await harness.add(recipient, channel=channel)
    one_token = Limits(rate=0.5, burst=1)
    claims = await harness.store.claim_many(
        [ClaimRequest("a", 2, FAST), ClaimRequest("b", 3, one_token)], "w1", LEASE
    )
    assert [m.channel for m in claims["a"].messages] == ["a", "a"]
    assert [m.channel for m in claims["b"].messages] == ["b"]  # one token
    assert claims["b"].wait is not None
    assert claims["b"].wait > 1
    again = await harness.store.claim_many([ClaimRequest("b", 3, one_token)], "w1", LEASE)
    assert again["b"].messages == []


@pytest.mark.parametrize("paced", [False, True])
async def test_pacing_is_per_channel_in_a_claim_of_many(harness: Harness, paced: bool) -> None:
    if isinstance(harness, FakeHarness):
        pytest.skip("the fake keeps one line per recipient (no ordering_key)")
    for channel in ("a", "b"):
        await harness.add(A, channel=channel, ordering_key="x")
        await harness.add(A, channel=channel, ordering_key="y")
    limits = Limits(rate=10_000, burst=10_000, paced=paced)
    claims = await harness.store.claim_many(
        [ClaimRequest("a", 10, limits), ClaimRequest("b", 10, limits)], "w1", LEASE
    )
    # Two lines to one recipient go together unless the recipient is paced: then one each.
    assert [len(claims[c].messages) for c in ("a", "b")] == ([1, 1] if paced else [2, 2])
