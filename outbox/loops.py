"""The long-running loops' shared parts: waiting on events, backing off, the periodic skeleton."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from outbox.errors import DatabaseError

log = structlog.get_logger("outbox.loops")


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
) -> None:
    """Run `tick`, then wait `every` seconds, until `stop`; a database outage is logged and
    waited out like any interval, never fatal. `name` prefixes the log event (`<name>.db_error`).
    """
    while not stop.is_set():
        try:
            await tick()
        except DatabaseError as exc:
            log.warning(f"{name}.db_error", error=str(exc))
        await wait_any(stop, timeout=every)
