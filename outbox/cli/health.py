"""The account part of `outbox stats`: templates that hold rows, each channel's messaging limit
and quality, and the latest account events (pauses, lifts, alerts)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from outbox.cli.render import format_time

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from outbox.db.templates import TemplateHealth

_TEMPLATES_SHOWN = 20


async def health_data(
    engine: AsyncEngine,
) -> tuple[list[TemplateHealth], list[dict[str, Any]], list[dict[str, Any]]]:
    """Templates (held first), accounts and the latest account events: for text or --json."""
    from outbox.db.account_store import AccountHealthStore
    from outbox.db.templates import TemplateStore

    store = AccountHealthStore(engine)
    templates = await TemplateStore(engine).health(_TEMPLATES_SHOWN)
    return templates, await store.health(), await store.recent_events()


def format_health(
    templates: list[TemplateHealth], accounts: list[dict[str, Any]], events: list[dict[str, Any]]
) -> str:
    lines = ["", "templates (held first):"]
    if not templates:
        lines.append("  none known")
    for t in templates:
        key = f"{t.key.name} ({t.key.language}, WABA {t.key.waba_id})"
        held = f", {t.held_rows} rows held" if t.held_rows else ""
        lines.append(
            f"  {key}: {t.status or 'status unknown'}, {t.category or 'category unknown'}, "
            f"quality {t.quality or 'unknown'}{held}"
        )
    lines += ["", "accounts (messaging limit and quality, from webhooks):"]
    if not accounts:
        lines.append("  nothing reported yet")
    for a in accounts:
        upgraded = a["throughput_upgraded_at"]
        lines.append(
            f"  {a['channel']}: WABA {a['waba_id'] or '?'}, number "
            f"{a['display_phone_number'] or '?'}, quality {a['quality_event'] or '?'}, limit "
            f"{a['current_limit'] or '?'} (was {a['old_limit'] or '?'}), max daily "
            f"{a['max_daily_conversations'] or '?'}, numbers per WABA "
            f"{a['max_phone_numbers'] or '?'}"
            + (f", throughput upgraded {format_time(upgraded)}" if upgraded else "")
        )
    lines += ["", "latest account events:"]
    if not events:
        lines.append("  none")
    for e in events:
        lines.append(
            f"  {format_time(e['at'])} {e['channel']}: {e['event']} -> {e['effect']}"
            + (f" ({e['detail']})" if e["detail"] else "")
        )
    return "\n".join(lines)
