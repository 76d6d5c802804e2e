"""Dispatch and the whole verdict, without I/O: what a claimed row becomes, and what an answer
teaches the sender (pair pacing, the throttle hold, the metrics error class)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from outbox.domain import retry
from outbox.domain.codes import Code, Title
from outbox.domain.dispatch import ChannelRules, Unsent, prepare
from outbox.domain.models import ClaimedMessage, Dialect, SendResult, SentAs, State
from outbox.domain.outcome import Judged, SendError, judge
from outbox.domain.request import ApiRequest, build_request
from outbox.domain.response import Accepted, Rejected, SendOutcome, TransportFailure

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
MARGIN = timedelta(minutes=5)
CLOUD = ChannelRules(Dialect.CLOUD, None)
ONPREM = ChannelRules(Dialect.ONPREM, None)
TEXT: dict[str, Any] = {"type": "text", "text": {"body": "Hallo"}}
TEMPLATE: dict[str, Any] = {
    "type": "template",
    "template": {"name": "reengage", "language": {"code": "de"}},
}
IN_WINDOW = NOW - timedelta(hours=1)
OUT_OF_WINDOW = NOW - timedelta(hours=30)


def row(
    *,
    recipient: str = "+49 151 1234 5678",
    payload: Any = TEXT,
    fallback: Any = None,
    inbound: datetime | None = IN_WINDOW,
    expires_at: datetime | None = None,
    planned: SentAs | None = None,
) -> ClaimedMessage:
    return ClaimedMessage(
        id=7,
        channel="shop-de",
        recipient=recipient,
        payload=payload,
        fallback_template=fallback,
        attempts=1,
        created_at=NOW - timedelta(minutes=1),
        expires_at=expires_at,
        planned=planned,
        last_inbound_at=inbound,
    )


def unsent(state: State, code: str, title: str, detail: str | None = None) -> SendResult:
    return SendResult(
        7, state, NOW, error_code=code, error_title=title, error_detail=detail, attempts_delta=-1
    )


# --- prepare: rows that need no request ----------------------------------------------------

UNSENT: dict[str, tuple[ClaimedMessage, ChannelRules, Unsent]] = {
    "expired": (
        row(expires_at=NOW),
        CLOUD,
        Unsent(unsent(State.EXPIRED, Code.EXPIRED, Title.EXPIRED), SendError.EXPIRED),
    ),
    "expired-beats-invalid": (
        row(expires_at=NOW - timedelta(seconds=1), recipient="12"),
        CLOUD,
        Unsent(unsent(State.EXPIRED, Code.EXPIRED, Title.EXPIRED), SendError.EXPIRED),
    ),
    "bad-recipient": (
        row(recipient="12"),
        CLOUD,
        Unsent(
            unsent(
                State.FAILED,
                Code.INVALID_RECIPIENT,
                Title.INVALID,
                "recipient '12' is not a phone number (7-15 digits)",
            ),
            SendError.INVALID,
        ),
    ),
    "bad-recipient-before-bad-payload": (
        row(recipient="12", payload="not an object"),
        CLOUD,
        Unsent(
            unsent(
                State.FAILED,
                Code.INVALID_RECIPIENT,
                Title.INVALID,
                "recipient '12' is not a phone number (7-15 digits)",
            ),
            SendError.INVALID,
        ),
    ),
    # The named rule: a bad primary payload fails the row even when the fallback would go.
    "bad-primary-fails-though-the-fallback-would-go": (
        row(payload={"type": "text", "text": {"body": ""}}, fallback=TEMPLATE, inbound=None),
        CLOUD,
        Unsent(
            unsent(
                State.FAILED,
                Code.INVALID_PAYLOAD,
                Title.INVALID,
                "text.body must be a non-empty string",
            ),
            SendError.INVALID,
        ),
    ),
    "bad-fallback-names-the-fallback": (
        row(fallback={"type": "template", "template": {}}, inbound=OUT_OF_WINDOW),
        CLOUD,
        Unsent(
            unsent(
                State.FAILED,
                Code.INVALID_PAYLOAD,
                Title.INVALID,
                "fallback_template: template.name is required",
            ),
            SendError.INVALID,
        ),
    ),
    "free-form-fallback-is-refused": (
        row(fallback=TEXT, inbound=None),
        CLOUD,
        Unsent(
            unsent(
                State.FAILED,
                Code.INVALID_PAYLOAD,
                Title.INVALID,
                "fallback_template: must be a template message, not 'text'",
            ),
            SendError.INVALID,
        ),
    ),
    "onprem-template-without-namespace": (
        row(payload=TEMPLATE),
        ONPREM,
        Unsent(
            unsent(
                State.FAILED,
                Code.INVALID_PAYLOAD,
                Title.INVALID,
                "template has no namespace and the On-Premise channel configures none",
            ),
            SendError.INVALID,
        ),
    ),
    "window-closed-without-fallback": (
        row(inbound=None),
        CLOUD,
        Unsent(
            unsent(
                State.FAILED,
                Code.WINDOW_CLOSED,
                Title.WINDOW_CLOSED,
                "no inbound message from this recipient is on record",
            ),
            SendError.WINDOW_CLOSED,
        ),
    ),
    "window-closed-by-the-margin": (
        row(inbound=NOW - timedelta(hours=24) + MARGIN),
        CLOUD,
        Unsent(
            unsent(
                State.FAILED,
                Code.WINDOW_CLOSED,
                Title.WINDOW_CLOSED,
                f"the recipient last wrote at {(NOW - timedelta(hours=24) + MARGIN).isoformat()}",
            ),
            SendError.WINDOW_CLOSED,
        ),
    ),
}


@pytest.mark.parametrize("case", UNSENT)
def test_rows_that_need_no_request(case: str) -> None:
    message, rules, expected = UNSENT[case]
    assert prepare(message, rules, NOW, MARGIN) == expected


# --- prepare: rows that become a request -----------------------------------------------------

SENT: dict[str, tuple[ClaimedMessage, ChannelRules, Any, SentAs]] = {
    "free-form-in-window": (row(), CLOUD, TEXT, SentAs.FREEFORM),
    "template-any-time": (row(payload=TEMPLATE, inbound=None), CLOUD, TEMPLATE, SentAs.TEMPLATE),
    "fallback-when-closed": (
        row(fallback=TEMPLATE, inbound=OUT_OF_WINDOW),
        CLOUD,
        TEMPLATE,
        SentAs.FALLBACK_TEMPLATE,
    ),
    "fallback-stays-once-chosen": (
        row(fallback=TEMPLATE, planned=SentAs.FALLBACK_TEMPLATE),
        CLOUD,
        TEMPLATE,
        SentAs.FALLBACK_TEMPLATE,
    ),
    "onprem-template-with-channel-namespace": (
        row(payload=TEMPLATE),
        ChannelRules(Dialect.ONPREM, "ns"),
        TEMPLATE,
        SentAs.TEMPLATE,
    ),
}


@pytest.mark.parametrize("case", SENT)
def test_rows_that_become_a_request(case: str) -> None:
    message, rules, content, sent_as = SENT[case]
    request = prepare(message, rules, NOW, MARGIN)
    # The same request the one-call builder makes from the same content.
    assert request == build_request(
        rules.dialect,
        message.recipient,
        content,
        namespace=rules.namespace,
        message_id=message.id,
        sent_as=sent_as,
    )
    assert isinstance(request, ApiRequest)
    assert request.body["to"] == "4915112345678"


# --- judge: pacing, the throttle hold and the metrics class --------------------------------

POLICY = retry.RetryPolicy()
GAP = timedelta(seconds=6)


def verdict(outcome: SendOutcome, gap: timedelta = timedelta(0)) -> Judged:
    return judge(
        row(), SentAs.FREEFORM, outcome, now=NOW, policy=POLICY, rand=lambda: 1.0, recipient_gap=gap
    )


@pytest.mark.parametrize(
    ("outcome", "gap", "pace_until"),
    [
        pytest.param(Accepted("wamid.A", None), GAP, NOW + GAP, id="accepted-paced"),
        pytest.param(Accepted("wamid.A", None), timedelta(0), None, id="accepted-no-gap"),
        pytest.param(Rejected(503, None, "HTTP 503", None), GAP, None, id="retry-not-paced"),
        pytest.param(TransportFailure(True, "timeout"), GAP, None, id="unknown-not-paced"),
    ],
)
def test_pair_pacing_is_part_of_the_verdict(
    outcome: SendOutcome, gap: timedelta, pace_until: datetime | None
) -> None:
    assert verdict(outcome, gap).result.pace_until == pace_until


@pytest.mark.parametrize(
    ("retry_after", "hold"),
    [
        pytest.param(None, timedelta(seconds=2), id="no-hint-throttle-delay"),
        pytest.param(0.5, timedelta(seconds=2), id="short-hint-raised"),
        pytest.param(30.0, timedelta(seconds=30), id="hint-honoured"),
        pytest.param(7200.0, timedelta(hours=1), id="long-hint-capped"),
    ],
)
def test_a_throttle_holds_the_channel_as_long_as_the_row(
    retry_after: float | None, hold: timedelta
) -> None:
    judged = verdict(Rejected(429, None, "Too many requests", None, retry_after=retry_after))
    assert judged.throttle_hold == hold
    assert judged.result.next_attempt_at == NOW + hold
    assert retry.throttle_hold(POLICY, retry_after) == hold


@pytest.mark.parametrize(
    ("outcome", "metric"),
    [
        pytest.param(Accepted("wamid.A", None), SendError.NONE, id="accepted"),
        pytest.param(TransportFailure(True, "read timeout"), SendError.NETWORK, id="no-answer"),
        pytest.param(TransportFailure(False, "refused"), SendError.NETWORK, id="unreachable"),
        pytest.param(Rejected(429, None, "HTTP 429", None), SendError.THROTTLE, id="throttle"),
        pytest.param(Rejected(503, None, "HTTP 503", None), SendError.SERVER, id="server"),
        pytest.param(Rejected(400, 131056, "pair", None), SendError.RECIPIENT_THROTTLE, id="pair"),
        pytest.param(Rejected(400, 131047, "window", None), SendError.WINDOW_CLOSED, id="window"),
        pytest.param(Rejected(400, 131053, "media", None), SendError.MEDIA, id="media"),
        pytest.param(Rejected(401, None, "HTTP 401", None), SendError.CHANNEL, id="channel"),
        pytest.param(Rejected(400, 131026, "bad", None), SendError.PERMANENT, id="permanent"),
    ],
)
def test_the_metrics_class_of_an_answer(outcome: SendOutcome, metric: SendError) -> None:
    judged = verdict(outcome)
    assert judged.metric is metric
    if metric is not SendError.THROTTLE:
        assert judged.throttle_hold is None


def test_metric_labels_keep_their_values() -> None:
    # The `error_class` label values on /metrics: the ones without a request or an answer, and
    # every class the API's answers are sorted into.
    assert {e.value for e in SendError} == {
        "none",
        "network",
        "invalid",
        "expired",
        "held",  # issue 18: no request, held for a paused template or the marketing hold
        *(c.value for c in retry.ErrorClass),
    }


def test_the_verdict_compares_by_what_it_decides_for_the_row() -> None:
    judged = verdict(Rejected(429, None, "Too many requests", None, retry_after=30.0))
    assert judged == replace(judged, throttle_hold=None, metric=SendError.NONE)
