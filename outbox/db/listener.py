"""LISTEN/NOTIFY as a hint: wakes the sender within milliseconds, reconnects when dropped.

Polling stays the fallback, so a dead listener slows wake-ups but never stops sending. After
every (re)connect the callback fires once, because rows inserted while we were not listening
sent their notification to nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from outbox.db.engine import connect
from outbox.db.errors import is_driver_error
from outbox.loops import Backoff, wait_any

log = structlog.get_logger("outbox.listener")

HEALTH_CHECK_SECONDS = 5.0  # a silent dead connection is noticed within this time
_RECONNECT_FIRST_SECONDS = 0.2
_RECONNECT_CAP_SECONDS = 5.0


class NotifyListener:
    def __init__(self, dsn: str, callbacks: Mapping[str, Callable[[str], None]]) -> None:
        """`callbacks`: what to call with a notification's payload, by NOTIFY channel ('' on
        each connect: whatever was notified while disconnected is looked for then)."""
        self._dsn = dsn
        self._callbacks = dict(callbacks)
        self.connected = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff(first=_RECONNECT_FIRST_SECONDS, cap=_RECONNECT_CAP_SECONDS)
        while not stop.is_set():
            try:
                await self._listen(stop)
                backoff.succeeded()
                continue
            except Exception as exc:
                if not is_driver_error(exc):
                    raise
                self._disconnected(exc)
            await wait_any(stop, timeout=backoff.failed())

    def _disconnected(self, exc: BaseException) -> None:
        self.connected.clear()
        log.warning("outbox.listener.disconnected", error=f"{type(exc).__name__}: {exc}")

    async def _listen(self, stop: asyncio.Event) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancellation that
        # arrives as the awaited call completes, and the task would run on.
        async with asyncio.timeout(10):
            connection = await connect(self._dsn, role="listener")
        lost = asyncio.Event()
        try:
            connection.add_termination_listener(lambda _: lost.set())
            for channel in self._callbacks:
                await connection.add_listener(channel, self._notified)
            self.connected.set()
            log.info("outbox.listener.connected", channels=sorted(self._callbacks))
            for callback in self._callbacks.values():
                callback("")
            while not stop.is_set() and not lost.is_set():
                await wait_any(stop, lost, timeout=HEALTH_CHECK_SECONDS)
                if not stop.is_set() and not lost.is_set():
                    async with asyncio.timeout(HEALTH_CHECK_SECONDS):
                        await connection.fetchval("SELECT 1")
            if lost.is_set() and not stop.is_set():
                raise ConnectionError("listener connection terminated")
        finally:
            self.connected.clear()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await connection.close()

    def _notified(self, _connection: Any, _pid: int, channel: str, payload: str) -> None:
        self._callbacks[channel](payload)
