"""The web role's listeners, built from `[http]`: the webhook receiver with the edge's limits
(outbox.http.edge, outbox.http.guard) and, when `admin_listen` is set, a separate admin
listener for `/healthz`, `/readyz` and `/metrics` (issue 19 section 2)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from aiohttp import web

from outbox.config import ChannelConfig, Settings
from outbox.config_edge import admin_address
from outbox.errors import DatabaseError, OutboxError
from outbox.http import webhooks
from outbox.http.edge import GuardedRunner, connection_cap
from outbox.http.guard import WebhookGuard
from outbox.http.readiness import CachedReadiness
from outbox.http.server import create_admin_app, create_app
from outbox.http.webhooks import WebhookSink
from outbox.loops import Health
from outbox.metrics import Metrics

log = structlog.get_logger("outbox.http")


@dataclass
class Listeners:
    runners: list[web.AppRunner] = field(default_factory=list)
    port: int | None = None  # webhooks, and the admin routes when there is no admin listener
    admin_port: int | None = None

    async def cleanup(self) -> None:
        for runner in reversed(self.runners):
            await runner.cleanup()


async def start_web(
    settings: Settings,
    channels: dict[str, ChannelConfig],
    metrics: Metrics,
    sink: WebhookSink,
    database_ready: Callable[[], Awaitable[object]],
    health: Health,
    *,
    public: bool = True,
) -> Listeners:
    """The listeners of this process. Without `public` (no web role) only the admin listener,
    when `admin_listen` is set: a sender's metrics and probes, and no webhook endpoint."""
    http = settings.http
    admin = admin_address(http)

    async def check() -> str | None:
        try:
            await database_ready()
        except DatabaseError as exc:
            return str(exc)
        return None

    cached = CachedReadiness(check, http.readiness_interval.total_seconds())

    async def readiness() -> str | None:
        # A part stuck on something no waiting cures (a statement the database refuses):
        # in memory, so asked on every request; only the database check is cached.
        problem = await cached()
        problems = health.problems()
        listed = "; ".join(f"{part}: {text}" for part, text in problems.items())
        return "; ".join(p for p in (problem, listed) if p) or None

    listeners = Listeners()
    try:
        if public:
            webhooks.log_origins(channels)
            app = create_app(
                metrics.registry,
                readiness,
                channels,
                sink,
                metrics,
                WebhookGuard(http),
                settings.partner_webhook_secret,
                admin=admin is None,
            )
            runner = GuardedRunner(app, http)
            listeners.port = await _listen(listeners, runner, http.host, http.port)
        if admin is not None:
            runner = GuardedRunner(create_admin_app(metrics.registry, readiness), http)
            listeners.admin_port = await _listen(listeners, runner, *admin)
    except BaseException:
        await listeners.cleanup()
        raise
    if not listeners.runners:
        return listeners
    log.info(
        "outbox.http.edge",
        max_connections=connection_cap(http.max_connections),
        max_webhook_handlers=http.max_webhook_handlers,
        admin_port=listeners.admin_port,
    )
    return listeners


async def _listen(listeners: Listeners, runner: web.AppRunner, host: str, port: int) -> int:
    await runner.setup()
    listeners.runners.append(runner)
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        raise OutboxError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    with contextlib.suppress(Exception):
        port = runner.addresses[0][1]
    return port
