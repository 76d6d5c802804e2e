"""What a queued row waits for, in words, for `outbox show`: the rule the claim applies, read
back for one row (its line's head, a newer row of its line in flight, its own schedule, its
recipient's pace)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Waiting:
    state: str
    now: datetime
    send_after: datetime
    next_attempt_at: datetime | None = None
    head_id: int | None = None  # the oldest open row ahead of it in its line
    head_state: str | None = None
    head_next_attempt_at: datetime | None = None
    in_flight_id: int | None = None  # a newer row of its line in flight
    pace_until: datetime | None = None  # its recipient's pair pacing
    # Issue 18: the paused template it waits for (name, language, status); held by the
    # channel's marketing hold (131048).
    held_template: str | None = None
    marketing_held: bool | None = None


def _at(value: datetime) -> str:
    return value.isoformat(timespec="seconds")


def waits_for(w: Waiting) -> str | None:
    """None for a row that is not queued; otherwise the first thing that holds it back."""
    if w.state != "queued":
        return None
    if w.head_id is not None:
        retry = w.head_next_attempt_at
        due = f", next attempt {_at(retry)}" if retry is not None and retry > w.now else ""
        return f"message {w.head_id} ahead in its line ({w.head_state}{due})"
    if w.in_flight_id is not None:
        return f"message {w.in_flight_id}, newer in its line, in flight"
    if w.held_template is not None:
        return f"template {w.held_template} to be active again"
    if w.marketing_held and w.next_attempt_at is not None and w.next_attempt_at > w.now:
        return f"the channel's marketing hold (131048) until {_at(w.next_attempt_at)}"
    if w.next_attempt_at is not None and w.next_attempt_at > w.now:
        own = "its send_after" if w.next_attempt_at == w.send_after else "its retry"
        return f"{own} at {_at(w.next_attempt_at)}"
    if w.pace_until is not None and w.pace_until > w.now:
        return f"its recipient's pace until {_at(w.pace_until)}"
    return "nothing: due now (next claim)"
