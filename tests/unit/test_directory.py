"""ChannelDirectory: how the file's channels and the registry's combine, and when it re-reads."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import orjson
import pytest
import structlog

from outbox.config import ChannelConfig, Secret
from outbox.domain.models import Dialect
from outbox.errors import ConfigError, DatabaseUnavailable
from outbox.ports import RegisteredChannel, RegistrySnapshot
from outbox.services.directory import ChannelDirectory, ChannelView


def channel(channel_id: str, key: str = "k", rate: float = 20.0) -> ChannelConfig:
    return ChannelConfig(channel_id, Dialect.CLOUD, "http://x", Secret(key), rate)


class FakeRegistry:
    def __init__(self) -> None:
        self.entries: dict[str, RegisteredChannel] = {}
        self.problems: dict[str, str] = {}
        self.reads = 0
        self.changes = 0
        self.failing: Exception | None = None

    def put(self, config: ChannelConfig, enabled: bool = True) -> None:
        self.entries[config.id] = RegisteredChannel(config, enabled, from_file=False)
        self.changes += 1

    async def snapshot(self) -> RegistrySnapshot:
        if self.failing:
            raise self.failing
        self.reads += 1
        known = frozenset(self.entries) | frozenset(self.problems)
        return RegistrySnapshot(tuple(self.entries.values()), known, dict(self.problems))

    async def version(self) -> str:
        if self.failing:
            raise self.failing
        return str(self.changes)

    async def check_sealed(self) -> int:
        return 0

    async def mirror_file(self, file_channels: object) -> list[str]:
        return []


FILE = (channel("f1"), channel("shared", rate=1.0))


@pytest.mark.parametrize(
    ("entries", "sending", "receiving"),
    [
        ([], ["f1", "shared"], ["f1", "shared"]),
        ([("r1", True)], ["f1", "shared", "r1"], ["f1", "r1", "shared"]),
        # Disabled: not claimed for, but its webhooks (statuses of rows sent before) still come.
        ([("r1", False)], ["f1", "shared"], ["f1", "r1", "shared"]),
        # The file wins on conflict: its definition (rate 1) is used, enabled or not.
        ([("shared", False)], ["f1", "shared"], ["f1", "shared"]),
        ([("shared", True)], ["f1", "shared"], ["f1", "shared"]),
    ],
)
async def test_the_file_and_the_registry_combine(
    entries: list[tuple[str, bool]], sending: list[str], receiving: list[str]
) -> None:
    registry = FakeRegistry()
    for channel_id, enabled in entries:
        registry.put(channel(channel_id, rate=99.0), enabled)
    directory = ChannelDirectory(registry, FILE, every=1)
    await directory.start()
    assert [c.id for c in directory.view.sending] == sending
    assert sorted(directory.view.receiving) == receiving
    assert directory.view.receiving["shared"].rate_per_second == 1.0


async def test_subscribers_hear_changes_only() -> None:
    registry = FakeRegistry()
    directory = ChannelDirectory(registry, FILE, every=1)
    heard: list[ChannelView] = []
    directory.subscribe(heard.append)
    await directory.refresh()
    assert heard == []  # nothing changed
    registry.put(channel("r1"))
    await directory.refresh()
    registry.put(replace(channel("r1"), api_key=Secret("new")))
    await directory.refresh()
    registry.put(channel("r1", key="new"), enabled=False)
    await directory.refresh()
    assert [[c.id for c in v.sending] for v in heard] == [
        ["f1", "shared", "r1"],
        ["f1", "shared", "r1"],
        ["f1", "shared"],
    ]
    assert heard[1].receiving["r1"].api_key == Secret("new")


async def test_the_backstop_reads_only_when_the_version_moved() -> None:
    registry = FakeRegistry()
    directory = ChannelDirectory(registry, FILE, every=1)
    await directory.refresh()
    await directory.refresh(force=False)
    await directory.refresh(force=False)
    assert registry.reads == 1
    registry.put(channel("r1"))
    await directory.refresh(force=False)
    assert registry.reads == 2


async def test_a_database_error_keeps_the_last_view_and_the_loop_alive() -> None:
    registry = FakeRegistry()
    registry.put(channel("r1"))
    directory = ChannelDirectory(registry, FILE, every=0.01)
    await directory.start()
    registry.failing = DatabaseUnavailable("down")
    stop = asyncio.Event()
    task = asyncio.create_task(directory.run(stop))
    await asyncio.sleep(0.05)
    assert [c.id for c in directory.view.sending] == ["f1", "shared", "r1"]
    registry.failing = None
    registry.put(channel("r2"))
    directory.wake()
    for _ in range(100):
        await asyncio.sleep(0.01)
        if len(directory.view.sending) == 4:
            break
    stop.set()
    await task
    assert [c.id for c in directory.view.sending] == ["f1", "shared", "r1", "r2"]


async def test_a_wrong_master_key_stops_the_start() -> None:
    class Sealed(FakeRegistry):
        async def check_sealed(self) -> int:
            raise ConfigError("sealed under master key id abc")

    with pytest.raises(ConfigError, match="master key id abc"):
        await ChannelDirectory(Sealed(), FILE, every=1).start()


async def test_change_lines_stay_small_at_10000_channels() -> None:
    """A partner's registry of 10,000 numbers, half disabled: the start's change line named
    every one (150 kB with the disabled ones; log pipelines split lines at 16 kB), and every later change named every
    disabled one again. Now each list holds at most 20 ids, with its total beside it."""
    registry = FakeRegistry()
    for n in range(10_000):
        registry.put(channel(f"CH{n:05d}"), enabled=n % 2 == 0)
    directory = ChannelDirectory(registry, FILE, every=1)
    with structlog.testing.capture_logs() as logs:
        await directory.start()
        registry.put(channel("CH99999"), enabled=False)
        await directory.refresh()
    first, second = [e for e in logs if e["event"] == "outbox.channels.changed"]
    assert first["added"] == [f"CH{n:05d}" for n in range(20)]
    assert (first["added_total"], first["disabled_total"]) == (10_000, 5_000)
    assert (second["added"], second["added_total"]) == (["CH99999"], 1)
    assert (second["removed_total"], second["changed_total"]) == (0, 0)
    assert second["disabled_total"] == 5_001
    assert second["disabled"] == sorted(second["disabled"])
    assert len(second["disabled"]) == 20
    for line in (first, second):
        assert len(orjson.dumps(line)) < 2_000
