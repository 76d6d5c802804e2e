"""One vocabulary: the states a row moves through, who moves it, and the codes and titles we write.

Every writer of `outbox.messages.state` (the sender's stores, the reconciler, housekeeping, the
operator verbs) takes its codes and titles from here, so an operator reading `error_code` and a
test asserting a guard read the same table. Codes the API gives are stored as its number
(`131047`) or `http_<status>`; the codes below are ours.
"""

from __future__ import annotations

from enum import StrEnum

from outbox.domain.models import State

# Rows not yet settled: they hold their recipient's place in line and count as backlog.
OPEN_STATES = (State.QUEUED, State.SENDING, State.UNKNOWN)
# Rows the API has (or had) and that statuses may still move up the delivery rank.
DELIVERY_STATES = (State.ACCEPTED, State.SENT, State.DELIVERED, State.READ)
# How far a message got, as status history shows it: never downgraded.
DELIVERY_RANK = {State.SENT: 1, State.DELIVERED: 2, State.READ: 3}


class Code(StrEnum):
    """`error_code` values outbox itself writes."""

    EXPIRED = "expired"  # expires_at passed before any request for the row left
    # expires_at passed while a request's outcome was unknown (a lease rescued past the expiry,
    # an `unknown` row not resent in time): the user may have the message.
    EXPIRED_UNKNOWN = "expired_unknown"
    WINDOW_CLOSED = "window_closed"
    LEASE_EXPIRED = "lease_expired"
    UNKNOWN_CHANNEL = "unknown_channel"
    CANCELLED = "cancelled"
    NO_RESPONSE = "no_response"
    # A 2xx whose body could not be read (nested past the parsers, cut, over 1 MiB, not JSON)
    # and names no usable message id: taken, maybe sent; `unknown`, never resent at once.
    UNREADABLE_ANSWER = "unreadable_answer"
    UNREACHABLE = "unreachable"
    SHUTDOWN = "shutdown"
    STATUS_FAILED = "status_failed"  # a failed status that carried no error code
    INVALID_PAYLOAD = "invalid_payload"
    INVALID_RECIPIENT = "invalid_recipient"
    # Issue 19: a row already in the table with values no send can have (non-finite times,
    # counters out of range, `sending` with no lease), failed by migration 0020; new rows with
    # them are refused at INSERT.
    INVALID_ROW = "invalid_row"
    RESULT_REFUSED = "result_refused"  # the database refused the result as it came
    # Issue 18: held with no request (the registry says its template is paused; the channel's
    # marketing is held after a spam-rate limit).
    TEMPLATE_HELD = "template_held"
    MARKETING_HELD = "marketing_held"


# The API's codes for "free-form outside the 24-hour window": answered at once, or as a status.
WINDOW_CLOSED_CODES = frozenset({470, 131047})


class Title(StrEnum):
    """`error_title` values outbox itself writes."""

    EXPIRED = "expires_at passed before the message was sent"
    EXPIRED_WHILE_UNKNOWN = "expires_at passed while the outcome was unknown: it may have arrived"
    EXPIRED_IN_FLIGHT = (
        "the sending process stopped before recording an outcome and expires_at has passed: "
        "it may have arrived"
    )
    INVALID = "the message cannot be sent as written"
    INVALID_ROW = "the row holds values no send can have"
    WINDOW_CLOSED = "the 24-hour window is closed and the row has no fallback_template"
    WINDOW_CLOSED_FALLBACK_NEXT = "the 24-hour window is closed: sending the fallback_template next"
    WINDOW_WAS_CLOSED_FALLBACK_NEXT = (
        "the 24-hour window was closed: sending the fallback_template next"
    )
    TEMPLATE_REFUSED_CLOSED_WINDOW = "the API refused the template for a closed 24-hour window"
    FALLBACK_REFUSED_CLOSED_WINDOW = (
        "the 24-hour window is closed and the fallback_template was refused too"
    )
    FALLBACK_FAILED_CLOSED_WINDOW = (
        "the 24-hour window was closed and the fallback_template failed too"
    )
    NO_RESPONSE = "the request was sent but no answer came back"
    UNREADABLE_ANSWER = (
        "the API answered success with a body that could not be read: it may have sent it"
    )
    LEASE_EXPIRED = "the sending process stopped before recording an outcome"
    RESENDING_UNKNOWN = "no status arrived for the unknown outcome: sending once more"
    UNKNOWN_CHANNEL = "no channel with this id is configured"
    CANCELLED = "cancelled by an operator"
    SHUTDOWN = "stopped while the request was in flight"
    RESULT_REFUSED = "the database refused the result as it came: stored without its texts"
    TEMPLATE_HELD = "the template is paused or disabled: held until it is active again"
    MARKETING_HELD = "the channel's marketing is held after a spam-rate limit (131048)"
    MARKETING_CAP_RETRY = "per-user marketing cap (131049): one more try a day later"
    # Issue 19 §3: a request that carries the key never follows a redirect.
    REDIRECT_REFUSED = "the API answered with a redirect, not followed: check the base_url"


