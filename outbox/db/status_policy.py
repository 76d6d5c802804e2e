"""What statuses tell the 2026 policy (issue 18), inside the reconcile batch's transaction: the
per-message pricing written on the rows (and checked against the template registry), the
marketing opt-outs that 131050 failures record, and the rows a 132015 failure holds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import BigInteger, Boolean, DateTime, Text

from outbox.db.arrays import ArrayColumns
from outbox.db.templates import record_template
from outbox.domain import preferences
from outbox.domain.pricing import Priced, Pricing
from outbox.domain.retry import RetryPolicy
from outbox.domain.templates import TemplateKey

# How long a row held by a 132015 status waits before it looks at the registry again (the
# sender's template_recheck default; the reconciler does not read the sender's settings).
_RECHECK_SECONDS = RetryPolicy().template_recheck.total_seconds()

# The template each held row went out as (its payload, or its fallback).
HELD_TEMPLATES = text(
    """
    SELECT m.id, m.channel, sent.t ->> 'name' AS name, sent.t -> 'language' ->> 'code' AS language
    FROM outbox.messages AS m,
         LATERAL (SELECT CASE WHEN m.sent_as = 'fallback_template' THEN m.fallback_template
                              ELSE m.payload END -> 'template' AS t) AS sent
    WHERE m.id = ANY(:ids)
    """
).bindparams(bindparam("ids", type_=ARRAY(BigInteger())))

# Not failed and never charged: the attempt that was dropped is given back.
HOLD_ROWS = text(
    """
    UPDATE outbox.messages
    SET held_template = CAST(:template AS bigint), attempts = greatest(attempts - 1, 0),
        next_attempt_at = now() + make_interval(secs => :recheck), updated_at = now()
    WHERE id = ANY(:ids) AND state = 'queued'
    """
).bindparams(bindparam("ids", type_=ARRAY(BigInteger())))

PRICING_COLUMNS = ArrayColumns(
    (
        ("id", BigInteger()),
        ("category", Text()),
        ("type", Text()),
        ("billable", Boolean()),
    )
)

# The rows are locked already (LOCK_TARGETS). The template a row went out as is read from what
# it sent (its payload, or its fallback when it went out as that).
WRITE_PRICING = PRICING_COLUMNS.statement(
    f"""
    WITH p AS (SELECT * FROM {PRICING_COLUMNS.unnest("p")}), old AS (
        SELECT m.id, m.pricing_category IS NULL AND m.pricing_type IS NULL AS first,
               CASE WHEN m.sent_as = 'fallback_template' THEN m.fallback_template
                    ELSE m.payload END -> 'template' AS template
        FROM outbox.messages AS m JOIN p ON p.id = m.id
    ), up AS (
        UPDATE outbox.messages AS m
        SET pricing_category = coalesce(p.category, m.pricing_category),
            pricing_type = coalesce(p.type, m.pricing_type)
        FROM p WHERE m.id = p.id
        RETURNING m.id, m.channel
    )
    SELECT up.id, up.channel, old.first, t.category AS registry_category
    FROM up JOIN old ON old.id = up.id
    LEFT JOIN unnest(CAST(:scope_channels AS text[]), CAST(:scope_wabas AS text[]))
        AS s(channel, waba_id) ON s.channel = up.channel
    LEFT JOIN outbox.templates AS t
        ON t.waba_id = coalesce(s.waba_id, up.channel) AND t.name = old.template ->> 'name'
       AND t.language = old.template -> 'language' ->> 'code'
    """
)

OPT_OUT_COLUMNS = ArrayColumns((("id", BigInteger()), ("at", DateTime(timezone=True))))
# Keyed on the recipient as written when it is a BSUID, its digits otherwise (as the result
# statement does for a 131050 answer); the newest word wins.
RECORD_OPT_OUTS = OPT_OUT_COLUMNS.statement(
    f"""
    INSERT INTO outbox.marketing_preferences AS o
        (channel, identity, category, opted_out, at, source, evidence)
    SELECT DISTINCT ON (m.channel, identity) m.channel,
           CASE WHEN m.recipient ~ '^[A-Z]{{2}}[.]' THEN m.recipient ELSE m.wa_id END AS identity,
           :category, true, f.at, '131050',
           jsonb_build_object('message_id', m.id, 'wamid', m.wamid, 'error_code', '131050',
                              'via', 'status')
    FROM {OPT_OUT_COLUMNS.unnest("f")} JOIN outbox.messages AS m ON m.id = f.id
    ORDER BY m.channel, identity, f.at DESC
    ON CONFLICT (channel, identity, category) DO UPDATE SET
        opted_out = true, at = excluded.at, source = excluded.source,
        evidence = excluded.evidence, recorded_at = now()
    WHERE excluded.at >= o.at
    """
)


async def write_pricing(
    connection: AsyncConnection, pricing: Mapping[int, Pricing], scopes: Mapping[str, str]
) -> list[Priced]:
    """`scopes`: where each channel's templates live in the registry (its WABA); a channel not
    named uses its own id."""
    rows = [(i, p.category, p.type, p.billable) for i, p in sorted(pricing.items())]
    params = {
        **PRICING_COLUMNS.params(rows),
        "scope_channels": list(scopes),
        "scope_wabas": list(scopes.values()),
    }
    result = (await connection.execute(WRITE_PRICING, params)).all()
    return [Priced(r.channel, r.id, pricing[r.id], r.first, r.registry_category) for r in result]


async def record_opt_outs(connection: AsyncConnection, opt_outs: Mapping[int, datetime]) -> None:
    params = {
        **OPT_OUT_COLUMNS.params(sorted(opt_outs.items())),
        "category": preferences.MARKETING_MESSAGES,
    }
    await connection.execute(RECORD_OPT_OUTS, params)


async def hold_for_templates(
    connection: AsyncConnection, ids: Sequence[int], scopes: Mapping[str, str]
) -> None:
    """Rows a 132015 status sent back to the queue: their template is recorded paused, and
    they wait for it (a row whose template cannot be named only looks again later)."""
    rows = (await connection.execute(HELD_TEMPLATES, {"ids": sorted(ids)})).all()
    by_template: dict[int | None, list[int]] = {}
    for row in rows:
        template_id = None
        if isinstance(row.name, str) and isinstance(row.language, str):
            key = TemplateKey(scopes.get(row.channel, row.channel), row.name, row.language)
            recorded = await record_template(connection, key, source="status", status="PAUSED")
            template_id = recorded.info.id
        by_template.setdefault(template_id, []).append(row.id)
    for template_id, held in by_template.items():
        params = {"template": template_id, "ids": held, "recheck": _RECHECK_SECONDS}
        await connection.execute(HOLD_ROWS, params)
