"""Housekeeping that no single send triggers, run by every sender process on an interval.

Each job is one short statement over a small partial index, safe to run from any number of
replicas at once (rows are taken with SKIP LOCKED) and harmless to repeat.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

import structlog

from outbox.config import ChannelConfig, SenderConfig, UnknownPolicy
from outbox.domain.codes import Code
from outbox.errors import StatementInvalid
from outbox.loops import Health, run_periodic
from outbox.ports import LINES_START, Housekeeping, Settled, SettledObserver

log = structlog.get_logger("outbox.maintenance")


# A replica is live while its heartbeat (one per maintenance tick) is at most this old, or three
# ticks, whichever is longer: a replica slowed by a database blip is not taken for gone.
REPLICA_LIVE = timedelta(seconds=30)
# How often the statistics of `outbox.messages` are checked (and refreshed when they call the
# table empty, migration 0026): within seconds of a bulk INSERT, not autovacuum's next visit.
STATISTICS_EVERY = timedelta(seconds=10)
# After the role turned out not to have EXECUTE: asked again this seldom (a GRANT takes effect
# without a restart), and said once.
STATISTICS_REFUSED_EVERY = timedelta(hours=1)
_EXECUTE_HINT = 'grant EXECUTE ON FUNCTION outbox.refresh_statistics() (README "Database roles")'


class Maintenance:
    def __init__(
        self,
        store: Housekeeping,
        channels: Sequence[ChannelConfig],
        config: SenderConfig,
        health: Health | None = None,
        *,
        worker_id: str,
        observer: SettledObserver | None = None,
    ) -> None:
        self._store = store
        self._observer = observer
        self._health = health
        self._worker = worker_id
        self._live = max(REPLICA_LIVE, 3 * config.maintenance_interval)
        self._heads_after = LINES_START  # where the sweep of missed hand-overs goes on from
        self._config = config
        self._statistics_every = max(1, round(STATISTICS_EVERY / config.maintenance_interval))
        self._ticks = 0
        self._statistics_at = self._statistics_every  # the tick of the next check
        self._statistics_refused = False
        # The heartbeat names the file's channels; the registry's are known from the registry
        # itself (the statement that fails rows reads it), in every replica alike.
        self._known = frozenset(c.id for c in channels)
        self.set_channels(channels)

    def set_channels(self, channels: Sequence[ChannelConfig]) -> None:
        """The channels this replica sends for, from now on (the registry changed)."""
        self._resend = frozenset(c.id for c in channels if c.unknown_policy is UnknownPolicy.RESEND)

    async def run(self, stop: asyncio.Event) -> None:
        await run_periodic(
            self.tick,
            stop,
            every=self._config.maintenance_interval.total_seconds(),
            name="outbox.maintenance",
            health=self._health,
        )

    async def tick(self) -> None:
        for row in await self._store.rescue_expired_leases():
            log.warning(
                "outbox.rescue.lease_expired",
                channel=row.channel,
                message_id=row.id,
                state=row.state.value,
            )
        expired = await self._store.expire_due()
        for row in expired:
            log.warning(
                "outbox.send.expired", channel=row.channel, message_id=row.id, where="queue"
            )
        self._count(expired, "expired")
        if resent := await self._store.resend_unknown(self._resend, self._config.unknown_quiet):
            log.warning("outbox.unknown.resending", count=resent)
        # During a rolling update old replicas do not know a channel new ones added: a row is
        # failed only for a channel no live replica knows and the registry does not hold.
        # Neither statement names every channel each tick (issue 16): the heartbeat sends the
        # set when it changed, and other replicas are asked only about open rows' channels this
        # one does not know.
        await self._store.heartbeat(self._worker, self._known)
        failed = await self._store.fail_unknown_channels(
            self._known, self._config.unknown_channel_grace, live=self._live
        )
        for row in failed:
            log.error(
                "outbox.send.failed",
                error_code=Code.UNKNOWN_CHANNEL,
                channel=row.channel,
                message_id=row.id,
            )
        self._count(failed, Code.UNKNOWN_CHANNEL.value)
        await self._store.forget_pace()
        repaired, self._heads_after = await self._store.repair_heads(self._heads_after)
        if repaired:
            log.info("outbox.order.heads_repaired", count=repaired)
        self._ticks += 1
        if self._ticks >= self._statistics_at:
            await self._refresh_statistics()

    async def _refresh_statistics(self) -> None:
        """Statistics that call the table empty make every plan pick its indexes blind (a
        claim walked a channel's every row per row it took): analyzed at once, not when
        autovacuum comes back (issue 16)."""
        self._statistics_at = self._ticks + self._statistics_every
        try:
            live = await self._store.refresh_statistics()
        except StatementInvalid as exc:  # no EXECUTE (an upgrade not yet granted), or no 0026
            refused_every = STATISTICS_REFUSED_EVERY / self._config.maintenance_interval
            self._statistics_at = self._ticks + max(1, round(refused_every))
            if not self._statistics_refused:
                self._statistics_refused = True
                log.warning("outbox.db.statistics_not_checked", error=str(exc), hint=_EXECUTE_HINT)
            return
        self._statistics_refused = False
        if live is not None:
            log.warning("outbox.db.statistics_refreshed", table="outbox.messages", rows=live)

    def _count(self, rows: list[Settled], error_class: str) -> None:
        if self._observer is not None and rows:
            self._observer.settled(rows, error_class)
