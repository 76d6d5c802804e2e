"""`/readyz` from a cached result (issue 19 section 2).

Checking the database costs queries; a flood of `/readyz` must not turn into a flood of them nor
slow the webhooks that share the event loop. The check runs at most once per `every` seconds,
whatever the number of requests: callers in between get the last result, and callers that
arrive while it runs wait for that one run rather than start their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Check = Callable[[], Awaitable[str | None]]  # None when ready, else the reason


class CachedReadiness:
    def __init__(self, check: Check, every: float, clock: Callable[[], float] = time.monotonic):
        self._check = check
        self._every = every
        self._clock = clock
        self._lock = asyncio.Lock()
        self._at: float | None = None
        self._result: str | None = None

    async def __call__(self) -> str | None:
        if self._fresh():
            return self._result
        async with self._lock:
            if not self._fresh():  # another caller may have refreshed it while this one waited
                self._result = await self._check()
                self._at = self._clock()
        return self._result

    def _fresh(self) -> bool:
        return self._at is not None and self._clock() - self._at < self._every