class Mover(StrEnum):
    """Who changes a row's state."""

    PRODUCER = "producer"  # INSERT
    CLAIM = "claim"  # the sender's claim under a lease
    SEND = "send"  # the answer to a request, or a row settled without one
    RELEASE = "release"  # a stopping sender hands back rows it never sent
    RENEW = "renew"  # a live holder extends its leases, taking back rows rescued from it
    HOUSEKEEPING = "housekeeping"  # lease rescue, expiry, unknown resend, unknown channels
    STATUS = "status"  # a webhook status, through the reconciler
    OPERATOR = "operator"  # replay and cancel


# Every state change any statement makes, with who makes it. Statements guard on the `from`
# state; tests check each guard against this table, so a new move is written here first.
TRANSITIONS: dict[tuple[State, State], frozenset[Mover]] = {
    (State.QUEUED, State.SENDING): frozenset({Mover.CLAIM}),
    (State.QUEUED, State.EXPIRED): frozenset({Mover.HOUSEKEEPING}),
    (State.QUEUED, State.FAILED): frozenset({Mover.HOUSEKEEPING}),  # unknown channel
    (State.QUEUED, State.CANCELLED): frozenset({Mover.OPERATOR}),
    (State.SENDING, State.QUEUED): frozenset({Mover.SEND, Mover.RELEASE}),
    (State.SENDING, State.ACCEPTED): frozenset({Mover.SEND}),
    (State.SENDING, State.FAILED): frozenset({Mover.SEND}),
    (State.SENDING, State.EXPIRED): frozenset({Mover.SEND, Mover.HOUSEKEEPING}),
    (State.SENDING, State.UNKNOWN): frozenset({Mover.SEND, Mover.HOUSEKEEPING}),
    (State.UNKNOWN, State.EXPIRED): frozenset({Mover.HOUSEKEEPING, Mover.SEND}),
    (State.UNKNOWN, State.CANCELLED): frozenset({Mover.OPERATOR}),
    (State.FAILED, State.QUEUED): frozenset({Mover.OPERATOR}),
    (State.EXPIRED, State.QUEUED): frozenset({Mover.OPERATOR}),
    **{
        (before, after): frozenset({Mover.STATUS})
        for before in (State.UNKNOWN, *DELIVERY_STATES, State.FAILED)
        for after in (State.SENT, State.DELIVERED, State.READ, State.FAILED)
        if before is not after
    },
    # A status that the window was closed sends the fallback template next.
    (State.ACCEPTED, State.QUEUED): frozenset({Mover.STATUS}),
    (State.UNKNOWN, State.QUEUED): frozenset(
        {Mover.HOUSEKEEPING, Mover.OPERATOR, Mover.STATUS, Mover.SEND}
    ),
    # A rescued row (`lease_expired`) whose holder is alive and has not lost it to a resend:
    # the holder's renewal takes it back, or the holder's answer is written over the rescue
    # (the SEND moves out of `unknown`, here and above).
    (State.UNKNOWN, State.SENDING): frozenset({Mover.RENEW}),
    (State.UNKNOWN, State.ACCEPTED): frozenset({Mover.SEND}),
    (State.UNKNOWN, State.FAILED): frozenset({Mover.STATUS, Mover.SEND}),
}


def allowed(before: State, after: State, mover: Mover) -> bool:
    return mover in TRANSITIONS.get((before, after), frozenset())
