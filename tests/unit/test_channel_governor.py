"""The governor's per-channel state as channels come and go (issue 16: 10,000 of them)."""

from __future__ import annotations

import gc
import time
import tracemalloc

from outbox.config import ChannelConfig, SenderConfig
from outbox.ports import NullSendObserver
from outbox.services.channels import ChannelGovernor
from tests.fakes import InMemoryMessageStore
from tests.unit.test_sender_slots import _channel


def _governor(channels: list[ChannelConfig]) -> ChannelGovernor:
    return ChannelGovernor(
        InMemoryMessageStore(),
        channels,
        SenderConfig(),
        worker="w",
        observer=NullSendObserver(),
        monotonic=time.monotonic,
        on_resume=lambda: None,
    )


def test_a_kept_channel_keeps_its_breaker_and_every_breaker_shares_the_cooldowns() -> None:
    """Two floats a breaker were 480 kB at 10,000 channels; every `track` (each registry
    change) built a breaker for every channel and threw the kept ones' away."""
    channels = [_channel(f"c{n}") for n in range(3)]
    governor = _governor(channels)
    first, second = governor.breakers["c0"], governor.breakers["c1"]
    assert first.cooldown is second.cooldown
    assert first.max_cooldown is second.max_cooldown
    assert (first.cooldown, first.max_cooldown) == (30.0, 600.0)
    governor.track([*channels[:2], _channel("c9")])
    assert governor.breakers["c0"] is first
    assert sorted(governor.breakers) == ["c0", "c1", "c9"]
    assert governor.breakers["c9"].cooldown is first.cooldown


async def test_a_channel_starts_once_while_tracked_and_again_once_it_came_back() -> None:
    channels = [_channel(f"c{n}") for n in range(3)]
    governor = _governor(channels)
    assert sorted(await governor.start()) == ["c0", "c1", "c2"]
    governor.track(channels)
    assert await governor.start() == {}
    governor.track(channels[:2])  # c2 removed (disabled) ...
    governor.track([*channels, _channel("c3")])  # ... and back, beside a new one
    assert sorted(await governor.start()) == ["c2", "c3"]
    assert await governor.start() == {}


async def test_the_state_of_10000_channels_stays_small() -> None:
    """Issue 16: the breakers' two cooldown floats each and a set of the started channels'
    ids beside the other per-channel maps: 4.0 MB at 10,000 channels, 3.1 MB without them. A
    breaker's attributes are slots: in a dict, the same breakers took 3.56 MB after the rest of
    the suite had run (an instance dict can lose its shared keys) and 3.0 MB alone."""
    channels = [_channel(f"c{n:05d}") for n in range(10_000)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        governor = _governor(channels)
        assert len(await governor.start()) == 10_000
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 3_300_000, kept
