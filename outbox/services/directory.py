"""The channels this replica serves, kept current while it runs (issue 17).

Two sources: the replica's config file (`[[channels]]`, reloaded by SIGHUP) and the registry in
the database (`outbox.channels`, re-read on its NOTIFY and, as a backstop, whenever a cheap
version check every `every` seconds says it changed). The file wins on conflict: an id in the
file is served as the file says, whatever the registry holds under it.

Parts subscribe and get the whole view on every change: the sender claims for `sending`
(file channels and enabled registry ones), the webhook receiver takes bodies for `receiving`
(also disabled ones: statuses of rows sent before the disable still arrive).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from outbox import logfields
from outbox.config import ChannelConfig
from outbox.errors import DatabaseError
from outbox.loops import Health, database_failed, wait_any
from outbox.ports import ChannelSource, RegisteredChannel

log = structlog.get_logger("outbox.channels")

# A burst of changes (an import of hundreds of channels, each its own statement) is read once.
COALESCE_SECONDS = 0.05


@dataclass(frozen=True)
class ChannelView:
    sending: tuple[ChannelConfig, ...]
    receiving: dict[str, ChannelConfig]


class ChannelDirectory:
    def __init__(
        self,
        source: ChannelSource,
        file_channels: Sequence[ChannelConfig],
        *,
        every: float,
        health: Health | None = None,
        mirror: bool = True,
    ) -> None:
        """Without `mirror` the file's channels are not recorded in the registry: a process
        that only receives webhooks writes nothing there (its senders do)."""
        self._source = source
        self._file = {c.id: c for c in file_channels}
        self._registry: dict[str, RegisteredChannel] = {}
        self._problems: dict[str, str] = {}
        self._version: str | None = None
        self._every = every
        self._mirror = mirror
        self._health = health or Health()
        self._wake = asyncio.Event()
        self._subscribers: list[Callable[[ChannelView], None]] = []
        self.view = self._compose()

    async def start(self) -> None:
        """Before any part starts: the registry's sealed keys are checked (a wrong master key
        stops the start), the file's channels recorded in it (with `mirror`), and the registry
        read once. A
        database that fails here leaves the file's channels going; the registry is read later."""
        await self._source.check_sealed()
        try:
            shadowed = (
                await self._source.mirror_file(list(self._file.values())) if self._mirror else []
            )
            if shadowed:
                log.warning("outbox.channels.shadowed", channels=shadowed, note="the file wins")
            await self.refresh()
        except DatabaseError as exc:
            log.warning("outbox.channels.db_error", error=str(exc))
        if not self.view.sending:
            log.warning(
                "outbox.channels.none",
                note="no channel to send for yet; channels added to the registry start at once",
            )

    def subscribe(self, subscriber: Callable[[ChannelView], None]) -> None:
        self._subscribers.append(subscriber)

    def wake(self) -> None:
        """The registry changed (its NOTIFY): read it now."""
        self._wake.set()

    def file_changed(self, file_channels: Sequence[ChannelConfig]) -> None:
        """SIGHUP applied new file credentials; referenced registry keys are read again too."""
        self._file = {c.id: c for c in file_channels}
        self._version = None
        self._publish()
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            forced = self._wake.is_set()
            self._wake.clear()
            try:
                await self.refresh(force=forced)
                self._health.recovered("channels")
            except DatabaseError as exc:
                database_failed(
                    exc, part="channels", event="outbox.channels.db_error", health=self._health
                )
            await wait_any(stop, self._wake, timeout=self._every)
            if self._wake.is_set():
                await wait_any(stop, timeout=COALESCE_SECONDS)

    async def refresh(self, *, force: bool = True) -> None:
        """Read the registry (unless its version says nothing changed) and publish changes."""
        version = await self._source.version()
        if not force and version == self._version:
            return
        snapshot = await self._source.snapshot()
        self._version = version
        fresh = {c.config.id: c for c in snapshot.channels}
        self._log_changes(fresh, snapshot.problems)
        self._registry, self._problems = fresh, dict(snapshot.problems)
        self._publish()

    def _publish(self) -> None:
        view = self._compose()
        if view == self.view:
            return
        self.view = view
        for subscriber in self._subscribers:
            subscriber(view)

    def _compose(self) -> ChannelView:
        receiving = {
            i: c.config for i, c in self._registry.items() if i not in self._file
        } | self._file
        sending = [*self._file.values()]
        sending += [
            c.config for i, c in sorted(self._registry.items()) if c.enabled and i not in self._file
        ]
        return ChannelView(tuple(sending), receiving)

    def _log_changes(self, fresh: dict[str, RegisteredChannel], problems: dict[str, str]) -> None:
        old = self._registry
        added = sorted(fresh.keys() - old.keys())
        removed = sorted(old.keys() - fresh.keys() - problems.keys())
        changed = sorted(i for i in fresh.keys() & old.keys() if fresh[i] != old[i])
        if added or removed or changed:
            log.info(
                "outbox.channels.changed",
                **logfields.ids("added", added),
                **logfields.ids("removed", removed),
                **logfields.ids("changed", changed),
                **logfields.ids("disabled", [i for i, c in fresh.items() if not c.enabled]),
            )
        for channel_id, problem in sorted(problems.items()):
            if self._problems.get(channel_id) != problem:
                # The channel's rows wait (it is known, so nothing fails them) until it is fixed.
                log.error("outbox.channels.unusable", channel=channel_id, reason=problem)
        shadowed = fresh.keys() & self._file.keys()
        if shadowed and shadowed != old.keys() & self._file.keys():
            log.warning(
                "outbox.channels.shadowed",
                **logfields.ids("channels", shadowed),
                note="defined in this replica's config file, which wins over the registry",
            )
