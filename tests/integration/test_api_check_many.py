"""`outbox check` at a partner's scale: every channel's key is asked about, and a request's
timeout covers the request, not the wait behind the others (HTTP on loopback)."""

from __future__ import annotations

from datetime import timedelta

from outbox.cli.api_check import CONNECTIONS, check_channels
from outbox.config import ChannelConfig, Secret
from outbox.domain.models import Dialect
from outbox.sandbox import Sandbox

LATENCY = 0.2  # seconds a request
TIMEOUT = timedelta(seconds=4 * LATENCY)


async def test_many_channels_are_checked_without_timing_out_in_the_queue() -> None:
    """Ten waves of CONNECTIONS requests at 200 ms take 2 s, more than the 0.8 s timeout: the
    channels after the first waves were reported "not checked" (TimeoutError) though the
    API answered each request in 200 ms."""
    count = 10 * CONNECTIONS
    sandbox = Sandbox({"key": "label"}, latency=LATENCY, statuses=False)
    base_url = await sandbox.start()
    try:
        channels = [
            ChannelConfig(f"c{n:03d}", Dialect.CLOUD, base_url, Secret("key")) for n in range(count)
        ]
        checks = await check_channels(channels, TIMEOUT)
    finally:
        await sandbox.stop()
    assert [c.channel for c in checks] == [c.id for c in channels]
    assert {(c.key, c.webhook, c.detail) for c in checks} == {
        ("ok", "none", "no webhook URL is registered")
    }
    assert len(sandbox.requests) == count
