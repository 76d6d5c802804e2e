"""Value types shared by the domain rules and the adapters."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from outbox.domain.templates import TemplateInfo


class Dialect(StrEnum):
    """Which of 360dialog's two WhatsApp API dialects a channel speaks."""

    ONPREM = "onprem"
    CLOUD = "cloud"


class State(StrEnum):
    """`outbox.messages.state`, as the contract defines it."""

    QUEUED = "queued"
    SENDING = "sending"
    UNKNOWN = "unknown"
    ACCEPTED = "accepted"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class SentAs(StrEnum):
    FREEFORM = "freeform"
    TEMPLATE = "template"
    FALLBACK_TEMPLATE = "fallback_template"


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    """A row the sender holds under a lease; only what sending needs."""

    id: int
    channel: str
    recipient: str
    payload: Any
    fallback_template: Any
    attempts: int
    created_at: datetime
    expires_at: datetime | None
    # The `sent_as` this claim recorded (the window rule at claim time; a row once sent as its
    # fallback stays with it), or what an earlier attempt chose when nothing will be sent.
    planned: SentAs | None = None
    last_inbound_at: datetime | None = None  # of this recipient on this channel, at claim time
    # Why the payload or fallback_template could not be read faithfully (the row then fails
    # invalid_payload with no request); None when both were.
    unreadable: str | None = None
    # Issue 18: the registry's entry for the template this claim plans to send (None: not a
    # template, or not known); the error of the row's last attempt; until when the channel's
    # marketing traffic is held (131048), at claim time.
    template: TemplateInfo | None = None
    last_error: str | None = None
    marketing_hold_until: datetime | None = None
    priority: int = 0  # the producer's; rows claimed ahead wait for a request slot by it


@dataclass(frozen=True, slots=True)
class Claim:
    """What one claim on a channel got."""

    messages: list[ClaimedMessage]
    # Seconds until the channel may claim again: its bucket is empty or it is held. None when
    # it still has tokens (fewer rows were ready than it could have sent).
    wait: float | None
    rate: float  # the channel's effective rate, per second
    # The channel's pause epoch when claimed: a failure of these rows may pause only that epoch
    # (a success recorded since, in any replica, makes them old news).
    pause_epoch: int = 0
    # Issue 18: rows the claim held back with no request (a paused template; marketing while
    # the channel's is held), already written back, with their results, for logs and metrics.
    held: list[tuple[ClaimedMessage, SendResult]] = field(default_factory=list)
    # The channel had more rows ready than it was granted: worth claiming again before asking
    # which channels are due (issue 16).
    more: bool = False


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the sender writes back for one claimed row.

    `attempts_delta` undoes the attempt charged at claim time for outcomes that must not count
    (a request that never left this process).
    """

    message_id: int
    state: State
    at: datetime
    wamid: str | None = None
    sent_as: SentAs | None = None
    error_code: str | None = None
    error_title: str | None = None
    error_detail: str | None = None
    next_attempt_at: datetime | None = None
    attempts_delta: int = 0
    pace_until: datetime | None = None  # no other message to this recipient before then
    # A phone number and the BSUID a send answer named for the user, learned as a pair (the
    # phone is the answer's `wa_id`, else the row's own key when that is a number).
    answer_wa_id: str | None = None
    answer_bsuid: str | None = None
    # Issue 18: the paused template (templates.id) the row now waits for; the send answer's
    # `message_status`; a 131050 to record as the user's marketing opt-out; a 131056 that
    # grows the recipient's pause.
    held_template: int | None = None
    message_status: str | None = None
    opt_out: bool = False
    pace_strike: bool = False
