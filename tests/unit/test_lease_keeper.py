"""The lease renewal loop's timing and reporting, against a store that fails on demand."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest

from outbox.errors import DatabaseUnavailable, StatementInvalid
from outbox.loops import Health
from outbox.ports import Renewed
from outbox.services.leases import LeaseKeeper


class Store:
    def __init__(self, failures: Sequence[Exception]) -> None:
        self.failures = list(failures)
        self.calls: list[tuple[list[int], str, timedelta]] = []

    async def renew(self, ids: Sequence[int], worker: str, lease: timedelta) -> Renewed:
        self.calls.append((list(ids), worker, lease))
        if self.failures:
            raise self.failures.pop(0)
        return Renewed(list(ids), [])


class Stop(Exception):
    """Ends the loop after a number of sleeps."""


def _sleeper(waits: list[float], count: int) -> object:
    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) > count:
            raise Stop

    return sleep


@pytest.mark.parametrize(
    ("lease", "failures", "waits"),
    [
        # Every third of the lease while the database answers.
        (120, 0, [40.0, 40.0, 40.0]),
        # While it is away: a quarter of a second, doubling to at most one, then the rhythm.
        (120, 4, [40.0, 0.25, 0.5, 1.0, 1.0, 40.0]),
        # A lease of 3 s renews every second, and never waits longer than that to retry.
        (3, 3, [1.0, 0.25, 0.5, 1.0, 1.0]),
    ],
)
async def test_renewal_runs_every_third_of_the_lease_and_retries_within_a_second(
    lease: int, failures: int, waits: list[float]
) -> None:
    store = Store([DatabaseUnavailable("down")] * failures)
    seen: list[float] = []
    keeper = LeaseKeeper(
        store,
        "w1",
        timedelta(seconds=lease),
        lambda: [3, 1, 2, 1],
        sleep=_sleeper(seen, len(waits) - 1),  # type: ignore[arg-type]
    )
    with pytest.raises(Stop):
        await keeper.run()
    assert seen == pytest.approx(waits)
    assert store.calls[0] == ([1, 2, 3], "w1", timedelta(seconds=lease))


async def test_nothing_owed_asks_nothing_and_a_refused_statement_fails_readiness() -> None:
    store = Store([StatementInvalid("column does not exist")])
    owed: list[int] = []
    health = Health()
    problems: list[dict[str, str]] = []

    async def sleep(seconds: float) -> None:
        problems.append(health.problems())  # as the previous renewal left it
        if len(problems) == 3:
            raise Stop

    keeper = LeaseKeeper(
        store, "w1", timedelta(seconds=3), lambda: owed, sleep=sleep, health=health
    )
    assert await keeper.renew() == ([], [])
    assert store.calls == []
    owed.append(7)
    with pytest.raises(Stop):
        await keeper.run()
    # Before the first renewal, after the refused one, after the one that worked.
    assert [sorted(p) for p in problems] == [[], ["leases"], []]
