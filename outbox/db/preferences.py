"""Users' marketing opt-outs (`outbox.marketing_preferences`): one row per channel, identity and
category, the newest word winning (a stop, then a resume, in whatever order they are recorded)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from outbox.db.errors import translated
from outbox.domain import preferences
from outbox.domain.preferences import Preference

RECORD_PREFERENCE = text(
    """
    INSERT INTO outbox.marketing_preferences AS p
        (channel, identity, category, opted_out, at, source, evidence)
    VALUES (:channel, :identity, :category, :opted_out, :at, :source, :evidence)
    ON CONFLICT (channel, identity, category) DO UPDATE SET
        opted_out = excluded.opted_out, at = excluded.at, source = excluded.source,
        evidence = excluded.evidence, recorded_at = now()
    WHERE excluded.at >= p.at
    RETURNING 1
    """
)

OPT_OUTS = text(
    """
    SELECT channel, identity, category, opted_out, at, source, evidence
    FROM outbox.marketing_preferences
    WHERE channel = :channel AND identity = ANY(CAST(:identities AS text[]))
    ORDER BY category
    """
).columns(evidence=JSONB)

COUNT_OPT_OUTS = text(
    """
    SELECT channel, category, count(*) AS n FROM outbox.marketing_preferences
    WHERE opted_out GROUP BY channel, category
    """
)


@dataclass(frozen=True, slots=True)
class StoredPreference:
    channel: str
    identity: str
    category: str
    opted_out: bool
    at: datetime
    source: str
    evidence: Any


async def record_preference(connection: AsyncConnection, preference: Preference) -> bool:
    """Inside the caller's transaction; False when a newer word is already on record."""
    params = {
        "channel": preference.channel,
        "identity": preference.identity,
        "category": preference.category,
        "opted_out": preference.opted_out,
        "at": preference.at,
        "source": preference.source,
        "evidence": json.dumps(preferences.capped(preference.evidence), default=str),
    }
    return (await connection.execute(RECORD_PREFERENCE, params)).one_or_none() is not None


class PreferenceStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @translated
    async def record(self, preference: Preference) -> bool:
        """Record a user's marketing stop or resume; False if a newer one is on record."""
        async with self._engine.begin() as connection:
            return await record_preference(connection, preference)

    @translated
    async def of(self, channel: str, identities: list[str]) -> list[StoredPreference]:
        """What is on record for these identities (a user's phone number and BSUID)."""
        params = {"channel": channel, "identities": identities}
        async with self._engine.connect() as connection:
            rows = (await connection.execute(OPT_OUTS, params)).all()
        return [StoredPreference(*row) for row in rows]

    @translated
    async def opt_out_counts(self) -> dict[tuple[str, str], int]:
        """Users opted out now, per channel and category (a gauge)."""
        async with self._engine.connect() as connection:
            rows = (await connection.execute(COUNT_OPT_OUTS)).all()
        return {(row.channel, row.category): row.n for row in rows}
