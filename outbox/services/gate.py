"""At most `size` requests at once. The sender claims rows ahead of its free request slots (issue
16: a slot freed when its request ends no longer waits a claim's round trip for its next row);
those rows wait here, the highest priority first, then a new flow's row (a channel with no
other row claimed), then in the order they came."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from types import TracebackType


class RequestGate:
    def __init__(self, size: int) -> None:
        self._size = self._free = size
        self.waiting = 0  # rows waiting for a slot now
        # (-priority, busy, arrival, future): a waiter's future is set when a slot is passed to it.
        self._waiting: list[tuple[int, bool, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @property
    def in_use(self) -> int:
        return self._size - self._free

    def slot(self, priority: int, *, new_flow: bool = False) -> _Slot:
        """`async with gate.slot(priority):` holds one request slot for the block."""
        return _Slot(self, priority, new_flow)

    async def enter(self, priority: int, *, new_flow: bool = False) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (-priority, not new_flow, next(self._arrivals), future))
        self.waiting += 1
        try:
            await future
        except asyncio.CancelledError:
            # Cancelled after a slot was passed to it: the slot goes on to the next in line.
            # Cancelled while waiting, its entry stays in the heap, done, and `leave` skips it.
            if future.done() and not future.cancelled():
                self.leave()
            raise
        finally:
            self.waiting -= 1

    def leave(self) -> None:
        while self._waiting:
            *_, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)  # the slot passes on: `_free` stays as it is
                return
        self._free += 1


class _Slot:
    __slots__ = ("_gate", "_new_flow", "_priority")

    def __init__(self, gate: RequestGate, priority: int, new_flow: bool) -> None:
        self._gate = gate
        self._priority = priority
        self._new_flow = new_flow

    async def __aenter__(self) -> None:
        await self._gate.enter(self._priority, new_flow=self._new_flow)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._gate.leave()
