"""What the read verbs and dry runs print with `--json` (issue 19 §4): one JSON document on
stdout, with the keys README.md lists under "Scripting with --json" (a test holds them equal).

Keys are always present (null or 0 when there is nothing), so a script never has to guess
whether a key is missing or the state simply did not occur.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from outbox.domain.models import State

if TYPE_CHECKING:
    from outbox.db.inspection import ChannelStats
    from outbox.db.templates import TemplateHealth
    from outbox.domain.operations import Purged
    from outbox.services.operations import Tally


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document with the keys README.md lists (Scripting with --json)",
    )


def dump(value: Any) -> str:
    """Times as ISO 8601, anything else unusual as text: output never fails on a value."""
    return orjson.dumps(value, default=str, option=orjson.OPT_INDENT_2).decode()


def _when(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def stats(
    channels: list[ChannelStats],
    recent_minutes: float,
    templates: list[TemplateHealth],
    accounts: list[dict[str, Any]],
    events: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "recent_minutes": recent_minutes,
        "channels": [
            {
                "channel": c.channel,
                # Every state, 0 when none: the columns never depend on what exists.
                "states": {s.value: c.states.get(s.value, 0) for s in State},
                "recent": c.recent,
                "oldest_due_seconds": c.oldest_due_seconds,
                "paused": c.paused,
                "paused_until": _when(c.paused_until),
                "pause_reason": c.pause_reason,
                "throttled": c.held,
                "rate": c.rate,
            }
            for c in channels
        ],
        "templates": [
            {
                "waba_id": t.key.waba_id,
                "name": t.key.name,
                "language": t.key.language,
                "status": t.status,
                "category": t.category,
                "quality": t.quality,
                "held_rows": t.held_rows,
                "updated_at": _when(t.updated_at),
            }
            for t in templates
        ],
        "accounts": accounts,
        "events": events,
    }


def message(
    row: dict[str, Any],
    history: list[dict[str, Any]],
    actions: list[dict[str, Any]],
    waiting: str | None,
    opt_outs: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "message": row,
        "waits_for": waiting,
        "opt_outs": opt_outs,
        "actions": actions,
        "history": history,
    }


def tally(tally: Tally, *, dry_run: bool) -> dict[str, Any]:
    """A replay's or cancel's table and summary; `done` is what it did (0 on a dry run)."""
    acted = tally.acted - tally.changed
    return {
        "verb": tally.verb.value,
        "dry_run": dry_run,
        "rows": [
            {
                "id": candidate.id,
                "channel": candidate.channel,
                "state": candidate.state.value,
                "error_code": candidate.error_code,
                "attempts": candidate.attempts,
                "action": tally.verb.value if decision.act else "skip",
                "reason": decision.reason,
            }
            for candidate, decision in tally.shown
        ],
        "unshown": tally.unshown,
        "would": tally.acted if dry_run else acted,
        "done": 0 if dry_run else acted,
        "may_arrive_twice": tally.twice,
        "changed_meanwhile": tally.changed,
        "skipped": dict(tally.skipped.most_common()),
    }


def purge(
    cutoff: datetime, counts: dict[Purged, int], deleted: dict[Purged, int] | None
) -> dict[str, Any]:
    return {
        "cutoff": cutoff.isoformat(),
        "dry_run": deleted is None,
        "older": {table.value: count for table, count in counts.items()},
        "deleted": {table.value: (deleted or {}).get(table, 0) for table in counts},
    }


def templates(found: list[TemplateHealth]) -> list[dict[str, Any]]:
    return list(stats([], 0, found, [], [])["templates"])
