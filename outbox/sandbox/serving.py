"""Running a sandbox on a port until told to stop: `outbox sandbox` and `outbox demo`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from outbox.sandbox.hub import Hub
from outbox.sandbox.server import Sandbox


@dataclass(frozen=True)
class PartnerHub:
    """The Partner API to serve beside the WhatsApp API: one partner, `channels` running
    numbers (CH00000, CH00001, ...) spread over `clients` clients."""

    partner_id: str
    partner_key: str = field(repr=False)
    channels: int
    clients: int = 1


async def serve(
    host: str,
    port: int,
    api_keys: Mapping[str, str],
    *,
    latency: float,
    status_delays: tuple[float, float, float],
    reorder: bool,
    duplicate: bool,
    stop: asyncio.Event,
    partner_secret: str | None = None,
    hub: PartnerHub | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Run a sandbox on host:port until `stop` is set (for `outbox sandbox` and `outbox demo`);
    `announce` hears the base URL once it listens. A port in use raises OSError, with the
    sandbox's client session closed (no "Unclosed client session" after the error)."""
    sandbox = Sandbox(
        api_keys,
        latency=latency,
        status_delays=status_delays,
        reorder=reorder,
        duplicate=duplicate,
        partner_secret=partner_secret,
    )
    if hub is not None:
        Hub(sandbox, hub.partner_id, hub.partner_key).populate(hub.channels, clients=hub.clients)
    try:
        base_url = await sandbox.start(host, port)
    except OSError:
        await sandbox.stop()
        raise
    if announce is not None:
        announce(base_url)
    try:
        await stop.wait()
    finally:
        await sandbox.stop()
