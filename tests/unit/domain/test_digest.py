"""reconcile.digest and report.planned: what a batch of webhook bodies says, and what a plan's
changes tell the metrics (no I/O)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from outbox.domain.codes import Code
from outbox.domain.delivery import Delivery
from outbox.domain.digest import Digest, InboundSeen, Located, NumberMove, WebhookRow, digest
from outbox.domain.models import SentAs, State
from outbox.domain.notifications import StatusUpdate
from outbox.domain.reconcile import Target, plan_statuses
from outbox.domain.report import FailedDelivery, Report, planned

T0 = 1_700_000_000
AT = datetime.fromtimestamp(T0, UTC)
NOW = datetime.fromtimestamp(T0 + 3600, UTC)


def _inbound(wa_id: str, message_id: str) -> dict[str, Any]:
    return {"from": wa_id, "id": message_id, "timestamp": str(T0), "type": "text"}


def _status(wamid: str, value: str, **extra: Any) -> dict[str, Any]:
    return {"id": wamid, "status": value, "timestamp": str(T0), **extra}


def _update(
    wamid: str, value: str, code: int | None = None, title: str | None = None
) -> StatusUpdate:
    return StatusUpdate(wamid, value, AT, None, None, code, title, None)


NUMBER_CHANGE = {
    "from": "16315558889",
    "timestamp": str(T0),
    "type": "system",
    "system": {"type": "user_changed_number", "new_wa_id": "16315558890"},
}


@dataclass(frozen=True)
class DigestCase:
    bodies: list[object]  # one webhook row each, ids 1, 2, ... on channel "c"
    inbound: list[InboundSeen] = field(default_factory=list)
    moves: list[NumberMove] = field(default_factory=list)
    statuses: list[Located] = field(default_factory=list)
    notes: list[str | None] = field(default_factory=list)  # per row, in row order
    noted: dict[tuple[str, str], int] = field(default_factory=dict)


DIGEST_CASES = {
    "inbound message": DigestCase(
        [{"messages": [_inbound("+49 151 0001", "in.1")]}],
        inbound=[InboundSeen("c", "491510001", AT)],
        notes=[None],
    ),
    "status": DigestCase(
        [{"statuses": [_status("wamid.1", "DELIVERED")]}],
        statuses=[Located("c", _update("wamid.1", "delivered"), 1)],
        notes=[None],
    ),
    "status with an error": DigestCase(
        [{"statuses": [_status("wamid.1", "failed", errors=[{"code": "131047", "title": "Re"}])]}],
        statuses=[Located("c", _update("wamid.1", "failed", 131047, "Re"), 1)],
        notes=[None],
    ),
    "number change": DigestCase(
        [{"messages": [NUMBER_CHANGE]}],
        moves=[NumberMove("c", "16315558889", "16315558890")],
        notes=["number changed to 16315558890"],
    ),
    "error notice": DigestCase(
        [{"errors": [{"code": 501, "title": "Unknown message type"}]}],
        notes=["error 501: Unknown message type"],
        noted={("c", "error"): 1},
    ),
    "ignored body": DigestCase(
        [["not", "an", "object"]],
        notes=["ignored: not a WhatsApp notification"],
        noted={("c", "ignored"): 1},
    ),
    "duplicate inbound in one body": DigestCase(
        [{"messages": [_inbound("4915100", "in.1"), _inbound("4915100", "in.1")]}],
        inbound=[InboundSeen("c", "4915100", AT)],
        notes=["ignored: duplicate message"],
        noted={("c", "ignored"): 1},
    ),
    "several notes in one row, joined in body order": DigestCase(
        [
            {
                "messages": [NUMBER_CHANGE],
                "statuses": [{"status": "sent"}],
                "errors": [{"code": 470, "title": "Window"}],
            }
        ],
        moves=[NumberMove("c", "16315558889", "16315558890")],
        notes=[
            "number changed to 16315558890; ignored: status without id; error 470: Window",
        ],
        noted={("c", "ignored"): 1, ("c", "error"): 1},
    ),
    "rows keep their order and their own notes": DigestCase(
        [
            {"errors": [{"title": "first"}]},
            {"statuses": [_status("wamid.2", "read")]},
            {},
        ],
        statuses=[Located("c", _update("wamid.2", "read"), 2)],
        notes=["error None: first", None, "ignored: not a WhatsApp notification"],
        noted={("c", "error"): 1, ("c", "ignored"): 1},
    ),
    "no rows": DigestCase([]),
}


@pytest.mark.parametrize("case", DIGEST_CASES.values(), ids=DIGEST_CASES.keys())
def test_digest_sorts_every_event_kind(case: DigestCase) -> None:
    rows = [WebhookRow(n, "c", body) for n, body in enumerate(case.bodies, start=1)]
    assert digest(rows) == Digest(
        inbound=case.inbound,
        moves=case.moves,
        statuses=case.statuses,
        notes=list(enumerate(case.notes, start=1)),
        noted=Counter(case.noted),
    )


def test_digest_keeps_each_rows_channel() -> None:
    rows = [
        WebhookRow(1, "onprem", {"messages": [_inbound("4915100", "in.1")]}),
        WebhookRow(2, "cloud", {"errors": [{"title": "x"}]}),
    ]
    found = digest(rows)
    assert found.inbound == [InboundSeen("onprem", "4915100", AT)]
    assert found.noted == Counter({("cloud", "error"): 1})


# --- report.planned ----------------------------------------------------------------------------


def _target(
    delivery: Delivery,
    *,
    accepted_at: datetime | None = AT,
    channel: str = "c",
    wamid: str = "W",
    fallback: bool = False,
) -> Target:
    return Target(1, channel, wamid, SentAs.FREEFORM, fallback, delivery, accepted_at)


@dataclass(frozen=True)
class FactsCase:
    target: Target
    update: StatusUpdate
    failed: list[FailedDelivery] = field(default_factory=list)
    delivered_after: list[tuple[str, float]] = field(default_factory=list)


def _at(offset: int, value: str = "delivered") -> StatusUpdate:
    at = datetime.fromtimestamp(T0 + offset, UTC)
    return StatusUpdate("W", value, at, None, None, None, None, None)


FACTS_CASES = {
    "first delivery: seconds from acceptance": FactsCase(
        _target(Delivery(State.SENT)), _at(42), delivered_after=[("c", 42.0)]
    ),
    "a delivery time before acceptance counts as none": FactsCase(
        _target(Delivery(State.ACCEPTED)), _at(-5), delivered_after=[("c", 0.0)]
    ),
    "read implies delivered": FactsCase(
        _target(Delivery(State.ACCEPTED)), _at(7, "read"), delivered_after=[("c", 7.0)]
    ),
    "no acceptance time on record: no figure": FactsCase(
        _target(Delivery(State.SENT), accepted_at=None), _at(42)
    ),
    "delivered before: not the first delivery": FactsCase(
        _target(Delivery(State.DELIVERED, delivered_at=datetime.fromtimestamp(T0 + 60, UTC))),
        _at(42),
    ),
    "a failure": FactsCase(
        _target(Delivery(State.SENT)),
        _update("W", "failed", 131026, "Message undeliverable"),
        failed=[FailedDelivery("c", 1, "W", "131026", "Message undeliverable")],
    ),
    "a failure without a code": FactsCase(
        _target(Delivery(State.ACCEPTED)),
        _update("W", "failed"),
        failed=[FailedDelivery("c", 1, "W", Code.STATUS_FAILED, None)],
    ),
    "failed before: not reported again": FactsCase(
        _target(Delivery(State.FAILED, failed_at=datetime.fromtimestamp(T0 + 60, UTC))),
        _update("W", "failed", 131026, "earlier, so it is recorded"),
    ),
    "a closed window with no fallback fails the row": FactsCase(
        _target(Delivery(State.ACCEPTED)),
        _update("W", "failed", 131047, "Re-engagement message"),
        failed=[
            FailedDelivery(
                "c",
                1,
                "W",
                Code.WINDOW_CLOSED,
                "the 24-hour window is closed and the row has no fallback_template",
            )
        ],
    ),
    "a closed window with a fallback requeues: no failure": FactsCase(
        _target(Delivery(State.ACCEPTED), fallback=True),
        _update("W", "failed", 131047, "Re-engagement message"),
    ),
}


@pytest.mark.parametrize("case", FACTS_CASES.values(), ids=FACTS_CASES.keys())
def test_planned_reports_failures_and_first_deliveries(case: FactsCase) -> None:
    plan = plan_statuses([Located("c", case.update, 9)], [case.target], NOW)
    assert plan.changes, "every case changes its row"
    report = planned(plan, [case.target])
    assert report.failed == case.failed
    assert report.delivered_after == case.delivered_after
    assert report.verdicts == plan.verdicts
    assert (report.webhooks, report.inbound, report.failed_rows) == (0, 0, 0)


def test_report_add_sums_everything() -> None:
    one = Report(
        webhooks=2,
        inbound=1,
        verdicts=Counter({("c", "applied"): 1}),
        notes=Counter({("c", "error"): 1}),
        orphaned=Counter({"c": 1}),
        failed_rows=1,
        delivered_after=[("c", 1.0)],
        failed=[FailedDelivery("c", 1, "W", "x", None)],
    )
    total = Report()
    total.add(one)
    total.add(one)
    assert total == Report(
        webhooks=4,
        inbound=2,
        verdicts=Counter({("c", "applied"): 2}),
        notes=Counter({("c", "error"): 2}),
        orphaned=Counter({"c": 2}),
        failed_rows=2,
        delivered_after=[("c", 1.0), ("c", 1.0)],
        failed=[FailedDelivery("c", 1, "W", "x", None)] * 2,
    )
