"""Per-source throttling of failed webhook authentications.

A source (an address) that fails `limit` times within one window is blocked for `block`
seconds: every request from it is answered 429 without checking its credentials, so guessing a
password runs at `limit` tries per window at most. The table is bounded: beyond `capacity`
sources the one seen least recently is forgotten, so a flood of addresses costs memory in
proportion to `capacity`, never to the flood.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Record:
    window_start: float
    failures: int
    blocked_until: float


class FailureThrottle:
    def __init__(
        self, limit: int, *, window: float = 60.0, block: float = 60.0, capacity: int = 10_000
    ) -> None:
        self._limit = limit
        self._window = window
        self._block = block
        self._capacity = capacity
        self._sources: OrderedDict[str, _Record] = OrderedDict()

    def blocked_for(self, source: str, now: float) -> float:
        """Seconds the source must still wait; 0 when it may try."""
        record = self._sources.get(source)
        if record is None or record.blocked_until <= now:
            return 0.0
        return record.blocked_until - now

    def failed(self, source: str, now: float) -> bool:
        """Count a failure; True when it makes the source blocked."""
        record = self._sources.pop(source, None)
        if record is None or now - record.window_start >= self._window:
            record = _Record(now, 0, record.blocked_until if record else 0.0)
        record.failures += 1
        blocked = record.failures >= self._limit
        if blocked:
            record.blocked_until = now + self._block
            record.window_start, record.failures = now, 0
        self._sources[source] = record  # the most recently seen last
        while len(self._sources) > self._capacity:
            self._sources.popitem(last=False)
        return blocked

    def __len__(self) -> int:
        return len(self._sources)
