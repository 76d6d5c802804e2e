"""What the channel workflows (onboarding, key rotation) need from the channel registry."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from outbox.config import ChannelConfig, Secret


@dataclass(frozen=True, slots=True)
class RegisteredChannel:
    """One channel as the registry (`outbox.channels`) holds it."""

    config: ChannelConfig
    enabled: bool
    from_file: bool  # a `[[channels]]` entry of the config file: read-only in the registry


class ChannelRegistry(Protocol):
    """Channels every replica sends for. The adapter seals API keys (encrypts them under the
    master key) before they are stored; callers hand over and get back `Secret`s."""

    async def get(self, channel_id: str) -> RegisteredChannel | None: ...

    async def by_partner_channel(self, partner_channel_id: str) -> RegisteredChannel | None: ...

    async def add(self, channel: ChannelConfig, *, enabled: bool) -> None:
        """Raises `StatementRejected` if the id is taken."""

    async def set_api_key(self, channel_id: str, api_key: Secret) -> None: ...

    async def set_enabled(self, channel_id: str, enabled: bool) -> None: ...


@dataclass(frozen=True)
class RegistrySnapshot:
    """The registry as one replica reads it (outbox.services.directory)."""

    channels: tuple[RegisteredChannel, ...]  # registry entries this replica can use
    known: frozenset[str]  # every id the registry holds, file mirrors and unusable ones too
    problems: dict[str, str]  # id -> why this replica cannot use it (a key it cannot read)


class ChannelSource(Protocol):
    """What running replicas read to follow the registry."""

    async def snapshot(self) -> RegistrySnapshot: ...

    async def version(self) -> str:
        """Changes whenever a row is added, changed or removed: cheap to ask often."""

    async def check_sealed(self) -> int:
        """Open every sealed credential; `ConfigError` (naming key ids, never values) if the
        master keys cannot."""

    async def mirror_file(self, file_channels: Sequence[ChannelConfig]) -> list[str]:
        """Record the file's channels as read-only entries; the ids the registry holds as its
        own (the file wins over them in this replica)."""
