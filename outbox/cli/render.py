"""What the operator's commands print: plain text an operator reads in a terminal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from outbox.domain.models import State
from outbox.services.operations import Tally, Verb

if TYPE_CHECKING:
    from outbox.db.inspection import ChannelStats

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
    "replays",
    "idempotency_key",
    # Issue 18: the send answer's message_status, the status webhooks' pricing, the paused
    # template (outbox.templates.id) the row waits for.
    "message_status",
    "pricing_category",
    "pricing_type",
    "held_template",
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
    "replayed_at",
    "updated_at",
)


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds")


format_time = _when  # for the other parts of `outbox stats` (outbox.cli.health)


def format_message(
    row: dict[str, Any],
    history: list[dict[str, Any]],
    actions: list[dict[str, Any]],
    waiting: str | None = None,
    opt_outs: list[dict[str, Any]] | None = None,
) -> str:
    lines = [f"message {row['id']}"]
    lines += [f"  {name:<16}{row[name]}" for name in _ROW_FIELDS if row.get(name) is not None]
    if row.get("ordering_key"):
        lines.append(f"  {'ordering_key':<16}{row['ordering_key']}")
    if waiting is not None:
        lines.append(f"  {'waits for':<16}{waiting}")
    for p in opt_outs or ():
        word = "opted out" if p["opted_out"] else "opted in"
        lines.append(
            f"  {'marketing':<16}{word} ({p['category']}) at {_when(p['at'])}, from {p['source']}"
        )
    lines.append("  times")
    lines += [f"    {name:<16}{_when(row[name])}" for name in _TIMES if row.get(name) is not None]
    if row.get("claimed_by"):
        lines.append(f"  leased by {row['claimed_by']} until {_when(row['lease_until'])}")
    lines.append("  payload         " + _short(row["payload"]))
    if row.get("fallback_template") is not None:
        lines.append("  fallback        " + _short(row["fallback_template"]))
    if actions:
        lines.append(format_actions(actions))
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
    shown = _COLUMNS  # every state, 0 when none: scripts can rely on the columns
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


def format_actions(actions: list[dict[str, Any]]) -> str:
    """The lineage part of `outbox show`: what operators did to the row, and what it was."""
    if not actions:
        return ""
    lines = ["  operator actions"]
    for a in actions:
        was = f"was {a['from_state']} after {a['attempts']} attempts"
        if a["error_code"]:
            was += f", error {a['error_code']}"
        if a["wamid"]:
            was += f", wamid {a['wamid']}"
        forced = " (forced)" if a["forced"] else ""
        note = f": {a['note']}" if a["note"] else ""
        lines.append(f"    {_when(a['at'])}  {a['action']}{forced} by {a['actor']}; {was}{note}")
    return "\n".join(lines)


def format_tally(tally: Tally) -> str:
    """The table of rows a replay or cancel looked at: what it does to each, or why not."""
    header = f"{'id':>10}  {'channel':<14}{'state':<10}{'error':<12}{'att':>4}  {'action':<8}why"
    lines = [header]
    for candidate, decision in tally.shown:
        action = tally.verb.value if decision.act else "skip"
        lines.append(
            f"{candidate.id:>10}  {candidate.channel:<14}{candidate.state.value:<10}"
            f"{candidate.error_code or '-':<12}{candidate.attempts:>4}  {action:<8}"
            f"{decision.reason}"
        )
    if tally.unshown:
        lines.append(f"... and {tally.unshown} more")
    return "\n".join(lines)


_DONE = {Verb.REPLAY: "replayed", Verb.CANCEL: "cancelled"}


def format_summary(tally: Tally, *, dry_run: bool) -> str:
    head = f"would {tally.verb.value}" if dry_run else _DONE[tally.verb]
    lines = [f"{head}: {tally.acted - tally.changed}"]
    if tally.twice:
        lines.append(
            f"of these, may arrive twice (a request may have reached the API): {tally.twice}"
        )
    if tally.changed:
        lines.append(f"left alone, changed while this ran: {tally.changed}")
    for reason, count in tally.skipped.most_common():
        lines.append(f"skipped, {reason}: {count}")
    return "\n".join(lines)


class Progress:
    """A progress bar on a terminal; elsewhere a line per tenth, so logs stay readable."""

    def __init__(self, label: str, total: int, stream: TextIO) -> None:
        self._label, self._total, self._stream = label, total, stream
        self._done = 0
        self._tty = stream.isatty()
        self._reported = 0

    def advance(self, count: int) -> None:
        self._done += count
        share = self._done / self._total if self._total else 1.0
        if self._tty:
            bar = "#" * int(share * 30)
            self._stream.write(
                f"\r{self._label} [{bar:<30}] {self._done}/{self._total} {share:4.0%}"
            )
            self._stream.flush()
        elif int(share * 10) > self._reported:
            self._reported = int(share * 10)
            print(f"{self._label}: {self._done}/{self._total}", file=self._stream)

    def close(self) -> None:
        if self._tty:
            self._stream.write("\n")


_LONGEST = timedelta(days=36525)  # also keeps now ± a duration within the calendar
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: str) -> timedelta:
    """'90s', '15m', '12h', '30d', '2w', or plain seconds."""
    text = value.strip().lower()
    unit = _UNITS.get(text[-1:]) if text else None
    number = text[:-1] if unit else text
    try:
        amount = float(number)
    except ValueError:
        raise ValueError(f"expected a duration like 30m, 12h or 7d, got {value!r}") from None
    if not amount > 0 or amount == float("inf"):
        raise ValueError(f"a duration must be greater than 0, got {value!r}")
    seconds = amount * (unit or 1)
    if seconds > _LONGEST.total_seconds():
        raise ValueError(f"a duration must be at most 100 years, got {value!r}")
    return timedelta(seconds=seconds)


def parse_time(value: str, now: datetime) -> datetime:
    """An ISO 8601 time (UTC when it names no zone), or a duration meaning that long ago."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        try:
            return now - parse_duration(value)
        except ValueError:
            raise ValueError(
                f"expected an ISO 8601 time or a duration ago like 2h, got {value!r}"
            ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
