"""The claim loop's pacing, against in-memory fakes of the store and the API (no I/O to wait on)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from outbox.config import ChannelConfig, Secret, SenderConfig
from outbox.domain import ratelimit
from outbox.domain.models import Claim, ClaimedMessage, Dialect, SendResult
from outbox.domain.ratelimit import Limits
from outbox.domain.request import ApiRequest
from outbox.domain.response import Accepted
from outbox.services.sender import Sender


class FakeStore:
    """The claim's contract with the shared bucket, in memory."""

    def __init__(self, backlog: dict[str, int]) -> None:
        self.backlog = dict(backlog)
        self.claims: Counter[str] = Counter()
        self.completed: list[SendResult] = []
        self._next_id = 0
        self._buckets: dict[str, ratelimit.Bucket] = {}

    async def claim(
        self, channel: str, limit: int, worker: str, lease: timedelta, limits: Limits
    ) -> Claim:
        self.claims[channel] += 1
        now = datetime.now(UTC)
        bucket = self._buckets.get(channel, ratelimit.Bucket(limits.burst, now))
        bucket = ratelimit.refill(bucket, now, limits)
        granted, after = ratelimit.take(bucket, limit)
        count = min(granted, self.backlog.get(channel, 0))
        self._buckets[channel] = ratelimit.give_back(after, granted - count, limits)
        self.backlog[channel] = self.backlog.get(channel, 0) - count
        rows = []
        for _ in range(count):
            self._next_id += 1
            rows.append(
                ClaimedMessage(
                    self._next_id,
                    channel,
                    "4915112345678",
                    {"type": "text", "text": {"body": "x"}},
                    None,
                    1,
                    datetime.now(UTC),
                    None,
                )
            )
        if granted == 0:
            return Claim(rows, ratelimit.wait_time(bucket, limits), limits.rate)
        wait = ratelimit.wait_time(after, limits) if count == granted else None
        return Claim(rows, wait, limits.rate)

    async def slow_down(
        self, channel: str, limits: Limits, hold: timedelta
    ) -> tuple[float, datetime]:
        raise AssertionError("no channel is throttled in these tests")

    async def complete(self, results: Sequence[SendResult], worker: str) -> int:
        self.completed.extend(results)
        return len(results)

    async def set_pause(
        self, channel: str, until: datetime | None, reason: str | None, worker: str
    ) -> None:
        raise AssertionError("no channel is paused in these tests")

    async def release(self, ids: Sequence[int], worker: str) -> int:
        return 0

    async def next_due(self, channel: str) -> datetime | None:
        return None


class FakeApi:
    async def send(self, channel: ChannelConfig, request: ApiRequest) -> Accepted:
        return Accepted(f"wamid.{id(request)}", None)


def _channel(channel_id: str, rate: float) -> ChannelConfig:
    return ChannelConfig(channel_id, Dialect.CLOUD, "http://127.0.0.1:9", Secret("k"), rate)


async def test_a_rate_limited_channel_does_not_make_the_loop_spin() -> None:
    store = FakeStore({"slow": 100})
    sender = Sender(
        store,
        FakeApi(),
        [_channel("slow", 2.0), _channel("idle", 1000.0)],
        SenderConfig(poll_interval=timedelta(seconds=30)),
        worker_id="test",
        channel_state=store,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    await asyncio.sleep(1.0)
    stop.set()
    await task

    # The slow channel waits for tokens (burst 1, then one every 0.5 s); the idle channel is
    # asked once per such wake-up, not in a tight loop.
    assert 2 <= len(store.completed) <= 4
    assert store.claims["idle"] <= 6, store.claims
