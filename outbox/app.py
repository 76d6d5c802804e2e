"""The composition root: builds every part from settings, runs them, shuts them down in order."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.config import ChannelConfig, Settings
from outbox.config_loader import credentials_diff
from outbox.db import migrate
from outbox.db.channel_state import ChannelStateStore
from outbox.db.engine import create_engine
from outbox.db.errors import translated_errors
from outbox.db.gauges import GaugeStore
from outbox.db.housekeeping import HousekeepingStore
from outbox.db.listener import NotifyListener
from outbox.db.messages import MessageStore
from outbox.db.reconcile_store import ReconcileStore
from outbox.db.tables import NOTIFY_CHANNEL, WEBHOOK_NOTIFY_CHANNEL
from outbox.db.templates import TemplateStore
from outbox.db.webhook_store import WebhookEventStore
from outbox.domain.schema import judge_schema
from outbox.errors import DatabaseError, OutboxError, SchemaOutdated
from outbox.http import webhooks
from outbox.http.api_client import ApiClient, create_session
from outbox.http.server import create_app
from outbox.loops import PARTS, Health
from outbox.metrics import Metrics
from outbox.services.attempt import retry_policy, template_scopes
from outbox.services.maintenance import Maintenance
from outbox.services.reconciler import Reconciler
from outbox.services.sampler import Sampler
from outbox.services.sender import Sender

log = structlog.get_logger("outbox.app")

ROLES = ("sender", "reconciler", "web")


@dataclass(frozen=True)
class Started:
    worker_id: str
    http_port: int | None


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


async def check_database(engine: AsyncEngine) -> str:
    """Raise unless the database is reachable and its schema fits this release: at this
    release's newest revision, or newer and declared compatible by every later migration
    (outbox.domain.schema). Returns what was found, as one line."""
    try:
        with translated_errors():
            current, declared = await migrate.schema_state(engine)
    except DatabaseError as exc:
        cause = exc.__cause__ or exc
        raise DatabaseError(f"database unreachable: {type(cause).__name__}") from cause
    verdict = judge_schema(current, migrate.code_revisions(), declared)
    if not verdict.usable:
        raise SchemaOutdated(verdict.message)
    return verdict.message


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
    metrics = Metrics(registry or CollectorRegistry())
    metrics.know_channels(c.id for c in settings.channels)
    metrics.know_parts(PARTS)
    health = Health(metrics.statement_invalid)
    # Installed before anything waits (the start-up check on a slow database): a SIGHUP that
    # came meanwhile used to end the process; it is now applied once the parts exist.
    hangup = _Hangup(reload) if reload is not None else None
    if hangup is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, hangup.signalled)
    engine = create_engine(settings.database_url, pool_size=8)
    runner: web.AppRunner | None = None
    try:
        schema = await check_database(engine)
        store = MessageStore(engine, policy=retry_policy(settings.sender))
        tasks: dict[str, Coroutine[Any, Any, None]] = {}
        http_port = None
        # Shared with the webhook receiver, so that reloaded credentials apply to it at once.
        channels = {c.id: c for c in settings.channels}
        sender: Sender | None = None
        if "web" in roles:
            runner, http_port = await _start_web(settings, channels, metrics, engine, health)
            tasks["sampler"] = Sampler(GaugeStore(engine), settings.metrics, metrics).run(stop)
        session = create_session(settings.sender.max_in_flight, settings.sender.request_timeout)
        async with session:
            wake: dict[str, Callable[[], None]] = {}
            if "sender" in roles:
                sender = Sender(
                    store,
                    ApiClient(session),
                    settings.channels,
                    settings.sender,
                    worker_id=worker_id,
                    channel_state=ChannelStateStore(engine),
                    observer=metrics,
                    health=health,
                    templates=TemplateStore(engine),  # issue 18: 132015 pauses the template
                )
                wake[NOTIFY_CHANNEL] = sender.wake
                tasks["sender"] = sender.run(stop, drain=drain)
                maintenance = Maintenance(
                    HousekeepingStore(engine),
                    settings.channels,
                    settings.sender,
                    health,
                    worker_id=worker_id,
                )
                tasks["maintenance"] = maintenance.run(stop)
            if "reconciler" in roles:
                reconciler = Reconciler(
                    ReconcileStore(engine, template_scopes(settings.channels)),
                    settings.reconciler,
                    metrics,
                    health=health,
                    accounts={c.id: c.waba_id for c in settings.channels},
                )
                wake[WEBHOOK_NOTIFY_CHANNEL] = reconciler.wake
                tasks["reconciler"] = reconciler.run(stop)
            if wake:
                tasks["listener"] = NotifyListener(settings.database_url, wake).run(stop)
            if hangup is not None:
                hangup.ready(channels, sender)
            log.info(
                "outbox.started",
                worker_id=worker_id,
                roles=sorted(roles),
                channels=[c.id for c in settings.channels],
                http_port=http_port,
                schema=schema,
            )
            if on_started is not None:
                on_started(Started(worker_id, http_port))
            await _supervise(tasks, stop, drain=drain)
    finally:
        if hangup is not None:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if runner is not None:
            await runner.cleanup()
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


class _Hangup:
    """SIGHUP from the start of `run`: one that arrives before the parts exist waits for them
    (the credential files may have changed since they were read), then applies."""

    def __init__(self, reload: Callable[[], Settings]) -> None:
        self._reload = reload
        self._parts: tuple[dict[str, ChannelConfig], Sender | None] | None = None
        self._pending = False

    def signalled(self) -> None:
        if self._parts is None:
            self._pending = True
            log.info("outbox.reload.deferred", note="applied once the daemon has started")
            return
        _reload_credentials(self._reload, *self._parts)

    def ready(self, channels: dict[str, ChannelConfig], sender: Sender | None) -> None:
        self._parts = (channels, sender)
        if self._pending:
            self._pending = False
            self.signalled()


def _reload_credentials(
    reload: Callable[[], Settings], channels: dict[str, ChannelConfig], sender: Sender | None
) -> None:
    """SIGHUP: take the channels' new API keys and webhook credentials (from files, or from the
    environment the process started with). Any other change needs a restart, and says so."""
    try:
        fresh = reload()
    except OutboxError as exc:
        log.error("outbox.reload.failed", error=str(exc), note="the running settings stay")
        return
    diff = credentials_diff(channels, fresh)
    for channel_id, updated in diff.updated.items():
        old = channels[channel_id]
        channels[channel_id] = updated
        if sender is not None and updated.api_key != old.api_key:
            sender.new_key(updated)
    log.warning("outbox.reload.credentials", channels=list(diff.updated))
    if diff.needs_restart:
        log.warning(
            "outbox.reload.needs_restart",
            note="only credentials are reloaded; other changes take a restart",
            channels=diff.needs_restart,
        )


async def _start_web(
    settings: Settings,
    channels: dict[str, ChannelConfig],
    metrics: Metrics,
    engine: AsyncEngine,
    health: Health,
) -> tuple[web.AppRunner, int]:
    async def readiness() -> str | None:
        try:
            await check_database(engine)
        except DatabaseError as exc:
            return str(exc)
        # A part stuck on something no waiting cures (a statement the database refuses).
        problems = health.problems()
        return "; ".join(f"{part}: {text}" for part, text in problems.items()) or None

    webhooks.log_origins(channels)
    app = create_app(
        metrics.registry,
        readiness,
        channels,
        WebhookEventStore(engine),
        metrics,
        settings.partner_webhook_secret,
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.http.host, settings.http.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise OutboxError(
            f"cannot listen on {settings.http.host}:{settings.http.port}: {exc.strerror}"
        ) from exc
    port = settings.http.port
    with contextlib.suppress(Exception):
        port = runner.addresses[0][1]
    return runner, port
