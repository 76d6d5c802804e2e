"""The composition root: builds every part from settings, runs them, shuts them down in order."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import secrets
import signal
import socket
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox import logfields
from outbox.config import ChannelConfig, Settings
from outbox.db import migrate
from outbox.db.channel_state import ChannelStateStore
from outbox.db.engine import create_engine
from outbox.db.gauges import GaugeStore
from outbox.db.housekeeping import HousekeepingStore
from outbox.db.listener import NotifyListener
from outbox.db.messages import MessageStore
from outbox.db.reconcile_store import ReconcileStore
from outbox.db.registry import ChannelRegistryStore
from outbox.db.registry_tables import CHANNELS_NOTIFY_CHANNEL
from outbox.db.tables import NOTIFY_CHANNEL, WEBHOOK_NOTIFY_CHANNEL, inserted_channels
from outbox.db.templates import TemplateStore
from outbox.db.webhook_store import WebhookEventStore
from outbox.hangup import Hangup
from outbox.http.api_client import ApiClient, create_session
from outbox.loops import PARTS, Health
from outbox.metrics import Metrics
from outbox.sealing import keyring_from
from outbox.services.attempt import retry_policy, template_scopes
from outbox.services.directory import ChannelDirectory, ChannelView
from outbox.services.maintenance import Maintenance
from outbox.services.reconciler import Reconciler
from outbox.services.sampler import Sampler
from outbox.services.sender import Sender
from outbox.web import Listeners, start_web

if TYPE_CHECKING:  # the Partner API workflows, imported when a verb needs them
    from datetime import timedelta

    import aiohttp

    from outbox.config import PartnerConfig
    from outbox.services.onboarding import Onboarding

log = structlog.get_logger("outbox.app")

ROLES = ("sender", "reconciler", "web")


@dataclass(frozen=True)
class Started:
    worker_id: str
    http_port: int | None
    admin_port: int | None = None  # with [http] admin_listen: /healthz, /readyz, /metrics


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


async def run(
    settings: Settings,
    stop: asyncio.Event,
    *,
    roles: Collection[str] = ROLES,
    registry: CollectorRegistry | None = None,
    drain: bool = False,
    on_started: Callable[[Started], None] | None = None,
    reload: Callable[[], Settings] | None = None,
) -> None:
    """Run the daemon until `stop` is set; with `drain`, until the queue is empty.

    With `reload`, SIGHUP reads the settings again and applies new channel credentials.
    """
    worker_id = new_worker_id()
    metrics = Metrics(registry or CollectorRegistry(), settings.metrics.channel_histograms)
    metrics.know_channels(c.id for c in settings.channels)
    metrics.know_parts(PARTS)
    health = Health(metrics.statement_invalid)
    # Installed before anything waits (the start-up check on a slow database): a SIGHUP that
    # came meanwhile used to end the process; it is now applied once the parts exist.
    hangup = Hangup(reload) if reload is not None else None
    if hangup is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, hangup.signalled)
    keyring = keyring_from()  # a master key that cannot be read stops the start, clearly
    engine = create_engine(settings.database_url, pool_size=8, pooler=settings.database.pooler)
    web_listeners: Listeners | None = None
    # Issue 19: only a sender holds API keys and writes the registry's mirror of the file; a
    # process without one (`--role web`) runs on README "Database roles"' outbox_web grants.
    sends = "sender" in roles
    try:
        schema = await migrate.check_schema(engine)
        store = MessageStore(engine, policy=retry_policy(settings.sender))
        tasks: dict[str, Coroutine[Any, Any, None]] = {}
        # --- channel registry (issue 17): the file's channels plus the registry's, live ---
        directory = ChannelDirectory(
            ChannelRegistryStore(engine, keyring, api_keys=sends),
            settings.channels,
            every=settings.registry.refresh_interval.total_seconds(),
            health=health,
            mirror=sends,
        )
        await directory.start()
        tasks["channels"] = directory.run(stop)
        # Shared with the webhook receiver, so that changes apply to it at once.
        channels = dict(directory.view.receiving)
        directory.subscribe(lambda view: _replace(channels, view.receiving))
        directory.subscribe(lambda view: metrics.know_channels(view.receiving))
        metrics.know_channels(channels)
        sender: Sender | None = None
        # issue 19 section 2: the edge's limits, cached readiness, the admin listener (also
        # without the web role, for a sender's metrics and probes)
        web_listeners = await start_web(
            settings,
            channels,
            metrics,
            WebhookEventStore(engine),
            lambda: migrate.check_schema(engine),
            health,
            public="web" in roles,
        )
        http_port, admin_port = web_listeners.port, web_listeners.admin_port
        if web_listeners.runners:
            # The queue's gauges, wherever metrics are served (a receiver on outbox_web's
            # grants may not read the queue: the sampler then stops, saying so once).
            tasks["sampler"] = Sampler(GaugeStore(engine), settings.metrics, metrics).run(stop)
        async with contextlib.AsyncExitStack() as resources:
            wake: dict[str, Callable[[str], None]] = {}
            if sends:
                session = create_session(
                    settings.sender.max_in_flight, settings.sender.request_timeout
                )
                await resources.enter_async_context(session)
                sender = Sender(
                    store,
                    ApiClient(session),
                    directory.view.sending,
                    settings.sender,
                    worker_id=worker_id,
                    channel_state=ChannelStateStore(engine),
                    observer=metrics,
                    health=health,
                    templates=TemplateStore(engine),  # issue 18: 132015 pauses the template
                )
                metrics.watch_sender(sender.slots)
                directory.subscribe(lambda view: sender.set_channels(view.sending))
                wake[NOTIFY_CHANNEL] = lambda payload: sender.wake(inserted_channels(payload))
                tasks["sender"] = sender.run(stop, drain=drain)
                maintenance = Maintenance(
                    HousekeepingStore(engine),
                    settings.channels,
                    settings.sender,
                    health,
                    worker_id=worker_id,
                    observer=metrics,  # issue 19: expiries, unknown channels
                )
                maintenance.set_channels(directory.view.sending)
                directory.subscribe(lambda view: maintenance.set_channels(view.sending))
                tasks["maintenance"] = maintenance.run(stop)
            if "reconciler" in roles:
                # Template scopes and WABA ids follow the registry, as the receiver's channels do.
                receiving = list(directory.view.receiving.values())
                reconcile_store = ReconcileStore(engine, template_scopes(receiving))
                reconciler = Reconciler(
                    reconcile_store,
                    settings.reconciler,
                    metrics,
                    health=health,
                    accounts=_accounts(receiving),
                )

                def follow(view: ChannelView) -> None:
                    receiving = list(view.receiving.values())
                    reconcile_store.set_scopes(template_scopes(receiving))
                    reconciler.set_accounts(_accounts(receiving))

                directory.subscribe(follow)
                wake[WEBHOOK_NOTIFY_CHANNEL] = lambda _: reconciler.wake()
                tasks["reconciler"] = reconciler.run(stop)
            wake[CHANNELS_NOTIFY_CHANNEL] = lambda _: directory.wake()
            listen_url = settings.listen_url()
            if listen_url is not None:
                tasks["listener"] = NotifyListener(listen_url, wake).run(stop)
            else:
                log.warning(
                    "outbox.listener.off",
                    reason='pooler = "pgbouncer" and no listen_database_url: polling only',
                )
            if hangup is not None:
                hangup.ready({c.id: c for c in settings.channels}, directory)
            log.info(
                "outbox.started",
                worker_id=worker_id,
                roles=sorted(roles),
                **logfields.ids("channels", [c.id for c in directory.view.sending]),
                http_port=http_port,
                admin_port=admin_port,
                schema=schema,
                # The collector's thresholds: `outbox run` and the demo raise the first.
                gc_threshold=gc.get_threshold(),
            )
            if on_started is not None:
                on_started(Started(worker_id, http_port, admin_port))
            await _supervise(tasks, stop, drain=drain)
    finally:
        if hangup is not None:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if web_listeners is not None:
            await web_listeners.cleanup()
        await engine.dispose()
        log.info("outbox.stopped", worker_id=worker_id)


async def _supervise(
    coroutines: dict[str, Coroutine[Any, Any, None]], stop: asyncio.Event, *, drain: bool
) -> None:
    """Run the parts together; the first one to fail (or the drained sender) stops them all."""
    tasks = {asyncio.create_task(c, name=f"outbox.{n}"): n for n, c in coroutines.items()}
    if not tasks:
        await stop.wait()
        return
    try:
        while tasks:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                name = tasks.pop(task)
                if task.exception() is not None:
                    log.error("outbox.part_failed", part=name, error=repr(task.exception()))
                    stop.set()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    raise task.exception()  # type: ignore[misc]
                if drain and name == "sender":
                    stop.set()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _accounts(channels: Sequence[ChannelConfig]) -> dict[str, str | None]:
    """Each channel's WABA id: the template registry's key for its account events."""
    return {c.id: c.waba_id for c in channels}


def _replace(target: dict[str, ChannelConfig], fresh: dict[str, ChannelConfig]) -> None:
    target.clear()
    target.update(fresh)


# --- The Partner API workflows (`outbox channels rotate-key / import`) ---


def onboarding(
    engine: AsyncEngine,
    partner: PartnerConfig,
    session: aiohttp.ClientSession,
    *,
    settle: timedelta,
) -> Onboarding:
    """The onboarding service over the registry (keys sealed under OUTBOX_SECRET_KEY_*), the
    Partner API and the numbers' hosts, sharing one HTTP session."""
    from outbox.db.registry import ChannelRegistryStore
    from outbox.http.partner_client import NumberClient, PartnerClient
    from outbox.sealing import keyring_from
    from outbox.services.onboarding import Onboarding

    registry = ChannelRegistryStore(engine, keyring_from())
    return Onboarding(
        registry, PartnerClient(session, partner), NumberClient(session), settle=settle
    )
