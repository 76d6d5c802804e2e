"""The daemon's web server: webhooks, health, readiness and metrics.

With `[http] admin_listen` set, two applications: the public one serves only the webhooks, the
admin one (on its own address, e.g. loopback or the pod IP reached only by the monitoring
namespace) `/healthz`, `/readyz` and `/metrics`. Without it, one application serves all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from outbox.config import ChannelConfig, Secret
from outbox.http import partner_webhooks, webhooks
from outbox.http.guard import WebhookGuard
from outbox.metrics_text import render

ReadinessCheck = Callable[[], Awaitable[str | None]]  # None when ready, else the reason


def create_app(
    registry: CollectorRegistry,
    readiness: ReadinessCheck,
    channels: Mapping[str, ChannelConfig],
    sink: webhooks.WebhookSink,
    observer: partner_webhooks.PartnerObserver,
    guard: WebhookGuard,
    partner_secret: Secret | None = None,
    *,
    admin: bool = True,
) -> web.Application:
    """The public application; with `admin`, it serves the admin endpoints too."""
    app = web.Application(client_max_size=webhooks.MAX_BODY_BYTES)
    webhooks.add_routes(app, channels, sink, observer, guard)
    partner_webhooks.add_partner_route(app, channels, partner_secret, sink, observer, guard)
    if admin:
        add_admin_routes(app, registry, readiness)
    return app


def create_admin_app(registry: CollectorRegistry, readiness: ReadinessCheck) -> web.Application:
    app = web.Application(client_max_size=1024)  # nothing here takes a body
    add_admin_routes(app, registry, readiness)
    return app


def add_admin_routes(
    app: web.Application, registry: CollectorRegistry, readiness: ReadinessCheck
) -> None:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        problem = await readiness()
        if problem is None:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready", "reason": problem}, status=503)

    async def metrics(_: web.Request) -> web.Response:
        # Rendered off the event loop: thousands of channels take a fraction of a second to
        # render (issue 16), which the sender and the webhook receiver would otherwise wait out.
        body = await asyncio.to_thread(render, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
