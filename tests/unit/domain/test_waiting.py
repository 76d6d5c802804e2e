"""`outbox show`'s "waits for": the first thing that holds a queued row back."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from outbox.domain.waiting import Waiting, waits_for

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)
QUEUED = Waiting("queued", NOW, send_after=NOW - timedelta(minutes=1))

CASES = {
    "not-queued": (replace(QUEUED, state="accepted"), None),
    "due-now": (QUEUED, "nothing: due now (next claim)"),
    "head-retrying": (
        replace(QUEUED, head_id=41, head_state="queued", head_next_attempt_at=LATER),
        "message 41 ahead in its line (queued, next attempt 2026-12-06T12:05:00+00:00)",
    ),
    "head-unknown": (
        replace(QUEUED, head_id=41, head_state="unknown"),
        "message 41 ahead in its line (unknown)",
    ),
    "head-wins-over-own-schedule": (
        replace(QUEUED, head_id=41, head_state="sending", next_attempt_at=LATER),
        "message 41 ahead in its line (sending)",
    ),
    "newer-in-flight": (
        replace(QUEUED, in_flight_id=43),
        "message 43, newer in its line, in flight",
    ),
    "own-send-after": (
        replace(QUEUED, send_after=LATER, next_attempt_at=LATER),
        "its send_after at 2026-12-06T12:05:00+00:00",
    ),
    "own-retry": (
        replace(QUEUED, next_attempt_at=LATER),
        "its retry at 2026-12-06T12:05:00+00:00",
    ),
    "pace": (
        replace(QUEUED, pace_until=LATER),
        "its recipient's pace until 2026-12-06T12:05:00+00:00",
    ),
    "past-pace": (replace(QUEUED, pace_until=NOW), "nothing: due now (next claim)"),
    # Issue 18: a paused template's row; the channel's marketing hold.
    "paused-template": (
        replace(QUEUED, next_attempt_at=LATER, held_template="promo (en_US, PAUSED)"),
        "template promo (en_US, PAUSED) to be active again",
    ),
    "marketing-hold": (
        replace(QUEUED, next_attempt_at=LATER, marketing_held=True),
        "the channel's marketing hold (131048) until 2026-12-06T12:05:00+00:00",
    ),
    "marketing-hold-over": (
        replace(QUEUED, next_attempt_at=NOW, marketing_held=True),
        "nothing: due now (next claim)",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_waits_for(case: str) -> None:
    waiting, expected = CASES[case]
    assert waits_for(waiting) == expected
