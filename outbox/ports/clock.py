"""The clocks services are given, so decisions can be tested at any time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

# The wall clock, injected so that decisions can be tested at any time of day.
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The real wall clock, the default `Clock` everywhere."""
    return datetime.now(UTC)


# The monotonic clock (seconds), injected so that pacing and breakers can be tested.
Monotonic = Callable[[], float]
