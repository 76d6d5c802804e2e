"""What `outbox show` and `outbox stats` print: plain text an operator reads in a terminal."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from outbox.db.admin_store import ChannelStats
from outbox.domain.models import State

_ROW_FIELDS = (
    "channel",
    "recipient",
    "state",
    "attempts",
    "sent_as",
    "wamid",
    "priority",
    "error_code",
    "error_title",
    "error_detail",
    "unknown_resends",
    "idempotency_key",
)
_TIMES = (
    "created_at",
    "send_after",
    "next_attempt_at",
    "expires_at",
    "accepted_at",
    "sent_at",
    "delivered_at",
    "read_at",
    "failed_at",
    "updated_at",
)


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds")


def format_message(row: dict[str, Any], history: list[dict[str, Any]]) -> str:
    lines = [f"message {row['id']}"]
    lines += [f"  {name:<16}{row[name]}" for name in _ROW_FIELDS if row.get(name) is not None]
    lines.append("  times")
    lines += [f"    {name:<16}{_when(row[name])}" for name in _TIMES if row.get(name) is not None]
    if row.get("claimed_by"):
        lines.append(f"  leased by {row['claimed_by']} until {_when(row['lease_until'])}")
    lines.append("  payload         " + _short(row["payload"]))
    if row.get("fallback_template") is not None:
        lines.append("  fallback        " + _short(row["fallback_template"]))
    if not history:
        lines.append("  status history  (none)")
        return "\n".join(lines)
    lines.append("  status history")
    for entry in history:
        error = f"  error {entry['error_code']}: {entry['error_title'] or ''}".rstrip()
        lines.append(
            f"    {_when(entry['at'])}  {entry['status']:<10}{entry['verdict']:<14}"
            f"{entry['wamid']}{error if entry['error_code'] else ''}"
        )
    return "\n".join(lines)


def _short(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


_COLUMNS = [s.value for s in State]


def format_stats(stats: list[ChannelStats], recent_minutes: float) -> str:
    if not stats:
        return "no channels configured and no messages"
    shown = [s for s in _COLUMNS if any(c.states.get(s) for c in stats)] or ["queued"]
    header = (
        f"{'channel':<16}"
        + "".join(f"{s:>10}" for s in shown)
        + f"{f'sent/{recent_minutes:g}m':>10}{'oldest due':>12}  health"
    )
    lines = [header]
    for c in stats:
        oldest = "-" if c.oldest_due_seconds is None else _age(c.oldest_due_seconds)
        lines.append(
            f"{c.channel:<16}"
            + "".join(f"{c.states.get(s, 0):>10}" for s in shown)
            + f"{c.recent:>10}{oldest:>12}  {_health(c)}"
        )
    return "\n".join(lines)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _health(c: ChannelStats) -> str:
    if c.paused:
        return f"PAUSED until {_when(c.paused_until)}: {c.pause_reason or ''}".rstrip(": ")
    if c.held:
        return f"throttled (rate {c.rate or 0:g}/s)"
    if c.rate is not None:
        return f"recovering (rate {c.rate:g}/s)"
    return "ok"
