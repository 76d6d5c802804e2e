"""A channel disabled or removed while the sender works with it: rows it already claimed are
still sent (the claim committed: a disable stops claiming, requests in flight finish), answers
for it are still written, and the sender keeps running for the other channels."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from outbox.config import ChannelConfig, Secret, SenderConfig
from outbox.domain.models import Claim, Dialect
from outbox.domain.request import ApiRequest
from outbox.domain.response import Accepted
from outbox.ports import ClaimRequest
from outbox.services.sender import Sender
from tests.fakes import AcceptingApi, InMemoryMessageStore


def _channel(channel_id: str) -> ChannelConfig:
    return ChannelConfig(channel_id, Dialect.CLOUD, "http://127.0.0.1:9", Secret("k"), 10_000.0)


class _RemovedDuringClaim(InMemoryMessageStore):
    """The registry drops channel `gone` while its claim is on the way to the database."""

    sender: Sender | None = None

    async def claim_many(
        self,
        requests: Sequence[ClaimRequest],
        worker: str,
        lease: timedelta,
        **options: object,
    ) -> dict[str, Claim]:
        claims = await super().claim_many(requests, worker, lease, **options)  # type: ignore[arg-type]
        if self.sender is not None and any(r.channel == "gone" for r in requests):
            self.sender.set_channels([_channel("kept")])
        return claims


class _RemovedInFlight(AcceptingApi):
    """The registry drops channel `gone` while its requests are out."""

    sender: Sender | None = None

    async def send(self, channel: ChannelConfig, request: ApiRequest) -> Accepted:
        if self.sender is not None and channel.id == "gone":
            self.sender.set_channels([_channel("kept")])
        await asyncio.sleep(0.01)
        return await super().send(channel, request)


def _add(store: InMemoryMessageStore, channel: str, count: int) -> list[int]:
    ids = []
    for n in range(count):
        recipient = f"4915{abs(hash(channel)) % 1000:03}{n:06}"
        ids.append(store.add(channel, recipient, {"type": "text", "text": {"body": "x"}}))
        store.set_last_inbound(channel, recipient, datetime.now(UTC))
    return ids


async def _drain(sender: Sender, store: InMemoryMessageStore, ids: list[int]) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    try:
        for _ in range(300):
            if all(store.rows[i].state.value not in ("queued", "sending") for i in ids):
                break
            assert not task.done(), f"the sender stopped: {task.exception()!r}"
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await task


async def test_rows_claimed_before_their_channel_was_removed_are_still_sent() -> None:
    store, api = _RemovedDuringClaim(), AcceptingApi()
    gone, kept = _add(store, "gone", 5), _add(store, "kept", 5)
    config = SenderConfig(poll_interval=timedelta(seconds=30))
    sender = Sender(
        store, api, [_channel("gone"), _channel("kept")], config, worker_id="w", channel_state=store
    )
    store.sender = sender
    await _drain(sender, store, gone + kept)
    assert [store.rows[i].state.value for i in gone + kept] == ["accepted"] * 10


async def test_an_answer_for_a_channel_removed_in_flight_is_written() -> None:
    store, api = InMemoryMessageStore(), _RemovedInFlight()
    gone, kept = _add(store, "gone", 3), _add(store, "kept", 3)
    config = SenderConfig(poll_interval=timedelta(seconds=30))
    sender = Sender(
        store, api, [_channel("gone"), _channel("kept")], config, worker_id="w", channel_state=store
    )
    api.sender = sender
    await _drain(sender, store, gone + kept)
    assert [store.rows[i].state.value for i in gone + kept] == ["accepted"] * 6
