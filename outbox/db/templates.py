"""The template registry (`outbox.templates`) and the rows held for a paused template.

A status only moves forward in time: an event older than the one the status came from is
recorded for its category and quality but leaves the status alone. A template that becomes
active again sends its held rows back to the queue in the same transaction, and wakes the
senders, so they go within a claim of the change, in every replica.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Unpack

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from outbox.db.errors import translated
from outbox.db.sql import WAKE_SENDERS
from outbox.domain import templates
from outbox.domain.models import ClaimedMessage, SentAs
from outbox.domain.templates import TemplateEvent, TemplateInfo, TemplateKey

_HELD = ", ".join(f"'{status}'" for status in sorted(templates.HELD_STATUSES))

# COALESCE keeps what an event did not carry (a quality update has no category). The status is
# written only by an event as new as the one it came from (or one without a time: an operator).
_NEWER = (
    "(excluded.status IS NOT NULL AND (t.status_at IS NULL OR excluded.status_at IS NULL"
    " OR excluded.status_at >= t.status_at))"
)
UPSERT_TEMPLATE = text(
    f"""
    WITH old AS (
        SELECT id, status FROM outbox.templates
        WHERE waba_id = :waba_id AND name = :name AND language = :language
    ), up AS (
        INSERT INTO outbox.templates AS t
            (waba_id, name, language, template_id, status, category, quality, reason, status_at,
             source)
        VALUES (:waba_id, :name, :language, :template_id, :status, :category, :quality, :reason,
                CASE WHEN CAST(:status AS text) IS NOT NULL THEN CAST(:at AS timestamptz) END,
                :source)
        ON CONFLICT (waba_id, name, language) DO UPDATE SET
            template_id = coalesce(excluded.template_id, t.template_id),
            category = coalesce(excluded.category, t.category),
            quality = coalesce(excluded.quality, t.quality),
            status = CASE WHEN {_NEWER} THEN excluded.status ELSE t.status END,
            reason = CASE WHEN {_NEWER} THEN excluded.reason ELSE t.reason END,
            status_at = CASE WHEN {_NEWER} THEN excluded.status_at ELSE t.status_at END,
            source = CASE WHEN {_NEWER} THEN excluded.source ELSE t.source END,
            updated_at = now()
        RETURNING t.id, t.status, t.category, t.quality
    )
    SELECT up.id, up.status, up.category, up.quality, old.status AS previous
    FROM up LEFT JOIN old ON old.id = up.id
    """
)

# Held rows back to the line, as if never tried: the claim's ready index takes them again.
RELEASE_HELD = text(
    """
    UPDATE outbox.messages
    SET held_template = NULL, next_attempt_at = NULL, updated_at = now()
    WHERE held_template = :id AND state = 'queued'
    """
)

LOOKUP = text(
    """
    SELECT t.id, t.waba_id, t.name, t.language, t.status, t.category, t.quality
    FROM outbox.templates AS t
    JOIN unnest(CAST(:wabas AS text[]), CAST(:names AS text[]), CAST(:languages AS text[]))
        AS k(waba_id, name, language)
        ON t.waba_id = k.waba_id AND t.name = k.name AND t.language = k.language
    """
)

MATCHING = text(
    """
    SELECT waba_id, name, language FROM outbox.templates
    WHERE name = :name
      AND (CAST(:language AS text) IS NULL OR language = :language)
      AND (CAST(:waba_id AS text) IS NULL OR waba_id = :waba_id)
    ORDER BY waba_id, language
    """
)

HELD_COUNTS = text(
    f"""
    SELECT t.waba_id, t.name, t.language, t.status, t.category, t.quality, t.updated_at,
           (SELECT count(*) FROM outbox.messages AS m
            WHERE m.held_template = t.id AND m.state = 'queued') AS held_rows
    FROM outbox.templates AS t
    ORDER BY t.status IN ({_HELD}) DESC, t.waba_id, t.name, t.language
    LIMIT :limit
    """
)


@dataclass(frozen=True, slots=True)
class TemplateRecorded:
    """What recording a template event did."""

    info: TemplateInfo
    previous_status: str | None
    released: int  # held rows sent back to the queue


@dataclass(frozen=True, slots=True)
class TemplateHealth:
    key: TemplateKey
    status: str | None
    category: str | None
    quality: str | None
    updated_at: datetime
    held_rows: int


async def record_template(
    connection: AsyncConnection, key: TemplateKey, **event: Unpack[TemplateEvent]
) -> TemplateRecorded:
    """Upsert one template inside the caller's transaction (the reconciler's unit of work);
    a template that is no longer held releases its rows and wakes the senders."""
    reason = event.get("reason")
    params = {
        "waba_id": key.waba_id[: templates.WABA_LIMIT],
        "name": key.name[: templates.NAME_LIMIT],
        "language": key.language[: templates.LANGUAGE_LIMIT],
        "template_id": event.get("template_id"),
        "status": templates.value(event.get("status")),
        "category": templates.value(event.get("category")),
        "quality": templates.value(event.get("quality")),
        "reason": reason[: templates.REASON_LIMIT] if reason else None,
        "at": event.get("at"),
        "source": event["source"],
    }
    row = (await connection.execute(UPSERT_TEMPLATE, params)).one()
    info = TemplateInfo(row.id, row.status, row.category, row.quality)
    released = 0
    if not info.held:
        released = (await connection.execute(RELEASE_HELD, {"id": row.id})).rowcount
        if released:
            await connection.execute(WAKE_SENDERS)
    return TemplateRecorded(info, row.previous, released)


async def lookup_in(
    connection: AsyncConnection, keys: Collection[tuple[str, str, str]]
) -> dict[tuple[str, str, str], TemplateInfo]:
    """The known entries of `keys` ((WABA, name, language) triples), in one statement."""
    if not keys:
        return {}
    triples = sorted(set(keys))
    params = {
        "wabas": [waba for waba, _, _ in triples],
        "names": [name for _, name, _ in triples],
        "languages": [language for _, _, language in triples],
    }
    rows = (await connection.execute(LOOKUP, params)).all()
    return {
        (row.waba_id, row.name, row.language): TemplateInfo(
            row.id, row.status, row.category, row.quality
        )
        for row in rows
    }


def _planned_template(message: ClaimedMessage) -> tuple[str, str] | None:
    if message.planned is SentAs.FALLBACK_TEMPLATE:
        return templates.template_of(message.fallback_template)
    if message.planned is SentAs.TEMPLATE:
        return templates.template_of(message.payload)
    return None


@dataclass(frozen=True, slots=True)
class Scoped:
    """One channel's claimed rows, where its templates live, and its marketing hold."""

    waba_id: str
    messages: Sequence[ClaimedMessage]
    marketing_hold_until: datetime | None


