"""reconcile.plan_statuses: which row a status names, what it does to it, and what waits (no I/O)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outbox.domain.delivery import Delivery, Verdict, merge
from outbox.domain.digest import Located
from outbox.domain.models import SentAs, State
from outbox.domain.notifications import StatusUpdate
from outbox.domain.outcome import WINDOW_CLOSED, WINDOW_CLOSED_TITLE
from outbox.domain.reconcile import (
    FALLBACK,
    SUPERSEDED,
    EarlierSend,
    HistoryEntry,
    RowChange,
    Target,
    plan_statuses,
)

NOW, T1, T2, T3, T4 = (datetime.fromtimestamp(s, UTC) for s in (1_800_000_000, 1_700_000_100, 1_700_000_200, 1_700_000_300, 1_700_000_400))  # fmt: skip
EVENT = 77  # webhook_event_id of the statuses that come straight from a webhook row
FALLBACK_TITLE = "the 24-hour window was closed: sending the fallback_template next"
FALLBACK_FAILED_TITLE = "the 24-hour window was closed and the fallback_template failed too"


def status(
    wamid: str,
    value: str,
    at: datetime | None = T1,
    *,
    outbox_id: int | None = None,
    code: int | None = None,
    title: str | None = None,
    detail: str | None = None,
) -> StatusUpdate:
    return StatusUpdate(wamid, value, at, "491234", outbox_id, code, title, detail)


def located(
    update: StatusUpdate,
    channel: str = "a",
    event: int | None = EVENT,
    parked_id: int | None = None,
    *,
    authenticated: bool = True,
) -> Located:
    return Located(channel, update, event, parked_id, authenticated)


def row(
    id: int = 1,
    wamid: str | None = "W",
    delivery: Delivery = Delivery(State.ACCEPTED),
    *,
    channel: str = "a",
    sent_as: SentAs | None = SentAs.FREEFORM,
    fallback: bool = False,
) -> Target:
    return Target(id, channel, wamid, sent_as, fallback, delivery)


def entry(
    update: StatusUpdate,
    verdict: str,
    message_id: int = 1,
    event: int | None = EVENT,
    at: datetime | None = None,
) -> HistoryEntry:
    """The history entry the test expects; `at` only when it is not the status' own time."""
    return HistoryEntry(
        message_id,
        update.wamid,
        update.status,
        at or update.at or T4,  # T4: never a right answer, so a forgotten `at` fails
        verdict,
        None if update.error_code is None else str(update.error_code),
        update.error_title,
        update.error_detail,
        event,
    )


@dataclass(frozen=True)
class Case:
    statuses: list[Located]
    targets: list[Target]
    changes: dict[int, RowChange] = field(default_factory=dict)
    history: list[HistoryEntry] = field(default_factory=list)
    park: list[Located] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)
    verdicts: dict[tuple[str, str], int] = field(default_factory=dict)
    ended: list[EarlierSend] = field(default_factory=list)


ACCEPTED = Delivery(State.ACCEPTED)
SENT = Delivery(State.SENT, sent_at=T1)
DELIVERED = Delivery(State.DELIVERED, sent_at=T1, delivered_at=T2)
READ = Delivery(State.READ, sent_at=T1, delivered_at=T2, read_at=T3)
UNDELIVERABLE = Delivery(State.FAILED, sent_at=T1, failed_at=T2, error_code="131026", error_title="Undeliverable", error_detail="d")  # fmt: skip
CLOSED = Delivery(State.FAILED, failed_at=T1, error_code=WINDOW_CLOSED, error_title=FALLBACK_FAILED_TITLE, error_detail="status failed with error 470: Re-engagement")  # fmt: skip

SENT_W = status("W", "sent")
SENT_W_BY_ID = status("W", "sent", outbox_id=1)
DELIVERED_W = status("W", "delivered", T2)
READ_W = status("W", "read", T3)
R470 = status("W", "failed", T2, code=470, title="Re-engagement", detail="24h")
R131047 = status("W", "failed", T2, code=131047, title="Re-engagement")
R470_LATE = status("W", "failed", T3, code=470, title="Re-engagement")
R470_EARLY = status("W", "failed", T1, code=470, title="Re-engagement")
FAILED_W = status("W", "failed", T2, code=131026, title="Undeliverable", detail="d")
PARKED = located(SENT_W, event=None, parked_id=5)


