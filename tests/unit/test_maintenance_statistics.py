"""The housekeeping's statistics check (migration 0026): every STATISTICS_EVERY, and a role
without EXECUTE on the function is said once and never stops the other jobs."""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta

import structlog.testing

from outbox.config import SenderConfig
from outbox.errors import PrivilegeMissing
from outbox.ports import LINES_START, LineCursor, Settled
from outbox.services.maintenance import Maintenance


class _Store:
    """Housekeeping with nothing to do; counts the statistics checks and the ticks' other jobs."""

    def __init__(self, *, refused: bool = False, analyzed: int | None = None) -> None:
        self.refused, self.analyzed = refused, analyzed
        self.checks = 0
        self.rescues = 0

    async def rescue_expired_leases(self, limit: int = 1000) -> list[Settled]:
        self.rescues += 1
        return []

    async def expire_due(self, limit: int = 1000) -> list[Settled]:
        return []

    async def resend_unknown(
        self, channels: Collection[str], quiet: timedelta, limit: int = 1000
    ) -> int:
        return 0

    async def heartbeat(self, worker: str, channels: frozenset[str]) -> None:
        return None

    async def fail_unknown_channels(
        self,
        known: Collection[str],
        grace: timedelta,
        limit: int = 1000,
        *,
        live: timedelta | None = None,
    ) -> list[Settled]:
        return []

    async def repair_heads(self, after: LineCursor, limit: int = 200) -> tuple[int, LineCursor]:
        return 0, LINES_START

    async def forget_pace(self) -> int:
        return 0

    async def refresh_statistics(self) -> int | None:
        self.checks += 1
        if self.refused:
            raise PrivilegeMissing("permission denied for function refresh_statistics")
        return self.analyzed


def _maintenance(store: _Store) -> Maintenance:
    config = SenderConfig(maintenance_interval=timedelta(seconds=1))
    return Maintenance(store, [], config, worker_id="w")


async def test_statistics_are_checked_every_ten_seconds_of_ticks() -> None:
    store = _Store()
    maintenance = _maintenance(store)
    for _ in range(30):
        await maintenance.tick()
    assert store.checks == 3


async def test_a_refresh_is_logged_with_the_rows_the_table_holds() -> None:
    store = _Store(analyzed=120_000)
    maintenance = _maintenance(store)
    with structlog.testing.capture_logs() as logs:
        for _ in range(10):
            await maintenance.tick()
    [refreshed] = [e for e in logs if e["event"] == "outbox.db.statistics_refreshed"]
    assert refreshed["rows"] == 120_000


async def test_a_role_without_execute_is_told_once_asked_hourly_and_housekeeping_goes_on() -> None:
    store = _Store(refused=True)
    maintenance = _maintenance(store)  # one tick a second
    with structlog.testing.capture_logs() as logs:
        for _ in range(3600 + 10):
            await maintenance.tick()  # never raises
        assert store.checks == 2  # at 10 s, then an hour later
        store.refused = False  # the operator granted EXECUTE: no restart needed
        for _ in range(3600 + 100):
            await maintenance.tick()
    assert store.checks == 2 + 1 + 10  # an hour after the second refusal, then every 10 s
    assert store.rescues == 3610 + 3700
    [said] = [e for e in logs if e["event"] == "outbox.db.statistics_not_checked"]
    assert "EXECUTE" in said["hint"]
