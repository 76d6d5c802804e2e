"""delivery.merge: status precedence (waba-api.md §9.3), one rule per case, and order independence."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outbox.domain.codes import WINDOW_CLOSED_CODES
from outbox.domain.delivery import Delivery, Verdict, merge
from outbox.domain.models import State
from outbox.domain.notifications import StatusUpdate

T0, T1, T2, T3 = (datetime.fromtimestamp(s, UTC) for s in (1_700_000_000, 1_700_000_100, 1_700_000_200, 1_700_000_300))  # fmt: skip


def update(
    status: str,
    at: datetime | None = None,
    code: int | None = None,
    title: str | None = None,
    detail: str | None = None,
) -> StatusUpdate:
    return StatusUpdate("wamid.x", status, at, "491234", None, code, title, detail)


QUEUED = Delivery(State.QUEUED)
ACCEPTED = Delivery(State.ACCEPTED)
SENT = Delivery(State.SENT, sent_at=T1)
DELIVERED = Delivery(State.DELIVERED, sent_at=T1, delivered_at=T2)
READ = Delivery(State.READ, sent_at=T1, delivered_at=T2, read_at=T3)
READ_ONLY = Delivery(State.READ, sent_at=T3, delivered_at=T3, read_at=T3)  # only `read` came
FAILED = Delivery(State.FAILED, sent_at=T1, failed_at=T2, error_code="131026", error_title="Undeliverable", error_detail="d")  # fmt: skip
UNDELIVERABLE = update("failed", T2, 131026, "Undeliverable", "d")

CASES: list[tuple[str, Delivery, StatusUpdate, Delivery, Verdict]] = [
    # --- a row whose send result is not committed yet
    (
        "sending + sent",
        Delivery(State.SENDING),
        update("sent", T1),
        Delivery(State.SENDING),
        Verdict.NOT_YET,
    ),
    (
        "sending + failed",
        Delivery(State.SENDING),
        update("failed", T1, 470),
        Delivery(State.SENDING),
        Verdict.NOT_YET,
    ),
    (
        "sending + deleted",
        Delivery(State.SENDING),
        update("deleted", T1),
        Delivery(State.SENDING),
        Verdict.NOT_YET,
    ),
    # --- moving up
    ("accepted + sent", ACCEPTED, update("sent", T1), SENT, Verdict.APPLIED),
    (
        "accepted + delivered fills sent_at",
        ACCEPTED,
        update("delivered", T2),
        Delivery(State.DELIVERED, sent_at=T2, delivered_at=T2),
        Verdict.APPLIED,
    ),
    (
        "accepted + read fills delivered_at and sent_at",
        ACCEPTED,
        update("read", T3),
        READ_ONLY,
        Verdict.APPLIED,
    ),
    ("sent + delivered", SENT, update("delivered", T2), DELIVERED, Verdict.APPLIED),
    (
        "sent + read fills delivered_at",
        SENT,
        update("read", T3),
        Delivery(State.READ, sent_at=T1, delivered_at=T3, read_at=T3),
        Verdict.APPLIED,
    ),
    ("delivered + read", DELIVERED, update("read", T3), READ, Verdict.APPLIED),
    (
        "read earlier than recorded delivery lowers it",
        DELIVERED,
        update("read", T1),
        Delivery(State.READ, sent_at=T1, delivered_at=T1, read_at=T1),
        Verdict.APPLIED,
    ),
    *[
        (
            f"{state} + sent: the send happened",
            Delivery(state),
            update("sent", T1),
            SENT,
            Verdict.APPLIED,
        )
        for state in (State.UNKNOWN, State.QUEUED, State.EXPIRED, State.CANCELLED)
    ],
    *[
        (f"{state} + read", Delivery(state), update("read", T3), READ_ONLY, Verdict.APPLIED)
        for state in (State.UNKNOWN, State.QUEUED, State.EXPIRED, State.CANCELLED)
    ],
    # --- the same status again
    ("sent again, same time", SENT, update("sent", T1), SENT, Verdict.DUPLICATE),
    ("sent again, later", SENT, update("sent", T2), SENT, Verdict.DUPLICATE),
    (
        "sent again, earlier time wins",
        SENT,
        update("sent", T0),
        replace(SENT, sent_at=T0),
        Verdict.APPLIED,
    ),
    ("read again, later", READ, update("read", T3 + (T3 - T2)), READ, Verdict.DUPLICATE),
    (
        "delivered again, earlier",
        DELIVERED,
        update("delivered", T1),
        replace(DELIVERED, delivered_at=T1),
        Verdict.APPLIED,
    ),
    # --- behind the row's state
    ("sent after delivered", DELIVERED, update("sent", T1), DELIVERED, Verdict.NO_DOWNGRADE),
    ("sent after read", READ, update("sent", T2), READ, Verdict.NO_DOWNGRADE),
    ("delivered after read", READ, update("delivered", T2), READ, Verdict.NO_DOWNGRADE),
    (
        "sent after read-only still records the earlier sent_at",
        READ_ONLY,
        update("sent", T1),
        replace(READ_ONLY, sent_at=T1),
        Verdict.NO_DOWNGRADE,
    ),
    (
        "delivered after read-only",
        READ_ONLY,
        update("delivered", T2),
        replace(READ_ONLY, sent_at=T2, delivered_at=T2),
        Verdict.NO_DOWNGRADE,
    ),
    # --- statuses without a timestamp: state only, never a None over a time
    ("queued + sent without time", QUEUED, update("sent"), Delivery(State.SENT), Verdict.APPLIED),
    ("sent + sent without time", SENT, update("sent"), SENT, Verdict.DUPLICATE),
    (
        "delivered + read without time",
        DELIVERED,
        update("read"),
        replace(DELIVERED, state=State.READ),
        Verdict.APPLIED,
    ),
    ("read + delivered without time", READ, update("delivered"), READ, Verdict.NO_DOWNGRADE),
    (
        "sent + failed without time",
        SENT,
        update("failed", None, 480, "t"),
        replace(SENT, state=State.FAILED, error_code="480", error_title="t"),
        Verdict.APPLIED,
    ),
    # --- not delivery statuses
    *[
        (f"{value} on {row.state}", row, update(value, T3), row, Verdict.NOT_DELIVERY)
        for value in ("deleted", "warning", "in_orbit", "")
        for row in (ACCEPTED, SENT, READ, FAILED)
    ],
    # --- failures
    ("sent + failed", SENT, UNDELIVERABLE, FAILED, Verdict.APPLIED),
    ("accepted + failed", ACCEPTED, UNDELIVERABLE, replace(FAILED, sent_at=None), Verdict.APPLIED),
    *[
        (
            f"{state} + failed",
            Delivery(state),
            UNDELIVERABLE,
            replace(FAILED, sent_at=None),
            Verdict.APPLIED,
        )
        for state in (State.UNKNOWN, State.QUEUED, State.EXPIRED, State.CANCELLED)
    ],
    (
        "failed without a code",
        SENT,
        update("failed", T2),
        replace(SENT, state=State.FAILED, failed_at=T2, error_code="status_failed"),
        Verdict.APPLIED,
    ),
    ("failed again, same code and time", FAILED, UNDELIVERABLE, FAILED, Verdict.DUPLICATE),
    (
        "failed again, same code, later",
        FAILED,
        replace(UNDELIVERABLE, at=T3),
        FAILED,
        Verdict.DUPLICATE,
    ),
    (
        "failed again, same code, earlier",
        FAILED,
        replace(UNDELIVERABLE, at=T1),
        replace(FAILED, failed_at=T1),
        Verdict.APPLIED,
    ),
    (
        "failed again, other code, later: the first failure stays",
        FAILED,
        update("failed", T3, 131014, "Media"),
        FAILED,
        Verdict.DUPLICATE,
    ),
    (
        "failed again, other code, earlier: it replaces",
        FAILED,
        update("failed", T1, 131014, "Media"),
        replace(FAILED, failed_at=T1, error_code="131014", error_title="Media", error_detail=None),
        Verdict.APPLIED,
    ),
    (
        "failure replaces an error left by a send attempt",
        Delivery(State.SENT, sent_at=T1, error_code="http_503"),
        UNDELIVERABLE,
        FAILED,
        Verdict.APPLIED,
    ),
    (
        "a failure time without an error counts as a failure without a code",
        Delivery(State.SENT, failed_at=T1),
        UNDELIVERABLE,
        Delivery(State.FAILED, failed_at=T1),
        Verdict.APPLIED,
    ),
    # --- failures after delivery: state kept, error recorded for the audit trail
    (
        "failed after delivered",
        DELIVERED,
        UNDELIVERABLE,
        replace(
            DELIVERED,
            failed_at=T2,
            error_code="131026",
            error_title="Undeliverable",
            error_detail="d",
        ),
        Verdict.NO_DOWNGRADE,
    ),
    (
        "failed after read",
        READ,
        UNDELIVERABLE,
        replace(
            READ, failed_at=T2, error_code="131026", error_title="Undeliverable", error_detail="d"
        ),
        Verdict.NO_DOWNGRADE,
    ),
    (
        "470 after read is no window signal",
        READ,
        update("failed", T2, 470),
        replace(READ, failed_at=T2, error_code="470"),
        Verdict.NO_DOWNGRADE,
    ),
    # --- evidence of delivery wins over a failure; the error stays for audit
    (
        "failed + delivered",
        FAILED,
        update("delivered", T3),
        replace(FAILED, state=State.DELIVERED, delivered_at=T3),
        Verdict.APPLIED,
    ),
    (
        "failed + read",
        FAILED,
        update("read", T3),
        replace(FAILED, state=State.READ, delivered_at=T3, read_at=T3),
        Verdict.APPLIED,
    ),
    (
        "failed + sent stays failed",
        replace(FAILED, sent_at=None),
        update("sent", T1),
        FAILED,
        Verdict.NO_DOWNGRADE,
    ),
    # --- the 24h window closed before delivery: the caller decides
    *[
        (
            f"{code} on {row.state}",
            row,
            update("failed", T2, code, "Re-engagement message"),
            row,
            Verdict.WINDOW_CLOSED,
        )
        for code in sorted(WINDOW_CLOSED_CODES)
        for row in (ACCEPTED, SENT, Delivery(State.UNKNOWN), FAILED)
    ],
]


@pytest.mark.parametrize(("current", "status", "expected", "verdict"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])  # fmt: skip
def test_merge(
    current: Delivery, status: StatusUpdate, expected: Delivery, verdict: Verdict
) -> None:
    assert merge(current, status) == (expected, verdict)


TIMES = st.sampled_from([None, T0, T1, T2, T3])
TEXTS = st.sampled_from([None, "a", "b"])
STARTS = st.builds(
    Delivery,
    state=st.sampled_from([s for s in State if s is not State.SENDING]),
    sent_at=TIMES,
    delivered_at=TIMES,
    read_at=TIMES,
    failed_at=TIMES,
    error_code=st.sampled_from([None, "131026", "http_503", "status_failed"]),
    error_title=TEXTS,
    error_detail=TEXTS,
)
UPDATES = st.builds(
    update,
    status=st.sampled_from(["sent", "delivered", "read", "failed", "deleted", "warning", "in_orbit"]),
    at=TIMES,
    code=st.sampled_from([None, 131026, 480, 131014]),  # no WINDOW_CLOSED codes: the caller acts on those
    title=TEXTS,
    detail=TEXTS,
)  # fmt: skip


def fold(start: Delivery, updates: list[StatusUpdate]) -> Delivery:
    for u in updates:
        start, _ = merge(start, u)
    return start


@given(STARTS, st.lists(UPDATES, max_size=6), st.data())
def test_any_order_gives_the_same_delivery(
    start: Delivery, updates: list[StatusUpdate], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(updates))
    assert fold(start, shuffled) == fold(start, updates)


@given(STARTS, UPDATES)
def test_verdict_matches_the_change_and_replays_change_nothing(
    start: Delivery, status: StatusUpdate
) -> None:
    merged, verdict = merge(start, status)
    if verdict is Verdict.APPLIED:
        assert merged != start
    if verdict in {Verdict.DUPLICATE, Verdict.NOT_DELIVERY}:
        assert merged == start
    again, second = merge(merged, status)
    assert again == merged
    assert second is not Verdict.APPLIED
