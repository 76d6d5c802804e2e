"""What a reload (SIGHUP) may take from fresh settings: credentials now, the rest at a restart."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from outbox.config import ChannelConfig, Settings


@dataclass(frozen=True)
class CredentialsDiff:
    """What a reload takes from fresh settings: channels whose credentials changed, with them
    applied, and the ids of channels with other changes, which wait for a restart."""

    updated: dict[str, ChannelConfig]
    needs_restart: list[str]


def credentials_diff(running: Mapping[str, ChannelConfig], fresh: Settings) -> CredentialsDiff:
    """Only API keys and webhook credentials are taken on reload; a channel that changed in
    anything else, or was added or removed, is named as needing a restart."""
    updated: dict[str, ChannelConfig] = {}
    needs_restart: list[str] = []
    for new in fresh.channels:
        old = running.get(new.id)
        if old is None:
            needs_restart.append(new.id)
            continue
        taken = replace(
            old,
            api_key=new.api_key,
            webhook_username=new.webhook_username,
            webhook_password=new.webhook_password,
        )
        if taken != new:
            needs_restart.append(new.id)  # more than its credentials changed
        if taken != old:
            updated[new.id] = taken
    needs_restart += sorted(running.keys() - {c.id for c in fresh.channels})
    return CredentialsDiff(updated, needs_restart)
