"""Housekeeping statements on `outbox.messages` and `recipient_pace`: rows no send will settle.

Each takes its rows with SKIP LOCKED in small batches, so any number of replicas can run them
at once, and each is harmless to repeat.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta
from typing import Any

from sqlalchemy import TextClause, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import Text

from outbox.db.errors import translated
from outbox.db.replicas import FAIL_UNKNOWN_CHANNEL, FIND_OPEN_CHANNELS, HEARTBEAT, KNOWN_ELSEWHERE
from outbox.db.sql import OPEN_STATES, WAKE_SENDERS
from outbox.domain.codes import Code, Title
from outbox.domain.models import State
from outbox.ports import LINES_START, LineCursor, Settled

# A lease that ran out while `sending` means its holder died mid-send, or lost the database
# for longer than the lease: the request may have reached the API, so the row is not resent
# blindly but parked as `unknown` (or `expired`, if it may no longer be sent at all, with
# `expired_unknown`: unlike a row that expired in the queue, it may have arrived). The
# holder stays in `claimed_by`: if it is alive, its renewal takes the row back and its answer
# is written over the rescue, until a resend (which clears `claimed_by`) hands the row on.
RESCUE_LEASES = text(
    """
    WITH lost AS (
        SELECT id FROM outbox.messages
        WHERE state = 'sending' AND lease_until < now()
        ORDER BY lease_until
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE outbox.messages AS m
    SET state = CASE WHEN m.expires_at <= now() THEN 'expired' ELSE 'unknown' END,
        error_code = CASE WHEN m.expires_at <= now() THEN :expired ELSE :lease_expired END,
        error_title = CASE WHEN m.expires_at <= now() THEN :expired_title ELSE :title END,
        error_detail = 'lease held by ' || coalesce(m.claimed_by, '?') || ' expired',
        lease_until = NULL, updated_at = now()
    FROM lost WHERE m.id = lost.id
    RETURNING m.id, m.channel, m.state
    """
)

EXPIRE_MESSAGES = text(
    """
    WITH gone AS (
        SELECT id FROM outbox.messages
        WHERE state = 'queued' AND expires_at <= now()
        ORDER BY expires_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE outbox.messages AS m
    SET state = 'expired', error_code = :code, error_title = :title,
        next_attempt_at = NULL, updated_at = now()
    FROM gone WHERE m.id = gone.id
    RETURNING m.id, m.channel, m.state
    """
)

# After the quiet period an `unknown` row with no evidence is sent once more (channels whose
# policy is "resend"); a row that went `unknown` again after that stays for an operator.
# The row is no longer its old holder's (`claimed_by` cleared): a late answer or renewal of
# the first attempt must not write over the second.
_QUIET_UNKNOWN = """
    state = 'unknown' AND updated_at < now() - make_interval(secs => :quiet_seconds)
    AND unknown_resends < 1"""

# Which channels have quiet `unknown` rows, found by `ix_messages_unknown` alone: the tick asks
# this rather than pass every resending channel each second (issue 16: maintenance costs the
# same with 1 or 10,000 channels); only channels found here are named to RESEND_UNKNOWN.
FIND_QUIET_UNKNOWN = text(f"SELECT DISTINCT channel FROM outbox.messages WHERE {_QUIET_UNKNOWN}")

RESEND_UNKNOWN = text(
    f"""
    WITH quiet AS (
        SELECT id FROM outbox.messages
        WHERE {_QUIET_UNKNOWN} AND channel = ANY(:channels)
        ORDER BY updated_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE outbox.messages AS m
    SET state = CASE WHEN m.expires_at <= now() THEN 'expired' ELSE 'queued' END,
        unknown_resends = m.unknown_resends + 1,
        error_title = CASE WHEN m.expires_at <= now()
            THEN :expired_title
            ELSE :resending_title END,
        error_code = CASE WHEN m.expires_at <= now() THEN :expired_unknown ELSE m.error_code END,
        next_attempt_at = NULL, claimed_by = NULL, lease_until = NULL, updated_at = now()
    FROM quiet WHERE m.id = quiet.id
    """
).bindparams(bindparam("channels", type_=ARRAY(Text())))

# A row inserted behind a head whose end committed before the insert did was not visible to the
# hand-over (triggers see committed rows only): it waits with `head` false behind nobody. This
# walks the lines (channel, recipient, ordering_key) with waiting rows, :limit at a time after
# a cursor (one index probe each), and makes the oldest open row of each its head if it is not,
# on its own schedule, as the hand-over does.
REPAIR_HEADS = text(
    f"""
    WITH RECURSIVE lines(channel, wa_id, ordering_key) AS (
        (SELECT channel, wa_id, ordering_key FROM outbox.messages
         WHERE state = 'queued' AND NOT head
           AND (channel, wa_id, ordering_key) > (:channel, :wa_id, :ordering_key)
         ORDER BY channel, wa_id, ordering_key LIMIT 1)
        UNION ALL
        SELECT n.channel, n.wa_id, n.ordering_key FROM lines, LATERAL (
            SELECT m.channel, m.wa_id, m.ordering_key FROM outbox.messages AS m
            WHERE m.state = 'queued' AND NOT m.head
              AND (m.channel, m.wa_id, m.ordering_key)
                  > (lines.channel, lines.wa_id, lines.ordering_key)
            ORDER BY m.channel, m.wa_id, m.ordering_key LIMIT 1) AS n
    ), batch AS (SELECT * FROM lines LIMIT :limit), fixed AS (
        UPDATE outbox.messages AS m
        SET head = true, updated_at = now(),
            next_attempt_at = CASE WHEN m.send_after > now() THEN m.send_after END
        FROM batch AS b
        WHERE m.id = (SELECT e.id FROM outbox.messages AS e
                      WHERE e.channel = b.channel AND e.wa_id = b.wa_id
                        AND e.ordering_key = b.ordering_key AND e.state IN ({OPEN_STATES})
                      ORDER BY e.id LIMIT 1)
          AND m.state = 'queued' AND NOT m.head
        RETURNING m.id
    )
    SELECT (SELECT count(*) FROM fixed) AS fixed, (SELECT count(*) FROM batch) AS walked,
           last.channel, last.wa_id, last.ordering_key
    FROM (SELECT * FROM batch ORDER BY channel DESC, wa_id DESC, ordering_key DESC LIMIT 1)
         AS last
    RIGHT JOIN (SELECT 1) AS one ON true
    """
)

# The rescue's codes and titles (tests run RESCUE_LEASES with them too).
RESCUE_PARAMS = {
    "expired": Code.EXPIRED_UNKNOWN.value,
    "expired_title": Title.EXPIRED_IN_FLIGHT.value,
    "lease_expired": Code.LEASE_EXPIRED.value,
    "title": Title.LEASE_EXPIRED.value,
}

# A pair that was told 131056 keeps its strikes for an hour after its pause ends: a repeat within
# it grows the next pause (issue 18); a success resets them sooner.
FORGET_PACE = text(
    "DELETE FROM outbox.recipient_pace WHERE not_before < now()"
    " AND (strikes = 0 OR not_before < now() - interval '1 hour')"
)


# Migration 0026: analyzes `outbox.messages` when its statistics are off by more than ten times
# (an ANALYZE during a bulk INSERT leaves them calling the table empty); the live row count when
# it did, else NULL.
REFRESH_STATISTICS = text("SELECT outbox.refresh_statistics()")


class HousekeepingStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._recorded: dict[str, frozenset[str]] = {}  # the channels each heartbeat last wrote

    @translated
    async def rescue_expired_leases(self, limit: int = 1000) -> list[Settled]:
        """Rows whose lease ran out become `unknown` (or `expired`, `expired_unknown`)."""
        return await self._settle(RESCUE_LEASES, {"limit": limit, **RESCUE_PARAMS})

    @translated
    async def expire_due(self, limit: int = 1000) -> list[Settled]:
        """Queued rows past `expires_at` become `expired` without waiting for a claim."""
        params = {"limit": limit, "code": Code.EXPIRED.value, "title": Title.EXPIRED.value}
        return await self._settle(EXPIRE_MESSAGES, params)

    @translated
    async def resend_unknown(
        self, channels: Collection[str], quiet: timedelta, limit: int = 1000
    ) -> int:
        """Send quiet `unknown` rows of `channels` once more. One statement when none is quiet:
        the channels with such rows are found by index, and only those are named."""
        if not channels:
            return 0
        params: dict[str, Any] = {"quiet_seconds": quiet.total_seconds()}
        async with self._engine.connect() as connection:
            found = (await connection.execute(FIND_QUIET_UNKNOWN, params)).scalars().all()
        resending = sorted(c for c in found if c in channels)
        if not resending:
            return 0
        params |= {
            "channels": resending,
            "limit": limit,
            "expired_unknown": Code.EXPIRED_UNKNOWN.value,
            "expired_title": Title.EXPIRED_WHILE_UNKNOWN.value,
            "resending_title": Title.RESENDING_UNKNOWN.value,
        }
        async with self._engine.begin() as connection:
            resent = (await connection.execute(RESEND_UNKNOWN, params)).rowcount
            if resent:
                await connection.execute(WAKE_SENDERS)
        return resent

    @translated
    async def heartbeat(self, worker: str, channels: frozenset[str]) -> None:
        """Record that this replica lives and knows `channels`: the set itself is sent only
        when it differs from the one this store last recorded for `worker`."""
        recorded = self._recorded.get(worker)
        changed = recorded is None or (channels is not recorded and channels != recorded)
        params = {"worker": worker, "channels": sorted(channels) if changed else None}
        async with self._engine.begin() as connection:
            if not (await connection.execute(HEARTBEAT, params)).scalar_one():
                # The row had been forgotten (a day of silence): it is back, with the set.
                params["channels"] = sorted(channels)
                await connection.execute(HEARTBEAT, params)
        self._recorded[worker] = channels

    @translated
    async def fail_unknown_channels(
        self,
        known: Collection[str],
        grace: timedelta,
        limit: int = 1000,
        *,
        live: timedelta | None = None,
    ) -> list[Settled]:
        """Fail queued rows of channels not in `known` (this replica's), not known to a replica
        seen within `live` (when given), nor in the registry (any entry, disabled too: its rows
        wait) once they are `grace` old."""
        async with self._engine.connect() as connection:
            open_channels = (await connection.execute(FIND_OPEN_CHANNELS)).scalars().all()
            strangers = [c for c in open_channels if c not in known]
            if strangers and live is not None:
                params = {"channels": strangers, "live_seconds": live.total_seconds()}
                elsewhere = set((await connection.execute(KNOWN_ELSEWHERE, params)).scalars())
                strangers = [c for c in strangers if c not in elsewhere]
        failed: list[Settled] = []
        for channel in strangers:
            detail = (
                f"channel {channel!r} is not in the registry nor known to any live replica "
                f"(they know: {', '.join(sorted(known)[:20])}"
                f"{', ...' if len(known) > 20 else ''})"
            )
            params = {
                "channel": channel,
                "grace_seconds": grace.total_seconds(),
                "limit": limit,
                "detail": detail,
                "code": Code.UNKNOWN_CHANNEL.value,
                "title": Title.UNKNOWN_CHANNEL.value,
            }
            failed += await self._settle(FAIL_UNKNOWN_CHANNEL, params)
        return failed

    @translated
    async def repair_heads(self, after: LineCursor, limit: int = 200) -> tuple[int, LineCursor]:
        """Make up for hand-overs a commit race missed, for up to `limit` lines after `after`
        (channel, wa_id, ordering_key). Returns how many rows became heads and where to go on
        from (back to the start once the end is reached)."""
        params = {"channel": after[0], "wa_id": after[1], "ordering_key": after[2], "limit": limit}
        async with self._engine.begin() as connection:
            row = (await connection.execute(REPAIR_HEADS, params)).one()
        more = row.walked == limit and row.channel is not None
        return int(row.fixed), (row.channel, row.wa_id, row.ordering_key) if more else LINES_START

    @translated
    async def forget_pace(self) -> int:
        async with self._engine.begin() as connection:
            return (await connection.execute(FORGET_PACE)).rowcount

    @translated
    async def refresh_statistics(self) -> int | None:
        async with self._engine.begin() as connection:
            live: int | None = (await connection.execute(REFRESH_STATISTICS)).scalar_one()
        return live

    async def _settle(self, statement: TextClause, params: dict[str, Any]) -> list[Settled]:
        async with self._engine.begin() as connection:
            rows = (await connection.execute(statement, params)).all()
        return [Settled(row.id, row.channel, State(row.state)) for row in rows]
