"""SIGHUP in the running daemon: the file channels' new credentials taken, the registry's
referenced keys read again; a signal before the parts exist waits for them."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from outbox import logfields
from outbox.config import ChannelConfig, Settings
from outbox.config_reload import credentials_diff
from outbox.errors import OutboxError
from outbox.services.directory import ChannelDirectory

log = structlog.get_logger("outbox.app")  # as when it was part of the composition root


class Hangup:
    """SIGHUP from the start of `run`: one that arrives before the parts exist waits for them
    (the credential files may have changed since they were read), then applies."""

    def __init__(self, reload: Callable[[], Settings]) -> None:
        self._reload = reload
        self._parts: tuple[dict[str, ChannelConfig], ChannelDirectory] | None = None
        self._pending = False

    def signalled(self) -> None:
        if self._parts is None:
            self._pending = True
            log.info("outbox.reload.deferred", note="applied once the daemon has started")
            return
        reload_credentials(self._reload, *self._parts)

    def ready(self, channels: dict[str, ChannelConfig], directory: ChannelDirectory) -> None:
        self._parts = (channels, directory)
        if self._pending:
            self._pending = False
            self.signalled()


def reload_credentials(
    reload: Callable[[], Settings],
    channels: dict[str, ChannelConfig],
    directory: ChannelDirectory,
) -> None:
    """SIGHUP: take the file channels' new API keys and webhook credentials (from files, or
    from the environment the process started with), and read the registry's referenced keys
    again. Any other change to the file needs a restart, and says so."""
    try:
        fresh = reload()
    except OutboxError as exc:
        log.error("outbox.reload.failed", error=str(exc), note="the running settings stay")
        return
    diff = credentials_diff(channels, fresh)
    channels.update(diff.updated)
    directory.file_changed(list(channels.values()))  # a changed key: probes at once
    log.warning("outbox.reload.credentials", **logfields.ids("channels", diff.updated))
    if diff.needs_restart:
        log.warning(
            "outbox.reload.needs_restart",
            note="only credentials are reloaded; other changes take a restart",
            **logfields.ids("channels", diff.needs_restart),
        )
