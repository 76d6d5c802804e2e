"""In-memory stand-ins for the channel registry, the Partner API and a number's API host."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from outbox.config import ChannelConfig, Secret
from outbox.domain.partner import CanSend, Health
from outbox.errors import StatementRejected
from outbox.ports.partner import ChannelPage, IssuedKey, PartnerApiError, PartnerChannel
from outbox.ports.registry import RegisteredChannel


class FakeRegistry:
    def __init__(self, *channels: RegisteredChannel) -> None:
        self.rows = {c.config.id: c for c in channels}
        self.enabled_log: list[tuple[str, bool]] = []
        self.fail_on: set[str] = set()  # method names that raise

    def _maybe_fail(self, name: str) -> None:
        if name in self.fail_on:
            raise StatementRejected(f"{name} refused")

    async def get(self, channel_id: str) -> RegisteredChannel | None:
        return self.rows.get(channel_id)

    async def by_partner_channel(self, partner_channel_id: str) -> RegisteredChannel | None:
        return next(
            (r for r in self.rows.values() if r.config.partner_channel_id == partner_channel_id),
            None,
        )

    async def add(self, channel: ChannelConfig, *, enabled: bool) -> None:
        self._maybe_fail("add")
        if channel.id in self.rows:
            raise StatementRejected("id taken")
        self.rows[channel.id] = RegisteredChannel(channel, enabled, from_file=False)

    async def set_api_key(self, channel_id: str, api_key: Secret) -> None:
        self._maybe_fail("set_api_key")
        row = self.rows[channel_id]
        self.rows[channel_id] = replace(row, config=replace(row.config, api_key=api_key))

    async def set_enabled(self, channel_id: str, enabled: bool) -> None:
        self._maybe_fail("set_enabled")
        self.enabled_log.append((channel_id, enabled))
        self.rows[channel_id] = replace(self.rows[channel_id], enabled=enabled)


@dataclass
class FakeHub:
    """The Partner API and the numbers' hosts in one: keys it issues revoke older ones."""

    channels: list[PartnerChannel] = field(default_factory=list)
    valid_keys: dict[str, str] = field(default_factory=dict)  # key -> partner channel id
    webhooks: dict[str, str] = field(default_factory=dict)  # key -> url
    forbidden: set[str] = field(default_factory=set)
    health_of: dict[str, CanSend] = field(default_factory=dict)  # partner channel id -> state
    # Errors to raise, per call name, one per call, in order.
    errors: dict[str, list[PartnerApiError]] = field(default_factory=dict)
    issued: int = 0
    pages: list[tuple[int, int]] = field(default_factory=list)
    lose_answer: bool = False  # create the key, then fail as if the answer never came

    def _scripted(self, name: str) -> None:
        queue = self.errors.get(name)
        if queue:
            raise queue.pop(0)

    async def list_channels(
        self, filters: Mapping[str, str], *, offset: int, limit: int
    ) -> ChannelPage:
        self._scripted("list")
        self.pages.append((offset, limit))
        matching = [c for c in self.channels if all(getattr(c, k) == v for k, v in filters.items())]
        return ChannelPage(tuple(matching[offset : offset + limit]), len(matching))

    async def create_api_key(self, partner_channel_id: str) -> IssuedKey:
        self._scripted("create")
        if partner_channel_id in self.forbidden:
            raise PartnerApiError(403, "no partner permission")
        self.issued += 1
        key = f"key-{partner_channel_id}-{self.issued}"
        for old in [k for k, c in self.valid_keys.items() if c == partner_channel_id]:
            del self.valid_keys[old]
            self.webhooks.pop(old, None)
        self.valid_keys[key] = partner_channel_id
        if self.lose_answer:
            raise PartnerApiError(None, "timed out")
        return IssuedKey(Secret(key), "https://waba-v2.360dialog.io")

    def _check(self, channel: ChannelConfig) -> str:
        owner = self.valid_keys.get(channel.api_key.reveal())
        if owner is None:
            raise PartnerApiError(401, "invalid key")
        return owner

    async def set_webhook(self, channel: ChannelConfig, url: str) -> None:
        self._scripted("webhook")
        self._check(channel)
        self.webhooks[channel.api_key.reveal()] = url

    async def health(self, channel: ChannelConfig) -> Health:
        owner = self._check(channel)
        self._scripted("health")
        state = self.health_of.get(owner, CanSend.AVAILABLE)
        return Health(state, ("blocked by Meta",) if state is CanSend.BLOCKED else ())


async def no_sleep(seconds: float) -> None:
    del seconds
