"""SIGHUP's reload of channel credentials, as the composition root applies it."""

from __future__ import annotations

from dataclasses import replace

import structlog

from outbox.config import ChannelConfig, Secret, Settings
from outbox.errors import ConfigError
from outbox.hangup import reload_credentials
from outbox.ports import RegistrySnapshot
from outbox.services.directory import ChannelDirectory
from tests.support import settings_for

SETTINGS = settings_for("postgresql://u@/db", "http://127.0.0.1:9")


def _channels() -> dict[str, ChannelConfig]:
    return {c.id: c for c in SETTINGS.channels}


class _EmptyRegistry:
    async def snapshot(self) -> RegistrySnapshot:
        return RegistrySnapshot((), frozenset(), {})

    async def version(self) -> str:
        return "0"

    async def check_sealed(self) -> int:
        return 0

    async def mirror_file(self, file_channels: object) -> list[str]:
        return []


def _directory() -> ChannelDirectory:
    return ChannelDirectory(_EmptyRegistry(), SETTINGS.channels, every=1)


def test_new_credentials_replace_the_old_and_other_changes_are_named() -> None:
    channels = _channels()
    cloud, onprem = SETTINGS.channels[1], SETTINGS.channels[0]
    fresh = replace(
        SETTINGS,
        channels=(
            replace(onprem, rate_per_second=1.0),  # not reloadable
            replace(cloud, api_key=Secret("rotated"), webhook_password=Secret("p")),
        ),
    )
    directory = _directory()
    with structlog.testing.capture_logs() as logs:
        reload_credentials(lambda: fresh, channels, directory)
    assert directory.view.sending == tuple(channels.values())  # the sender gets them
    assert channels["cloud"] == replace(
        cloud, api_key=Secret("rotated"), webhook_password=Secret("p")
    )
    assert channels["onprem"] == onprem  # its rate waits for a restart
    events = {e["event"]: e for e in logs}
    assert events["outbox.reload.credentials"]["channels"] == ["cloud"]
    assert events["outbox.reload.needs_restart"]["channels"] == ["onprem"]
    assert "rotated" not in repr(logs)


def test_a_configuration_that_no_longer_loads_keeps_the_running_one() -> None:
    channels = _channels()

    def broken() -> Settings:
        raise ConfigError("channels[0]: api_key_file /run/secrets/x: no such file")

    with structlog.testing.capture_logs() as logs:
        reload_credentials(broken, channels, _directory())
    assert channels == _channels()
    assert [(e["event"], e["log_level"]) for e in logs] == [("outbox.reload.failed", "error")]
