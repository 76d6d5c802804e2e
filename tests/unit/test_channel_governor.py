"""The governor's per-channel state as channels come and go (issue 16: 10,000 of them)."""

from __future__ import annotations

import time

from outbox.config import SenderConfig
from outbox.ports import NullSendObserver
from outbox.services.channels import ChannelGovernor
from tests.fakes import InMemoryMessageStore
from tests.unit.test_sender_slots import _channel


def test_a_kept_channel_keeps_its_breaker_and_every_breaker_shares_the_cooldowns() -> None:
    """Two floats a breaker were 480 kB at 10,000 channels; every `track` (each registry
    change) built a breaker for every channel and threw the kept ones' away."""
    channels = [_channel(f"c{n}") for n in range(3)]
    governor = ChannelGovernor(
        InMemoryMessageStore(),
        channels,
        SenderConfig(),
        worker="w",
        observer=NullSendObserver(),
        monotonic=time.monotonic,
        on_resume=lambda: None,
    )
    first, second = governor.breakers["c0"], governor.breakers["c1"]
    assert first.cooldown is second.cooldown
    assert first.max_cooldown is second.max_cooldown
    assert (first.cooldown, first.max_cooldown) == (30.0, 600.0)
    governor.track([*channels[:2], _channel("c9")])
    assert governor.breakers["c0"] is first
    assert sorted(governor.breakers) == ["c0", "c1", "c9"]
    assert governor.breakers["c9"].cooldown is first.cooldown