async def with_policy(
    connection: AsyncConnection, channels: Mapping[str, Scoped]
) -> dict[str, list[ClaimedMessage]]:
    """Each channel's claimed rows with their planned template's registry entry and the
    channel's marketing hold: one lookup for the whole claim, inside its transaction (one per
    channel cost a campaign spread over a partner's numbers a round trip per number)."""
    planned = {
        m.id: (scoped.waba_id, *key)
        for scoped in channels.values()
        for m in scoped.messages
        if (key := _planned_template(m)) is not None
    }
    found = await lookup_in(connection, planned.values())
    entries = {id_: found.get(key) for id_, key in planned.items()}
    return {channel: _informed(scoped, entries) for channel, scoped in channels.items()}


def _informed(scoped: Scoped, entries: Mapping[int, TemplateInfo | None]) -> list[ClaimedMessage]:
    hold = scoped.marketing_hold_until
    return [
        m
        if (entry := entries.get(m.id)) is None and hold is None
        else replace(m, template=entry, marketing_hold_until=hold)
        for m in scoped.messages
    ]


class TemplateStore:
    """The registry as the sender, the operator verbs and the webhook reconciler use it."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @translated
    async def record(self, key: TemplateKey, **event: Unpack[TemplateEvent]) -> TemplateRecorded:
        """Upsert a template's status, category and quality (each only when given)."""
        async with self._engine.begin() as connection:
            return await record_template(connection, key, **event)

    async def paused(self, key: TemplateKey) -> int:
        """A 132015 answer: the template is paused (its id, for the rows it holds)."""
        recorded = await self.record(key, source="send", status="PAUSED")
        return recorded.info.id

    @translated
    async def lookup(
        self, waba_id: str, names: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], TemplateInfo]:
        """The entries of `names` ((name, language) pairs) under `waba_id` that are known."""
        async with self._engine.connect() as connection:
            found = await lookup_in(connection, [(waba_id, *name) for name in names])
        return {(name, language): info for (_, name, language), info in found.items()}

    @translated
    async def resume(
        self, name: str, *, language: str | None = None, waba_id: str | None = None
    ) -> list[TemplateRecorded]:
        """An operator says the template is active again (every language and WABA unless
        narrowed): its held rows go back to the queue at once."""
        params = {"name": name, "language": language, "waba_id": waba_id}
        async with self._engine.begin() as connection:
            keys = [
                TemplateKey(row.waba_id, row.name, row.language)
                for row in (await connection.execute(MATCHING, params)).all()
            ]
            return [
                await record_template(connection, key, source="operator", status=templates.ACTIVE)
                for key in keys
            ]

    @translated
    async def health(self, limit: int = 100) -> list[TemplateHealth]:
        """Templates, held ones first, with how many rows each holds (`outbox stats`)."""
        async with self._engine.connect() as connection:
            rows = (await connection.execute(HELD_COUNTS, {"limit": limit})).all()
        return [
            TemplateHealth(
                TemplateKey(row.waba_id, row.name, row.language),
                row.status,
                row.category,
                row.quality,
                row.updated_at,
                row.held_rows,
            )
            for row in rows
        ]
