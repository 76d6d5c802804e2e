"""The long-running loops' shared parts: waiting on events, backing off, the periodic skeleton."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from outbox.errors import DatabaseError, StatementInvalid

log = structlog.get_logger("outbox.loops")


# The loops that report to `Health`, by the part name they report as.
PARTS = ("claim", "results", "leases", "maintenance", "reconciler")


class Health:
    """What the long-running parts of this process found wrong and have not yet got past.

    `/readyz` fails while any part is listed, and `on_problem` counts each report (a metric):
    a part that cannot do its work for a reason no waiting cures must not look healthy.
    """

    def __init__(self, on_problem: Callable[[str], None] | None = None) -> None:
        self._on_problem = on_problem
        self._problems: dict[str, str] = {}

    def failing(self, part: str, problem: str) -> None:
        self._problems[part] = problem
        if self._on_problem is not None:
            self._on_problem(part)

    def recovered(self, part: str) -> None:
        self._problems.pop(part, None)

    def problems(self) -> dict[str, str]:
        return dict(self._problems)


def database_failed(
    exc: DatabaseError, *, part: str, event: str, health: Health, **fields: object
) -> None:
    """Report a database error as its kind deserves: an outage is a warning, waited out; a
    statement the database refused for its text is a bug, logged as an ERROR and listed in
    `health` until the part succeeds again. Either way the loop carries on: nothing is lost."""
    if isinstance(exc, StatementInvalid):
        log.error(
            "outbox.db.statement_invalid",
            part=part,
            error=str(exc),
            note="a bug or an unexpected schema: retried, but no wait will cure it",
            **fields,
        )
        health.failing(part, f"a statement was refused: {exc}")
    else:
        log.warning(event, error=str(exc), **fields)


async def wait_any(*events: asyncio.Event, timeout: float | None) -> None:  # noqa: ASYNC109
    """Return when any event is set or `timeout` seconds have passed."""
    if any(event.is_set() for event in events):
        return
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        for waiter in waiters:
            with contextlib.suppress(asyncio.CancelledError):
                await waiter


class Backoff:
    """How long to wait after the n-th failure in a row: doubling from `first` up to `cap`.

    The one answer to "the database is away" for every loop, so they all come back alike.
    """

    def __init__(self, first: float = 0.5, cap: float = 5.0) -> None:
        self._first = first
        self._cap = cap
        self.failures = 0

    def failed(self) -> float:
        """Count a failure; the seconds to wait before the next try."""
        delay = min(self._cap, self._first * 2.0 ** min(self.failures, 32))
        self.failures += 1
        return delay

    def succeeded(self) -> None:
        self.failures = 0


async def run_periodic(
    tick: Callable[[], Awaitable[object]],
    stop: asyncio.Event,
    *,
    every: float,
    name: str,
    health: Health | None = None,
) -> None:
    """Run `tick`, then wait `every` seconds, until `stop`; a database error is reported
    (`database_failed`) and waited out like any interval, never fatal. `name` prefixes the log
    event (`<name>.db_error`) and names the part in `health`.
    """
    health = health or Health()
    part = name.removeprefix("outbox.")
    while not stop.is_set():
        try:
            await tick()
            health.recovered(part)
        except DatabaseError as exc:
            database_failed(exc, part=part, event=f"{name}.db_error", health=health)
        await wait_any(stop, timeout=every)