# The free-form send a window refusal ended, kept in the row's history.
W_ENDED = EarlierSend(1, "W", SentAs.FREEFORM, None)


def earlier(target: Target, *ids: str) -> Target:
    return replace(target, earlier=frozenset(ids))


def applied(update: StatusUpdate, message_id: int = 1) -> HistoryEntry:
    return entry(update, "applied", message_id)


def requeued(delivery: Delivery, code: int, title: str) -> RowChange:
    return RowChange(
        replace(
            delivery,
            state=State.QUEUED,
            error_code=WINDOW_CLOSED,
            error_title=FALLBACK_TITLE,
            error_detail=f"status failed with error {code}: {title}",
        ),
        "W",
        SentAs.FALLBACK_TEMPLATE,
        requeue=True,
    )


CASES: dict[str, Case] = {
    # --- which row a status names
    "by wamid": Case(
        [located(SENT_W)],
        [row()],
        {1: RowChange(SENT, "W", SentAs.FREEFORM)},
        [applied(SENT_W)],
        verdicts={("a", "applied"): 1},
    ),
    "by wamid, though the outbox id names another row": Case(
        [located(status("W", "sent", outbox_id=2))],
        [row(1), row(2, None, Delivery(State.UNKNOWN))],
        {1: RowChange(SENT, "W", SentAs.FREEFORM)},
        [applied(status("W", "sent", outbox_id=2))],
        verdicts={("a", "applied"): 1},
    ),
    "by outbox id when no row has the wamid": Case(
        [located(SENT_W_BY_ID)],
        [row(1, None, Delivery(State.UNKNOWN, error_code="no_response"))],
        {1: RowChange(replace(SENT, error_code="no_response"), "W", SentAs.FREEFORM)},
        [applied(SENT_W_BY_ID)],
        verdicts={("a", "applied"): 1},
    ),
    "by outbox id: a queued row without wamid takes the status' state and wamid": Case(
        [located(SENT_W_BY_ID)],
        [row(1, None, Delivery(State.QUEUED))],
        {1: RowChange(SENT, "W", SentAs.FREEFORM)},
        [applied(SENT_W_BY_ID)],
        verdicts={("a", "applied"): 1},
    ),
    "by outbox id: an unknown row takes a failure": Case(
        [located(replace(FAILED_W, outbox_id=1))],
        [row(1, None, Delivery(State.UNKNOWN))],
        {1: RowChange(replace(UNDELIVERABLE, sent_at=None), "W", SentAs.FREEFORM)},
        [applied(replace(FAILED_W, outbox_id=1))],
        verdicts={("a", "applied"): 1},
    ),
    # An unauthenticated body (webhook_auth = "none") could name any row by its sequential id.
    "unauthenticated: never by outbox id, the unknown row stays for its policy": Case(
        [located(SENT_W_BY_ID, authenticated=False)],
        [row(1, None, Delivery(State.UNKNOWN, error_code="no_response"))],
        park=[located(SENT_W_BY_ID, authenticated=False)],
        verdicts={("a", "parked"): 1},
    ),
    "unauthenticated: never by outbox id, even for a row still sending": Case(
        [located(SENT_W_BY_ID, authenticated=False)],
        [row(1, None, Delivery(State.SENDING))],
        park=[located(SENT_W_BY_ID, authenticated=False)],
        verdicts={("a", "parked"): 1},
    ),
    "unauthenticated: by wamid as any status": Case(
        [located(SENT_W_BY_ID, authenticated=False)],
        [row()],
        {1: RowChange(SENT, "W", SentAs.FREEFORM)},
        [applied(SENT_W_BY_ID)],
        verdicts={("a", "applied"): 1},
    ),
    "no outbox id and no wamid match: parked": Case(
        [located(SENT_W)],
        [row(1, None, Delivery(State.UNKNOWN))],
        park=[located(SENT_W)],
        verdicts={("a", "parked"): 1},
    ),
    "no row at all: parked": Case(
        [located(SENT_W_BY_ID)],
        [],
        park=[located(SENT_W_BY_ID)],
        verdicts={("a", "parked"): 1},
    ),
    "parked counts per channel": Case(
        [located(SENT_W, "a"), located(DELIVERED_W, "b"), located(READ_W, "b")],
        [],
        park=[located(SENT_W, "a"), located(DELIVERED_W, "b"), located(READ_W, "b")],
        verdicts={("a", "parked"): 1, ("b", "parked"): 2},
    ),
    "wamid of a row of another channel: parked": Case(
        [located(SENT_W, "a")],
        [row(1, "W", channel="b")],
        park=[located(SENT_W, "a")],
        verdicts={("a", "parked"): 1},
    ),
    "outbox id of a row of another channel: parked": Case(
        [located(SENT_W_BY_ID, "a")],
        [row(1, None, Delivery(State.UNKNOWN), channel="b")],
        park=[located(SENT_W_BY_ID, "a")],
        verdicts={("a", "parked"): 1},
    ),
    "each channel finds its own row by outbox id": Case(
        [located(SENT_W_BY_ID, "b")],
        [
            row(1, None, Delivery(State.UNKNOWN), channel="a"),
            row(1, None, Delivery(State.UNKNOWN), channel="b"),
        ],
        {1: RowChange(SENT, "W", SentAs.FREEFORM)},
        [applied(SENT_W_BY_ID)],
        verdicts={("b", "applied"): 1},
    ),
    "wamid owned by a row of another channel is not handed to the outbox id's row": Case(
        [located(SENT_W_BY_ID, "a")],
        [row(1, None, Delivery(State.UNKNOWN), channel="a"), row(2, "W", channel="b")],
        park=[located(SENT_W_BY_ID, "a")],
        verdicts={("a", "parked"): 1},
    ),
    # --- rows a status must not change
    "sending, found by outbox id: parked, no history": Case(
        [located(SENT_W_BY_ID)],
        [row(1, None, Delivery(State.SENDING))],
        park=[located(SENT_W_BY_ID)],
        verdicts={("a", "parked"): 1},
    ),
    "sending, found by the wamid of its earlier send: parked": Case(
        [located(R470)],
        [row(1, "W", Delivery(State.SENDING), sent_as=SentAs.FALLBACK_TEMPLATE, fallback=True)],
        park=[located(R470)],
        verdicts={("a", "parked"): 1},
    ),
    "another wamid than the row's: superseded": Case(
        [located(status("OLD", "delivered", outbox_id=1))],
        [row(1, "W", SENT)],
        history=[entry(status("OLD", "delivered", outbox_id=1), SUPERSEDED)],
        verdicts={("a", SUPERSEDED): 1},
    ),
    "queued with the status' wamid, waiting to go out again: superseded": Case(
        [located(DELIVERED_W)],
        [row(1, "W", Delivery(State.QUEUED), sent_as=SentAs.FALLBACK_TEMPLATE, fallback=True)],
        history=[entry(DELIVERED_W, SUPERSEDED)],
        verdicts={("a", SUPERSEDED): 1},
    ),
    "queued with another wamid, found by outbox id: superseded": Case(
        [located(status("NEW", "sent", outbox_id=1))],
        [row(1, "W", Delivery(State.QUEUED), sent_as=SentAs.FALLBACK_TEMPLATE, fallback=True)],
        history=[entry(status("NEW", "sent", outbox_id=1), SUPERSEDED)],
        verdicts={("a", SUPERSEDED): 1},
    ),
    # --- a row sent again: its earlier sends' ids (outbox.message_sends) are not its current
    "unknown after a resend, a status of an earlier send by its wamid: superseded": Case(
        [located(status("OLD", "sent"))],
        [earlier(row(1, None, Delivery(State.UNKNOWN)), "OLD")],
        history=[entry(status("OLD", "sent"), SUPERSEDED)],
        verdicts={("a", SUPERSEDED): 1},
    ),
    "unknown after a resend, an earlier send's status by outbox id: superseded": Case(
        [located(status("OLD", "read", outbox_id=1))],
        [earlier(row(1, None, Delivery(State.UNKNOWN)), "OLD")],
        history=[entry(status("OLD", "read", outbox_id=1), SUPERSEDED)],
        verdicts={("a", SUPERSEDED): 1},
    ),
    "unknown after a resend, the new send's status by outbox id: settles the row": Case(
        [located(SENT_W_BY_ID)],
        [earlier(row(1, None, Delivery(State.UNKNOWN)), "OLD")],
        {1: RowChange(SENT, "W", SentAs.FREEFORM)},
        [applied(SENT_W_BY_ID)],
        verdicts={("a", "applied"): 1},
    ),
    "accepted after a resend, an earlier send's late status: superseded": Case(
        [located(status("OLD", "delivered", T2))],
        [earlier(row(1, "W", ACCEPTED), "OLD")],
        history=[entry(status("OLD", "delivered", T2), SUPERSEDED)],
        verdicts={("a", SUPERSEDED): 1},
    ),
    "an earlier id of one row, with another row's outbox id: the row that had it": Case(
        [located(status("OLD", "sent", outbox_id=2))],
        [earlier(row(1, "W", SENT), "OLD"), row(2, None, Delivery(State.UNKNOWN))],
        history=[entry(status("OLD", "sent", outbox_id=2), SUPERSEDED)],
        verdicts={("a", SUPERSEDED): 1},
    ),
    "a window refusal by an earlier send's id: superseded, no second fallback": Case(
        [located(replace(R470, wamid="OLD"))],
        [
            earlier(
                row(
                    1,
                    None,
                    Delivery(State.UNKNOWN),
                    sent_as=SentAs.FALLBACK_TEMPLATE,
                    fallback=True,
                ),
                "OLD",
            )
        ],
        history=[entry(replace(R470, wamid="OLD"), SUPERSEDED)],
        verdicts={("a", SUPERSEDED): 1},
    ),
    # --- delivery progress (delivery.merge)
    "delivered after sent": Case(
        [located(DELIVERED_W)],
        [row(1, "W", SENT)],
        {1: RowChange(DELIVERED, "W", SentAs.FREEFORM)},
        [applied(DELIVERED_W)],
        verdicts={("a", "applied"): 1},
    ),
    "read on an accepted row fills every earlier time": Case(
        [located(READ_W)],
        [row(1, "W", ACCEPTED, sent_as=SentAs.TEMPLATE)],
        {
            1: RowChange(
                Delivery(State.READ, sent_at=T3, delivered_at=T3, read_at=T3), "W", SentAs.TEMPLATE
            )
        },
        [applied(READ_W)],
        verdicts={("a", "applied"): 1},
    ),
    "same status again: duplicate, no change": Case(
        [located(SENT_W)],
        [row(1, "W", SENT)],
        history=[entry(SENT_W, "duplicate")],
        verdicts={("a", "duplicate"): 1},
    ),
    "an older status, no earlier time: no_downgrade, no change": Case(
        [located(status("W", "sent", T2))],
        [row(1, "W", DELIVERED)],
        history=[entry(status("W", "sent", T2), "no_downgrade")],
        verdicts={("a", "no_downgrade"): 1},
    ),
    "an older status with an earlier time: no_downgrade, the time is kept": Case(
        [located(status("W", "sent", T1))],
        [row(1, "W", replace(DELIVERED, sent_at=T2))],
        {1: RowChange(replace(DELIVERED, sent_at=T1), "W", SentAs.FREEFORM)},
        [entry(status("W", "sent", T1), "no_downgrade")],
        verdicts={("a", "no_downgrade"): 1},
    ),
    "deleted: recorded only": Case(
        [located(status("W", "deleted"))],
        [row(1, "W", DELIVERED)],
        history=[entry(status("W", "deleted"), "not_delivery")],
        verdicts={("a", "not_delivery"): 1},
    ),
    "deleted by outbox id on an unknown row: binds the wamid, state kept": Case(
        [located(status("W", "deleted", outbox_id=1))],
        [row(1, None, Delivery(State.UNKNOWN))],
        {1: RowChange(Delivery(State.UNKNOWN), "W", SentAs.FREEFORM)},
        [entry(status("W", "deleted", outbox_id=1), "not_delivery")],
        verdicts={("a", "not_delivery"): 1},
    ),
    "failed with a code": Case(
        [located(FAILED_W)],
        [row(1, "W", SENT)],
        {1: RowChange(UNDELIVERABLE, "W", SentAs.FREEFORM)},
        [applied(FAILED_W)],
        verdicts={("a", "applied"): 1},
    ),
    "failed without a code: status_failed on the row, none in history": Case(
        [located(status("W", "failed", T2))],
        [row(1, "W", SENT)],
        {
            1: RowChange(
                Delivery(State.FAILED, sent_at=T1, failed_at=T2, error_code="status_failed"),
                "W",
                SentAs.FREEFORM,
            )
        },
        [applied(status("W", "failed", T2))],
        verdicts={("a", "applied"): 1},
    ),
    # --- window closed (470 / 131047)
    "470 on a freeform row with a fallback: back to the queue as the fallback": Case(
        [located(R470)],
        [row(1, "W", SENT, fallback=True)],
        {1: requeued(SENT, 470, "Re-engagement")},
        [entry(R470, FALLBACK)],
        verdicts={("a", FALLBACK): 1},
        ended=[W_ENDED],
    ),
    "131047 on an accepted freeform row with a fallback": Case(
        [located(R131047)],
        [row(1, "W", ACCEPTED, fallback=True)],
        {1: requeued(ACCEPTED, 131047, "Re-engagement")},
        [entry(R131047, FALLBACK)],
        verdicts={("a", FALLBACK): 1},
        ended=[W_ENDED],
    ),
    "470 by outbox id on an unknown freeform row with a fallback": Case(
        [located(replace(R470, outbox_id=1))],
        [row(1, None, Delivery(State.UNKNOWN), fallback=True)],
        {1: requeued(Delivery(State.UNKNOWN), 470, "Re-engagement")},
        [entry(replace(R470, outbox_id=1), FALLBACK)],
        verdicts={("a", FALLBACK): 1},
        ended=[W_ENDED],
    ),
    "470 then more statuses of that send in the batch: superseded": Case(
        [located(R470), located(R131047), located(DELIVERED_W)],
        [row(1, "W", SENT, fallback=True)],
        {1: requeued(SENT, 470, "Re-engagement")},
        [entry(R470, FALLBACK), entry(R131047, SUPERSEDED), entry(DELIVERED_W, SUPERSEDED)],
        verdicts={("a", FALLBACK): 1, ("a", SUPERSEDED): 2},
        ended=[W_ENDED],
    ),
    "470 on a freeform row without fallback: failed": Case(
        [located(R470)],
        [row(1, "W", SENT)],
        {
            1: RowChange(
                replace(
                    SENT,
                    state=State.FAILED,
                    failed_at=T2,
                    error_code=WINDOW_CLOSED,
                    error_title=WINDOW_CLOSED_TITLE,
                    error_detail="status failed with error 470: Re-engagement",
                ),
                "W",
                SentAs.FREEFORM,
            )
        },
        [applied(R470)],
        verdicts={("a", "applied"): 1},
    ),
    "470 on a template row with a fallback: failed, no fallback": Case(
        [located(R470)],
        [row(1, "W", ACCEPTED, sent_as=SentAs.TEMPLATE, fallback=True)],
        {1: RowChange(replace(CLOSED, failed_at=T2), "W", SentAs.TEMPLATE)},
        [applied(R470)],
        verdicts={("a", "applied"): 1},
    ),
    "470 on the fallback itself: failed": Case(
        [located(R470_EARLY)],
        [row(1, "W", ACCEPTED, sent_as=SentAs.FALLBACK_TEMPLATE, fallback=True)],
        {1: RowChange(CLOSED, "W", SentAs.FALLBACK_TEMPLATE)},
        [applied(R470_EARLY)],
        verdicts={("a", "applied"): 1},
    ),
    "470 without a time: failed_at stays empty, history at now": Case(
        [located(replace(R470, at=None))],
        [row(1, "W", ACCEPTED, sent_as=SentAs.FALLBACK_TEMPLATE)],
        {1: RowChange(replace(CLOSED, failed_at=None), "W", SentAs.FALLBACK_TEMPLATE)},
        [entry(replace(R470, at=None), "applied", at=NOW)],
        verdicts={("a", "applied"): 1},
    ),
    "470 on a row failed earlier: the earliest failure time": Case(
        [located(R470_EARLY)],
        [row(1, "W", replace(UNDELIVERABLE, failed_at=T3), sent_as=SentAs.TEMPLATE)],
        {
            1: RowChange(
                replace(
                    UNDELIVERABLE,
                    failed_at=T1,
                    error_code=WINDOW_CLOSED,
                    error_title=FALLBACK_FAILED_TITLE,
                    error_detail="status failed with error 470: Re-engagement",
                ),
                "W",
                SentAs.TEMPLATE,
            )
        },
        [applied(R470_EARLY)],
        verdicts={("a", "applied"): 1},
    ),
    "470 later than an earlier failure: the earlier time is kept": Case(
        [located(R470_LATE)],
        [row(1, "W", replace(UNDELIVERABLE, failed_at=T2), sent_as=SentAs.TEMPLATE)],
        {
            1: RowChange(
                replace(
                    UNDELIVERABLE,
                    error_code=WINDOW_CLOSED,
                    error_title=FALLBACK_FAILED_TITLE,
                    error_detail="status failed with error 470: Re-engagement",
                ),
                "W",
                SentAs.TEMPLATE,
            )
        },
        [applied(R470_LATE)],
        verdicts={("a", "applied"): 1},
    ),
    "470 without a time on a row failed earlier: that time is kept": Case(
        [located(replace(R470_LATE, at=None))],
        [row(1, "W", UNDELIVERABLE, sent_as=SentAs.TEMPLATE)],
        {
            1: RowChange(
                replace(
                    UNDELIVERABLE,
                    error_code=WINDOW_CLOSED,
                    error_title=FALLBACK_FAILED_TITLE,
                    error_detail="status failed with error 470: Re-engagement",
                ),
                "W",
                SentAs.TEMPLATE,
            )
        },
        [entry(replace(R470_LATE, at=None), "applied", at=NOW)],
        verdicts={("a", "applied"): 1},
    ),
    "470 again on a row failed window_closed: duplicate": Case(
        [located(R470_LATE)],
        [row(1, "W", CLOSED, sent_as=SentAs.FALLBACK_TEMPLATE, fallback=True)],
        history=[entry(R470_LATE, "duplicate")],
        verdicts={("a", "duplicate"): 1},
    ),
    "470 twice in one batch on a row without fallback: applied, then duplicate": Case(
        [located(R470_EARLY), located(R470_LATE)],
        [row(1, "W", ACCEPTED, sent_as=SentAs.FALLBACK_TEMPLATE)],
        {1: RowChange(CLOSED, "W", SentAs.FALLBACK_TEMPLATE)},
        [applied(R470_EARLY), entry(R470_LATE, "duplicate")],
        verdicts={("a", "applied"): 1, ("a", "duplicate"): 1},
    ),
    "470 after delivery: no_downgrade, the error kept for the record": Case(
        [located(R470)],
        [row(1, "W", replace(DELIVERED, delivered_at=T1), fallback=True)],
        {
            1: RowChange(
                replace(
                    DELIVERED,
                    delivered_at=T1,
                    failed_at=T2,
                    error_code="470",
                    error_title="Re-engagement",
                    error_detail="24h",
                ),
                "W",
                SentAs.FREEFORM,
            )
        },
        [entry(R470, "no_downgrade")],
        verdicts={("a", "no_downgrade"): 1},
    ),
    # --- parked statuses, retried
    "parked status finds its row: resolved": Case(
        [PARKED],
        [row()],
        {1: RowChange(SENT, "W", SentAs.FREEFORM)},
        [entry(SENT_W, "applied", event=None)],
        resolved=[5],
        verdicts={("a", "applied"): 1},
    ),
    "parked status finds its row, only to be superseded: resolved": Case(
        [located(SENT_W_BY_ID, event=None, parked_id=5)],
        [row(1, "NEW", SENT)],
        history=[entry(SENT_W_BY_ID, SUPERSEDED, event=None)],
        resolved=[5],
        verdicts={("a", SUPERSEDED): 1},
    ),
    "parked status, still no row: parked again": Case(
        [PARKED],
        [],
        park=[PARKED],
        verdicts={("a", "parked"): 1},
    ),
    "parked status, row still sending: parked again": Case(
        [located(SENT_W_BY_ID, event=None, parked_id=5)],
        [row(1, None, Delivery(State.SENDING))],
        park=[located(SENT_W_BY_ID, event=None, parked_id=5)],
        verdicts={("a", "parked"): 1},
    ),
    # --- history details
    "no time on the status: history at now": Case(
        [located(status("W", "delivered", None))],
        [row(1, "W", SENT)],
        {1: RowChange(replace(SENT, state=State.DELIVERED), "W", SentAs.FREEFORM)},
        [entry(status("W", "delivered", None), "applied", at=NOW)],
        verdicts={("a", "applied"): 1},
    ),
    "history keeps the status' error title and detail, and the code as text": Case(
        [located(status("W", "failed", T2, code=7, title="T", detail="D"))],
        [row(1, "W", SENT)],
        {
            1: RowChange(
                replace(
                    SENT,
                    state=State.FAILED,
                    failed_at=T2,
                    error_code="7",
                    error_title="T",
                    error_detail="D",
                ),
                "W",
                SentAs.FREEFORM,
            )
        },
        [HistoryEntry(1, "W", "failed", T2, "applied", "7", "T", "D", EVENT)],
        verdicts={("a", "applied"): 1},
    ),
    # --- several statuses in one batch
    "sent, delivered, read for one row: one change, three entries": Case(
        [located(SENT_W), located(DELIVERED_W), located(READ_W)],
        [row()],
        {1: RowChange(READ, "W", SentAs.FREEFORM)},
        [applied(SENT_W), applied(DELIVERED_W), applied(READ_W)],
        verdicts={("a", "applied"): 3},
    ),
    "read, delivered, sent: the same change, later ones bring only times": Case(
        [located(READ_W), located(DELIVERED_W), located(SENT_W)],
        [row()],
        {1: RowChange(READ, "W", SentAs.FREEFORM)},
        [applied(READ_W), entry(DELIVERED_W, "no_downgrade"), entry(SENT_W, "no_downgrade")],
        verdicts={("a", "applied"): 1, ("a", "no_downgrade"): 2},
    ),
    "by outbox id, then again by outbox id: the bound row folds on": Case(
        [located(SENT_W_BY_ID), located(replace(DELIVERED_W, outbox_id=1))],
        [row(1, None, Delivery(State.UNKNOWN))],
        {1: RowChange(DELIVERED, "W", SentAs.FREEFORM)},
        [applied(SENT_W_BY_ID), applied(replace(DELIVERED_W, outbox_id=1))],
        verdicts={("a", "applied"): 2},
    ),
    "two rows, two channels, a park: each on its own": Case(
        [located(SENT_W), located(status("X", "read", T3), "b"), located(status("Y", "sent"))],
        [row(1, "W"), row(2, "X", SENT, channel="b")],
        {
            1: RowChange(SENT, "W", SentAs.FREEFORM),
            2: RowChange(
                replace(SENT, state=State.READ, delivered_at=T3, read_at=T3), "X", SentAs.FREEFORM
            ),
        },
        [applied(SENT_W), applied(status("X", "read", T3), 2)],
        [located(status("Y", "sent"))],
        verdicts={("a", "applied"): 1, ("b", "applied"): 1, ("a", "parked"): 1},
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_plan(case: Case) -> None:
    plan = plan_statuses(case.statuses, case.targets, NOW)
    assert plan.changes == case.changes
    assert plan.history == case.history
    assert plan.park == case.park
    assert plan.resolved == case.resolved
    assert dict(plan.verdicts) == case.verdicts
    assert plan.ended == case.ended


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_inputs_are_left_alone(case: Case) -> None:
    statuses, targets = list(case.statuses), list(case.targets)
    plan_statuses(case.statuses, case.targets, NOW)
    assert (case.statuses, case.targets) == (statuses, targets)


def test_verdict_names() -> None:
    # The store writes these into status_history.verdict and metrics labels.
    assert (SUPERSEDED, FALLBACK) == ("superseded", "fallback")
    assert {v.value for v in Verdict} >= {"applied", "duplicate", "no_downgrade", "not_delivery"}


def test_every_history_entry_is_counted_and_every_park_too() -> None:
    statuses = [s for case in CASES.values() for s in case.statuses]
    targets = [row(1, "W", SENT), row(2, None, Delivery(State.SENDING))]
    plan = plan_statuses(statuses, targets, NOW)
    assert sum(plan.verdicts.values()) == len(plan.history) + len(plan.park) == len(statuses)


# --- order independence -------------------------------------------------------------------

TIMES = st.sampled_from([None, T1, T2, T3])
PROGRESS = st.builds(
    status,
    wamid=st.just("W"),
    value=st.sampled_from(["sent", "delivered", "read", "failed"]),
    at=TIMES,
    outbox_id=st.sampled_from([None, 1]),
    code=st.sampled_from([None, 131026, 480]),  # no window codes: the planner acts on those
    title=st.sampled_from([None, "a", "b"]),
    detail=st.sampled_from([None, "a", "b"]),
)
STARTS = st.sampled_from(
    [
        row(1, "W", ACCEPTED),
        row(1, "W", SENT),
        row(1, "W", DELIVERED),
        row(1, "W", UNDELIVERABLE, sent_as=SentAs.TEMPLATE),
        row(1, "W", CLOSED, sent_as=SentAs.FALLBACK_TEMPLATE),
        row(1, "W", READ, fallback=True),
    ]
)


def expected_change(start: Target, updates: list[StatusUpdate]) -> RowChange | None:
    delivery = start.delivery
    for update in updates:
        delivery, _ = merge(delivery, update)
    if delivery == start.delivery:
        return None
    return RowChange(delivery, "W", start.sent_as)


@given(STARTS, st.lists(PROGRESS, min_size=1, max_size=6), st.data())
def test_any_order_gives_the_same_change(
    start: Target, updates: list[StatusUpdate], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(updates))
    plans = [plan_statuses([located(u) for u in us], [start], NOW) for us in (updates, shuffled)]
    assert plans[0].changes.get(1) == plans[1].changes.get(1) == expected_change(start, updates)
    assert sorted(h.status for h in plans[0].history) == sorted(u.status for u in updates)


@given(st.lists(PROGRESS.map(lambda u: replace(u, outbox_id=1)), min_size=1, max_size=6), st.data())
def test_any_order_gives_the_same_change_for_a_row_found_by_outbox_id(
    updates: list[StatusUpdate], data: st.DataObject
) -> None:
    start = row(1, None, Delivery(State.UNKNOWN))
    shuffled = data.draw(st.permutations(updates))
    plans = [plan_statuses([located(u) for u in us], [start], NOW) for us in (updates, shuffled)]
    expected = expected_change(replace(start, wamid="W"), updates) or _unchanged(start)
    assert plans[0].changes == plans[1].changes == {1: expected}
    assert not plans[0].park


def _unchanged(start: Target) -> RowChange:
    return RowChange(start.delivery, "W", start.sent_as)


BATCH = [SENT_W, DELIVERED_W, READ_W, FAILED_W, status("W", "read", T2), status("W", "sent", None)]


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))), ids=str)
def test_every_order_of_one_batch(order: tuple[int, ...]) -> None:
    updates = [BATCH[i] for i in order] + BATCH[4:]
    plan = plan_statuses([located(u) for u in updates], [row()], NOW)
    assert plan.changes == {
        1: RowChange(
            Delivery(
                State.READ,
                sent_at=T1,
                delivered_at=T2,
                read_at=T2,
                failed_at=T2,
                error_code="131026",
                error_title="Undeliverable",
                error_detail="d",
            ),
            "W",
            SentAs.FREEFORM,
        )
    }
    assert [h.status for h in plan.history] == [u.status for u in updates]
    assert [h.at for h in plan.history] == [u.at or NOW for u in updates]


