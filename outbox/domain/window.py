"""WhatsApp's 24-hour customer-service window, and what a row is sent as because of it.

Free-form messages may go out only while the window the user's last message opened is still
open; templates may go out at any time. The rule is applied when a row is dispatched (and so
again before every retry), never when it is enqueued, because a row can wait across the boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from outbox.domain.codes import Title
from outbox.domain.models import SentAs, State

WINDOW = timedelta(hours=24)
DEFAULT_MARGIN = timedelta(minutes=5)  # `window_margin`'s default
TEMPLATE_TYPES = frozenset({"template", "hsm"})


def window_open(last_inbound_at: datetime | None, now: datetime, margin: timedelta) -> bool:
    """Open while `now < last_inbound_at + 24 h - margin`.

    The margin keeps a message from crossing the boundary while in flight and absorbs clock
    skew between this host and WhatsApp's timestamps. An inbound time in the future (the
    sender's clock ahead of ours) simply counts as a recent message.
    """
    return last_inbound_at is not None and now < last_inbound_at + WINDOW - margin


@dataclass(frozen=True, slots=True)
class Content:
    payload: Any
    sent_as: SentAs


@dataclass(frozen=True, slots=True)
class WindowClosed:
    detail: str


def choose_content(
    payload: Any,
    fallback_template: Any,
    *,
    planned: SentAs | None,
    last_inbound_at: datetime | None,
    now: datetime,
    margin: timedelta,
) -> Content | WindowClosed:
    """What to send for a row: its payload, its fallback template, or nothing.

    `planned` is the `sent_as` an earlier attempt chose. Once a row has gone out as its fallback
    it stays with the fallback, so retries never switch the content a user may already have.
    """
    kind = payload.get("type") if isinstance(payload, dict) else None
    if isinstance(kind, str) and kind in TEMPLATE_TYPES:
        return Content(payload, SentAs.TEMPLATE)
    if planned is SentAs.FALLBACK_TEMPLATE and fallback_template is not None:
        return Content(fallback_template, SentAs.FALLBACK_TEMPLATE)
    if window_open(last_inbound_at, now, margin):
        return Content(payload, SentAs.FREEFORM)
    if fallback_template is not None:
        return Content(fallback_template, SentAs.FALLBACK_TEMPLATE)
    if last_inbound_at is None:
        return WindowClosed("no inbound message from this recipient is on record")
    return WindowClosed(f"the recipient last wrote at {last_inbound_at.isoformat()}")


def plan(
    payload: Any,
    fallback_template: Any,
    *,
    previous: SentAs | None,
    last_inbound_at: datetime | None,
    now: datetime,
    margin: timedelta,
) -> SentAs | None:
    """What a claim records the row as about to be sent as (None: nothing will be sent).

    Recorded before the request leaves, so a row whose answer is lost (a crash, a rescued
    lease) still knows what went out when a late status refuses it for a closed window.
    """
    content = choose_content(
        payload,
        fallback_template,
        planned=previous,
        last_inbound_at=last_inbound_at,
        now=now,
        margin=margin,
    )
    return content.sent_as if isinstance(content, Content) else None


@dataclass(frozen=True, slots=True)
class Refused:
    """What a closed window makes of a row WhatsApp refused for it."""

    state: State  # QUEUED: the fallback template goes next; FAILED: nothing is left to send
    sent_as: SentAs | None
    title: Title


def refused_for_closed_window(sent_as: SentAs | None, has_fallback: bool, *, late: bool) -> Refused:
    """A free-form message with a fallback template sends the fallback next (once); anything
    else fails.

    `late`: a status said so after the API had accepted the request (the window "was" closed),
    rather than the API's answer to it (the window "is" closed).
    """
    if sent_as is SentAs.FREEFORM and has_fallback:
        title = Title.WINDOW_WAS_CLOSED_FALLBACK_NEXT if late else Title.WINDOW_CLOSED_FALLBACK_NEXT
        return Refused(State.QUEUED, SentAs.FALLBACK_TEMPLATE, title)
    if sent_as is SentAs.FREEFORM:
        title = Title.WINDOW_CLOSED
    elif late:
        title = Title.FALLBACK_FAILED_CLOSED_WINDOW
    elif sent_as is SentAs.TEMPLATE:
        title = Title.TEMPLATE_REFUSED_CLOSED_WINDOW
    else:
        title = Title.FALLBACK_REFUSED_CLOSED_WINDOW
    return Refused(State.FAILED, sent_as, title)
