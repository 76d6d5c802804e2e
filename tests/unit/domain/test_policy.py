"""The 2026 error policy (issue 18, waba-2026.md §1.2 §1.4): one table row per code, the holds
before a send, and the pair pause."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from outbox.domain import policy
from outbox.domain.codes import Code
from outbox.domain.delivery import Delivery
from outbox.domain.digest import Located
from outbox.domain.models import ClaimedMessage, SendResult, SentAs, State
from outbox.domain.notifications import StatusUpdate
from outbox.domain.outcome import SendError, judge
from outbox.domain.reconcile import Target, plan_statuses
from outbox.domain.response import Accepted, Rejected, parse_send_response
from outbox.domain.retry import RetryPolicy
from outbox.domain.templates import TemplateInfo

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
DAY = timedelta(hours=24)
POLICY = RetryPolicy()
PROMO: dict[str, Any] = {
    "type": "template",
    "template": {"name": "promo", "language": {"code": "en_US"}},
}
TEXT = {"type": "text", "text": {"body": "hi"}}
MARKETING = TemplateInfo(7, "APPROVED", "MARKETING")
UTILITY = TemplateInfo(8, "APPROVED", "UTILITY")
OTP = TemplateInfo(9, "APPROVED", "AUTHENTICATION")
PAUSED = TemplateInfo(10, "PAUSED", "MARKETING")


def row(
    *,
    recipient: str = "4915112345678",
    template: TemplateInfo | None = None,
    attempts: int = 1,
    expires_at: datetime | None = None,
    last_error: str | None = None,
    marketing_hold_until: datetime | None = None,
    payload: Any = PROMO,
) -> ClaimedMessage:
    return ClaimedMessage(
        id=1,
        channel="c",
        recipient=recipient,
        payload=payload,
        fallback_template=None,
        attempts=attempts,
        created_at=NOW - timedelta(minutes=1),
        expires_at=expires_at,
        template=template,
        last_error=last_error,
        marketing_hold_until=marketing_hold_until,
    )


def answer(
    code: int,
    message: ClaimedMessage,
    sent_as: SentAs = SentAs.TEMPLATE,
    policy_: RetryPolicy = POLICY,
) -> SendResult:
    rejected = Rejected(400, code, f"(#{code}) error", None)
    return judge(message, sent_as, rejected, now=NOW, policy=policy_, rand=lambda: 0.5).result


def shape(result: SendResult) -> tuple[State, datetime | None, int, bool]:
    return result.state, result.next_attempt_at, result.attempts_delta, result.opt_out


BACKOFF_1 = NOW + timedelta(seconds=1)  # backoff(1): base 2 s * rand 0.5


@pytest.mark.parametrize(
    ("code", "message", "sent_as", "expected"),
    [
        # 131049: once more a day later, charged; never to +1 marketing; never twice; never
        # past expires_at.
        (131049, row(template=MARKETING), SentAs.TEMPLATE, (State.QUEUED, NOW + DAY, 0, False)),
        (131049, row(), SentAs.TEMPLATE, (State.QUEUED, NOW + DAY, 0, False)),
        (131049, row(recipient="+14155550100"), SentAs.TEMPLATE, (State.FAILED, None, 0, False)),
        (131049, row(recipient="US.1349120865"), SentAs.TEMPLATE, (State.FAILED, None, 0, False)),
        (131049, row(last_error="131049"), SentAs.TEMPLATE, (State.FAILED, None, 0, False)),
        (
            131049,
            row(expires_at=NOW + timedelta(hours=23)),
            SentAs.TEMPLATE,
            (State.FAILED, None, 0, False),
        ),
        (
            131049,
            row(expires_at=NOW + timedelta(hours=25)),
            SentAs.TEMPLATE,
            (State.QUEUED, NOW + DAY, 0, False),
        ),
        # 131050: fails at once; the opt-out is recorded with the result.
        (131050, row(), SentAs.TEMPLATE, (State.FAILED, None, 0, True)),
        # 131057: backs off, charged, and never fails for attempts.
        (131057, row(), SentAs.TEMPLATE, (State.QUEUED, BACKOFF_1, 0, False)),
        (
            131057,
            row(attempts=50),
            SentAs.TEMPLATE,
            (State.QUEUED, NOW + timedelta(minutes=2.5), 0, False),
        ),
        # 130472, 131026: permanent.
        (130472, row(), SentAs.TEMPLATE, (State.FAILED, None, 0, False)),
        (131026, row(), SentAs.TEMPLATE, (State.FAILED, None, 0, False)),
        # 131048: marketing (and unknown category) waits spam_hold, uncharged; the rest backs
        # off like a server error.
        (131048, row(template=MARKETING), SentAs.TEMPLATE, (State.QUEUED, NOW + DAY, -1, False)),
        (131048, row(), SentAs.TEMPLATE, (State.QUEUED, NOW + DAY, -1, False)),
        (131048, row(template=OTP), SentAs.TEMPLATE, (State.QUEUED, BACKOFF_1, 0, False)),
        (131048, row(template=UTILITY), SentAs.TEMPLATE, (State.QUEUED, BACKOFF_1, 0, False)),
        (131048, row(payload=TEXT), SentAs.FREEFORM, (State.QUEUED, BACKOFF_1, 0, False)),
        (131048, row(template=OTP, attempts=8), SentAs.TEMPLATE, (State.FAILED, None, 0, False)),
        # 132015: held (uncharged) until the template is active, looking again hourly.
        (
            132015,
            row(template=MARKETING),
            SentAs.TEMPLATE,
            (State.QUEUED, NOW + timedelta(hours=1), -1, False),
        ),
        (
            132015,
            row(expires_at=NOW + timedelta(minutes=5)),
            SentAs.TEMPLATE,
            (State.QUEUED, NOW + timedelta(minutes=5), -1, False),
        ),
    ],
)
def test_the_2026_retry_table(
    code: int, message: ClaimedMessage, sent_as: SentAs, expected: tuple[Any, ...]
) -> None:
    result = answer(code, message, sent_as)
    assert shape(result) == expected
    assert result.error_code == str(code)


def test_the_delays_are_configurable() -> None:
    custom = replace(POLICY, marketing_cap_delay=timedelta(hours=30), spam_hold=timedelta(hours=2))
    assert answer(131049, row(), policy_=custom).next_attempt_at == NOW + timedelta(hours=30)
    assert answer(131048, row(), policy_=custom).next_attempt_at == NOW + timedelta(hours=2)


def test_the_metric_class_names_each_new_code() -> None:
    classes = {
        code: judge(
            row(),
            SentAs.TEMPLATE,
            Rejected(400, code, "x", None),
            now=NOW,
            policy=POLICY,
            rand=lambda: 0.5,
        ).metric
        for code in (131048, 131049, 131050, 131057, 132015)
    }
    assert classes == {
        131048: SendError.SPAM_LIMIT,
        131049: SendError.MARKETING_CAP,
        131050: SendError.OPTED_OUT,
        131057: SendError.MAINTENANCE,
        132015: SendError.TEMPLATE_PAUSED,
    }


HOLD_END = NOW + timedelta(hours=5)


@pytest.mark.parametrize(
    ("message", "sent_as", "expected"),
    [
        # A paused (or disabled, rejected) template holds its rows, whatever the category.
        (row(template=PAUSED), SentAs.TEMPLATE, (Code.TEMPLATE_HELD, NOW + timedelta(hours=1), 10)),
        (
            row(template=replace(OTP, status="DISABLED")),
            SentAs.TEMPLATE,
            (Code.TEMPLATE_HELD, NOW + timedelta(hours=1), 9),
        ),
        (
            row(template=PAUSED, expires_at=NOW + timedelta(minutes=3)),
            SentAs.TEMPLATE,
            (Code.TEMPLATE_HELD, NOW + timedelta(minutes=3), 10),
        ),
        (row(template=MARKETING), SentAs.TEMPLATE, None),
        (row(template=replace(MARKETING, status=None)), SentAs.TEMPLATE, None),
        # The channel's marketing hold: marketing and unknown templates wait; the rest goes.
        (
            row(template=MARKETING, marketing_hold_until=HOLD_END),
            SentAs.TEMPLATE,
            (Code.MARKETING_HELD, HOLD_END, None),
        ),
        (
            row(marketing_hold_until=HOLD_END),
            SentAs.TEMPLATE,
            (Code.MARKETING_HELD, HOLD_END, None),
        ),
        (
            row(marketing_hold_until=HOLD_END),
            SentAs.FALLBACK_TEMPLATE,
            (Code.MARKETING_HELD, HOLD_END, None),
        ),
        (row(template=OTP, marketing_hold_until=HOLD_END), SentAs.TEMPLATE, None),
        (row(template=UTILITY, marketing_hold_until=HOLD_END), SentAs.TEMPLATE, None),
        (row(payload=TEXT, marketing_hold_until=HOLD_END), SentAs.FREEFORM, None),
        (row(marketing_hold_until=NOW), SentAs.TEMPLATE, None),  # ended
    ],
)
def test_holds_before_a_send(
    message: ClaimedMessage, sent_as: SentAs, expected: tuple[Any, ...] | None
) -> None:
    held = policy.hold(message, sent_as, NOW, POLICY)
    if expected is None:
        assert held is None
        return
    assert held is not None
    assert (held.error_code, held.next_attempt_at, held.held_template) == expected
    # Never tried: the claim's attempt is given back, and the row stays queued.
    assert (held.state, held.attempts_delta) == (State.QUEUED, -1)


@pytest.mark.parametrize(
    ("strikes", "seconds"),
    [(1, 6), (2, 24), (3, 96), (4, 384), (5, 600), (50, 600), (10_000, 600)],
)
def test_the_pair_pause_grows_by_four_up_to_ten_minutes(strikes: int, seconds: int) -> None:
    assert policy.pair_pause(strikes, POLICY) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("accepted", "accepted"),
        ("held_for_quality_assessment", "held_for_quality_assessment"),
        ("paused", "paused"),
        ("PAUSED", None),
        ("something new", None),
        (7, None),
        (None, None),
    ],
)
def test_the_send_answer_message_status(status: object, expected: str | None) -> None:
    body = {"messages": [{"id": "wamid.X", "message_status": status}]}
    accepted = parse_send_response(200, body)
    assert accepted == Accepted("wamid.X", None, message_status=expected)
    result = judge(row(), SentAs.TEMPLATE, accepted, now=NOW, policy=POLICY, rand=lambda: 0.5)
    assert result.result.message_status == expected


@pytest.mark.parametrize(
    ("state", "code", "verdict", "hold"),
    [
        # A held message dropped by a template pause: back to the queue, held for it.
        (State.ACCEPTED, 132015, "template_paused", True),
        (State.UNKNOWN, 132015, "template_paused", True),
        # Delivered already, or another failure: the usual merge.
        (State.DELIVERED, 132015, "no_downgrade", False),
        (State.ACCEPTED, 131049, "applied", False),
        (State.ACCEPTED, 131050, "applied", False),
    ],
)
def test_failed_statuses_under_the_2026_policy(
    state: State, code: int, verdict: str, hold: bool
) -> None:
    target = Target(1, "c", "wamid.A", SentAs.TEMPLATE, False, Delivery(state))
    update = StatusUpdate("wamid.A", "failed", NOW, None, None, code, "t", None)
    plan = plan_statuses([Located("c", update)], [target], NOW)
    assert plan.verdicts == {("c", verdict): 1}
    change = plan.changes.get(1)
    assert (change is not None and change.hold) is hold
    if hold:
        assert change is not None
        assert (change.delivery.state, change.requeue) == (State.QUEUED, True)
        assert [e.wamid for e in plan.ended] == ["wamid.A"]
    assert (1 in plan.opt_outs) is (code == 131050)