def test_a_status_of_the_send_in_flight_waits_even_if_the_row_has_an_older_wamid() -> None:
    in_flight = located(status("NEW", "sent", outbox_id=1))
    sending = row(1, "W", Delivery(State.SENDING), sent_as=SentAs.FALLBACK_TEMPLATE, fallback=True)
    plan = plan_statuses([in_flight], [sending], NOW)
    assert (plan.park, plan.history, plan.changes) == ([in_flight], [], {})


def test_only_a_window_fallback_puts_a_row_back_in_line() -> None:
    """A queued row (an `unknown` one waiting to be resent) that gets a `deleted` keeps its
    place and its retry time: no requeue."""
    waiting = row(1, None, Delivery(State.QUEUED))
    plan = plan_statuses([located(status("W1", "deleted", outbox_id=1))], [waiting], NOW)
    assert [c.requeue for c in plan.changes.values()] == [False]


def test_a_wamid_learnt_from_the_outbox_id_serves_later_statuses_of_the_batch() -> None:
    lost_answer = row(1, None, Delivery(State.UNKNOWN))
    first = located(status("W1", "sent", T1, outbox_id=1))
    second = located(status("W1", "delivered", T2))  # no outbox id: found by the wamid alone
    plan = plan_statuses([first, second], [lost_answer], NOW)
    assert plan.park == []
    assert plan.changes[1].wamid == "W1"
    assert plan.changes[1].delivery.state is State.DELIVERED
