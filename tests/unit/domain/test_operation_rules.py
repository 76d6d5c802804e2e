"""The operator's rules without I/O: what replay and cancel decide per row, the replay lane's
share of a claim, and the durations and times the commands accept."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from outbox.cli.render import parse_duration, parse_time
from outbox.domain.models import State
from outbox.domain.operations import (
    CANCELLABLE,
    PURGEABLE,
    PURGEABLE_ON_REQUEST,
    REPLAYABLE,
    Candidate,
    Decision,
    decide_cancel,
    decide_replay,
)
from outbox.domain.ratelimit import Limits, replay_quota

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
MARGIN = timedelta(minutes=5)
TEXT = {"type": "text", "text": {"body": "hi"}}
TEMPLATE = {"type": "template", "template": {"name": "t", "language": {"code": "en"}}}
FALLBACK = {"type": "template", "template": {"name": "fb", "language": {"code": "en"}}}
OPEN = NOW - timedelta(hours=1)  # the user wrote an hour ago
CLOSED = NOW - timedelta(hours=25)
# Inside 24 h but within the margin of its end: closed, so a message never crosses it in flight.
AT_THE_EDGE = NOW - timedelta(hours=24) + MARGIN - timedelta(seconds=1)

UNKNOWN_NOTE = "the first request may have reached the API: may arrive twice"


def candidate(**changes: Any) -> Candidate:
    base = Candidate(
        id=1,
        channel="cloud",
        recipient="4915100000001",
        state=State.FAILED,
        error_code="131026",
        attempts=1,
        expires_at=None,
        payload=TEXT,
        fallback_template=None,
        last_inbound_at=OPEN,
        reached=None,
    )
    return replace(base, **changes)


def replay(row: Candidate, *, force: bool = False, new_expiry: datetime | None = None) -> Decision:
    return decide_replay(row, now=NOW, force=force, new_expiry=new_expiry, window_margin=MARGIN)


def test_the_state_sets_are_what_the_contract_says() -> None:
    assert {State.FAILED, State.UNKNOWN, State.EXPIRED} == REPLAYABLE
    assert {State.QUEUED, State.UNKNOWN} == CANCELLABLE
    # Purge never touches a row that may still change (queued, sending, unknown) ...
    assert not (PURGEABLE | PURGEABLE_ON_REQUEST) & {State.QUEUED, State.SENDING, State.UNKNOWN}
    # ... and rows still waiting for a delivery report only when the operator says so.
    assert {State.READ, State.FAILED, State.EXPIRED, State.CANCELLED} == PURGEABLE
    assert {State.ACCEPTED, State.SENT, State.DELIVERED} == PURGEABLE_ON_REQUEST


# state: (act, reason) for an otherwise plain row (window open, nothing delivered, no expiry)
REPLAY_BY_STATE = {
    State.QUEUED: (False, "state queued is not replayable"),
    State.SENDING: (False, "state sending is not replayable"),
    State.UNKNOWN: (True, f"{UNKNOWN_NOTE}; sends as freeform"),
    State.ACCEPTED: (False, "state accepted is not replayable"),
    State.SENT: (False, "state sent is not replayable"),
    State.DELIVERED: (False, "state delivered is not replayable"),
    State.READ: (False, "state read is not replayable"),
    State.FAILED: (True, "sends as freeform"),
    State.EXPIRED: (True, "sends as freeform"),
    State.CANCELLED: (False, "state cancelled is not replayable"),
}


def test_every_state_has_a_replay_case() -> None:
    assert set(REPLAY_BY_STATE) == set(State)


@pytest.mark.parametrize(("state", "expected"), REPLAY_BY_STATE.items(), ids=str)
def test_replay_by_state(state: State, expected: tuple[bool, str]) -> None:
    assert replay(candidate(state=state)) == Decision(*expected)


# (state, error_code, twice): a row a request may have reached the API for, with no evidence
# either way, is replayed with a warning; a row that expired before any request is not.
TWICE = [
    (State.UNKNOWN, "no_response", True),
    (State.UNKNOWN, "lease_expired", True),
    (State.EXPIRED, "expired_unknown", True),
    (State.EXPIRED, "expired", False),
    (State.FAILED, "131026", False),
]


@pytest.mark.parametrize(("state", "error_code", "twice"), TWICE)
def test_a_row_whose_request_may_have_arrived_may_arrive_twice(
    state: State, error_code: str, twice: bool
) -> None:
    decision = replay(candidate(state=state, error_code=error_code))
    assert decision.act
    assert decision.twice is twice
    assert (UNKNOWN_NOTE in decision.reason) is twice


# Forcing overrides delivery evidence only; it never makes a state replayable.
@pytest.mark.parametrize("state", sorted(set(State) - REPLAYABLE), ids=str)
def test_force_does_not_widen_the_states(state: State) -> None:
    assert not replay(candidate(state=state, reached="delivered"), force=True).act


REFUSED = "it was {} per its status history (--force sends it)"

# (state, reached, force, act, reason)
EVIDENCE = [
    (State.FAILED, "sent", False, False, REFUSED.format("sent")),
    (State.FAILED, "delivered", False, False, REFUSED.format("delivered")),
    (State.FAILED, "read", False, False, REFUSED.format("read")),
    (State.EXPIRED, "delivered", False, False, REFUSED.format("delivered")),
    (State.UNKNOWN, "sent", False, False, REFUSED.format("sent")),
    (State.FAILED, "sent", True, True, "forced: it was sent; sends as freeform"),
    (State.FAILED, "delivered", True, True, "forced: it was delivered; sends as freeform"),
    (State.FAILED, "read", True, True, "forced: it was read; sends as freeform"),
    (State.UNKNOWN, "read", True, True, f"forced: it was read; {UNKNOWN_NOTE}; sends as freeform"),
    (State.FAILED, None, True, True, "sends as freeform"),  # forcing what needs no force
]


@pytest.mark.parametrize(("state", "reached", "force", "act", "reason"), EVIDENCE)
def test_delivery_evidence_needs_force(
    state: State, reached: str | None, force: bool, act: bool, reason: str
) -> None:
    assert replay(candidate(state=state, reached=reached), force=force) == Decision(act, reason)


PASSED = "expires_at has passed (--expires-in gives it a new one)"
LATER = NOW + timedelta(hours=2)
EARLIER = NOW - timedelta(minutes=1)

# (expires_at, new_expiry, act)
EXPIRY = [
    (None, None, True),
    (LATER, None, True),
    (EARLIER, None, False),
    (NOW, None, False),  # "not sent after": at the instant itself it may no longer go
    (EARLIER, LATER, True),
    (NOW, NOW + timedelta(microseconds=1), True),
    (EARLIER, EARLIER, False),  # a new expiry that has passed too gives nothing
    (LATER, EARLIER, False),  # the operator's expiry replaces the row's, even an earlier one
    (None, NOW, False),
]


@pytest.mark.parametrize(("expires_at", "new_expiry", "act"), EXPIRY)
@pytest.mark.parametrize("state", [State.EXPIRED, State.FAILED])
def test_expiry(
    state: State, expires_at: datetime | None, new_expiry: datetime | None, act: bool
) -> None:
    decision = replay(candidate(state=state, expires_at=expires_at), new_expiry=new_expiry)
    assert decision.act is act
    assert (decision.reason == PASSED) is not act


def test_refusals_come_in_order_state_then_evidence_then_expiry() -> None:
    row = candidate(state=State.SENT, reached="read", expires_at=EARLIER)
    assert replay(row).reason == "state sent is not replayable"
    row = replace(row, state=State.FAILED)
    assert replay(row).reason == REFUSED.format("read")
    # Force gets past the evidence but not past the expiry.
    assert replay(row, force=True).reason == PASSED


# (payload, fallback, last_inbound_at, reason): the window is checked as when it is sent
WINDOW = [
    (TEXT, None, OPEN, "sends as freeform"),
    (TEXT, FALLBACK, OPEN, "sends as freeform"),
    (TEXT, FALLBACK, CLOSED, "window closed: sends the fallback template"),
    (TEXT, FALLBACK, None, "window closed: sends the fallback template"),
    (TEXT, FALLBACK, AT_THE_EDGE, "window closed: sends the fallback template"),
    (TEXT, None, CLOSED, "window closed and no fallback: fails unless the user writes first"),
    (TEXT, None, None, "window closed and no fallback: fails unless the user writes first"),
    (TEXT, None, AT_THE_EDGE, "window closed and no fallback: fails unless the user writes first"),
    (TEMPLATE, None, CLOSED, "sends as template"),
    (TEMPLATE, FALLBACK, None, "sends as template"),
    ({"type": "hsm", "hsm": {}}, None, None, "sends as template"),
]


@pytest.mark.parametrize(("payload", "fallback", "last_inbound_at", "reason"), WINDOW)
def test_window(
    payload: dict[str, Any], fallback: Any, last_inbound_at: datetime | None, reason: str
) -> None:
    row = candidate(payload=payload, fallback_template=fallback, last_inbound_at=last_inbound_at)
    # A closed window without a fallback still replays: the user may write before it goes.
    assert replay(row) == Decision(True, reason)


def test_an_unknown_row_forced_to_a_closed_window_lists_every_note() -> None:
    row = candidate(state=State.UNKNOWN, reached="sent", last_inbound_at=CLOSED)
    decision = replay(row, force=True)
    assert decision == Decision(
        True,
        f"forced: it was sent; {UNKNOWN_NOTE}; "
        "window closed and no fallback: fails unless the user writes first",
    )


CANCEL_BY_STATE = {
    State.QUEUED: (True, "cancelled"),
    State.SENDING: (False, "in flight: its outcome is about to be written"),
    State.UNKNOWN: (True, "cancelled; the request already made may still be delivered"),
    State.ACCEPTED: (False, "state accepted cannot be cancelled"),
    State.SENT: (False, "state sent cannot be cancelled"),
    State.DELIVERED: (False, "state delivered cannot be cancelled"),
    State.READ: (False, "state read cannot be cancelled"),
    State.FAILED: (False, "state failed cannot be cancelled"),
    State.EXPIRED: (False, "state expired cannot be cancelled"),
    State.CANCELLED: (False, "state cancelled cannot be cancelled"),
}


def test_every_state_has_a_cancel_case() -> None:
    assert set(CANCEL_BY_STATE) == set(State)


@pytest.mark.parametrize(("state", "expected"), CANCEL_BY_STATE.items(), ids=str)
def test_cancel_by_state(state: State, expected: tuple[bool, str]) -> None:
    assert decide_cancel(candidate(state=state)) == Decision(*expected)
    # Cancelling stops what is not yet sent; evidence and expiry do not change that.
    evidence = candidate(state=state, reached="delivered", expires_at=EARLIER)
    assert decide_cancel(evidence) == Decision(*expected)


# replay_quota: how many of a claim's tokens go to the replay lane first.


def limits(share: float) -> Limits:
    return Limits(rate=100.0, burst=10.0, replay_share=share)


# (granted, share, quota): granted * share is a whole number, so no randomness is involved
EXACT = [
    (0, 0.2, 0),
    (5, 0.2, 1),
    (10, 0.2, 2),
    (15, 0.2, 3),
    (200, 0.2, 40),
    (4, 0.25, 1),
    (10, 0.5, 5),
    (7, 1.0, 7),
    (1, 1.0, 1),
    (20, 0.1, 2),
    (10, 0.3, 3),
    (10, 0.7, 7),
]


@pytest.mark.parametrize(("granted", "share", "quota"), EXACT)
@pytest.mark.parametrize("rand", [0.0, 0.2, 0.5, 0.999999])
def test_replay_quota_is_exact_for_whole_shares(
    granted: int, share: float, quota: int, rand: float
) -> None:
    assert replay_quota(granted, limits(share), rand) == quota


# (granted, share, rand, quota): the fraction is rounded up iff rand < fraction
ROUNDED = [
    (1, 0.2, 0.0, 1),
    (1, 0.2, 0.1999, 1),
    (1, 0.2, 0.2, 0),
    (1, 0.2, 0.9, 0),
    (3, 0.2, 0.59, 1),  # 0.6
    (3, 0.2, 0.61, 0),
    (7, 0.2, 0.39, 2),  # 1.4
    (7, 0.2, 0.41, 1),
    (1, 0.5, 0.49, 1),
    (1, 0.5, 0.5, 0),
    (3, 0.5, 0.0, 2),  # 1.5
    (3, 0.5, 0.75, 1),
    (9, 0.9, 0.09, 9),  # 8.1
    (9, 0.9, 0.11, 8),
    (1, 0.01, 0.0, 1),
    (1, 0.01, 0.02, 0),
]


@pytest.mark.parametrize(("granted", "share", "rand", "quota"), ROUNDED)
def test_replay_quota_rounds_the_fraction_up_with_its_probability(
    granted: int, share: float, rand: float, quota: int
) -> None:
    assert replay_quota(granted, limits(share), rand) == quota


# rand spread evenly over [0, 1): the mean quota is granted * share, however small the claim.
@pytest.mark.parametrize("share", [0.01, 0.2, 1 / 3, 0.5, 0.95, 1.0])
@pytest.mark.parametrize("granted", [1, 2, 3, 7, 10, 199])
def test_replay_quota_keeps_the_share_on_average_and_stays_within_the_grant(
    granted: int, share: float
) -> None:
    samples = 1000
    quotas = [replay_quota(granted, limits(share), (i + 0.5) / samples) for i in range(samples)]
    assert all(0 <= q <= granted for q in quotas)
    # Only the two whole numbers around the exact share ever come out.
    assert set(quotas) <= {math.floor(granted * share), math.ceil(granted * share)}
    assert sum(quotas) / samples == pytest.approx(granted * share, abs=1 / samples)


# parse_duration / parse_time: what --older-than, --expires-in, --since and --until accept.

DURATIONS = [
    ("90s", timedelta(seconds=90)),
    ("15m", timedelta(minutes=15)),
    ("12h", timedelta(hours=12)),
    ("30d", timedelta(days=30)),
    ("2w", timedelta(weeks=2)),
    ("45", timedelta(seconds=45)),  # plain seconds
    ("1.5h", timedelta(minutes=90)),
    (" 2H ", timedelta(hours=2)),
    ("0.5", timedelta(milliseconds=500)),
    ("1e2s", timedelta(seconds=100)),
]


@pytest.mark.parametrize(("value", "expected"), DURATIONS)
def test_parse_duration(value: str, expected: timedelta) -> None:
    assert parse_duration(value) == expected


BAD_DURATIONS = ["", " ", "h", "abc", "5x", "2h ago", "1h30m", "0", "0s", "-5m", "-1", "inf", "nan", "1e400"]  # fmt: skip


@pytest.mark.parametrize("value", BAD_DURATIONS)
def test_parse_duration_rejects_with_the_value_named(value: str) -> None:
    with pytest.raises(ValueError, match="duration") as caught:
        parse_duration(value)
    assert repr(value) in str(caught.value)


TIMES = [
    ("2026-01-02T03:04:05", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),  # no zone: UTC
    ("2026-01-02 03:04", datetime(2026, 1, 2, 3, 4, tzinfo=UTC)),
    ("2026-01-02", datetime(2026, 1, 2, tzinfo=UTC)),
    ("2026-01-02T03:04:05+02:00", datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)),
    ("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("2h", NOW - timedelta(hours=2)),  # a duration means that long ago
    ("30m", NOW - timedelta(minutes=30)),
    ("7d", NOW - timedelta(days=7)),
    ("90", NOW - timedelta(seconds=90)),
]


@pytest.mark.parametrize(("value", "expected"), TIMES)
def test_parse_time(value: str, expected: datetime) -> None:
    parsed = parse_time(value, NOW)
    assert parsed == expected
    assert parsed.tzinfo is not None  # compared with timestamptz columns


BAD_TIMES = ["", "yesterday", "2026-13-01", "2026-01-02T25:00", "0", "-2h", "2h ago"]


@pytest.mark.parametrize("value", BAD_TIMES)
def test_parse_time_rejects_with_the_value_named(value: str) -> None:
    with pytest.raises(ValueError, match="ISO 8601") as caught:
        parse_time(value, NOW)
    assert repr(value) in str(caught.value)


# A value too large for a timedelta or a datetime is as bad as a misspelt one: the commands
# turn ValueError into a clear message and exit 2, anything else escapes as a traceback.
@pytest.mark.parametrize(
    ("parse", "value"),
    [(parse_duration, "1e10d"), (parse_duration, "1e308w"), (parse_time, "999999d")],
)
def test_values_out_of_range_are_value_errors(parse: Any, value: str) -> None:
    with pytest.raises(ValueError, match="got"):
        parse(value, NOW) if parse is parse_time else parse(value)
