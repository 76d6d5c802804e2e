"""Token-bucket arithmetic; the caller supplies the clock and does any waiting."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """`rate` tokens per second, holding at most `burst`; starts full."""

    rate: float
    burst: float
    tokens: float = field(init=False)
    updated: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and self.rate > 0) or not (
            math.isfinite(self.burst) and self.burst >= 1
        ):
            raise ValueError("rate must be > 0 and burst >= 1")
        self.tokens = self.burst

    def _refill(self, now: float) -> None:
        if self.updated is not None:
            # max(): a clock that steps back must not drain the bucket.
            elapsed = max(0.0, now - self.updated)
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = now

    def take(self, now: float, wanted: int) -> int:
        """Take up to `wanted` whole tokens; returns how many were taken."""
        self._refill(now)
        granted = max(0, min(wanted, int(self.tokens)))
        self.tokens -= granted
        return granted

    def give_back(self, count: int) -> None:
        self.tokens = min(self.burst, self.tokens + count)

    def wait_time(self, now: float) -> float:
        """Seconds until at least one whole token is available."""
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate
