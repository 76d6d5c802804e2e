"""The daemon's web server: webhooks, health, readiness and metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from outbox.config import ChannelConfig, Secret
from outbox.http import partner_webhooks, webhooks

ReadinessCheck = Callable[[], Awaitable[str | None]]  # None when ready, else the reason


def create_app(
    registry: CollectorRegistry,
    readiness: ReadinessCheck,
    channels: Mapping[str, ChannelConfig],
    sink: webhooks.WebhookSink,
    observer: partner_webhooks.PartnerObserver,
    partner_secret: Secret | None = None,
) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        problem = await readiness()
        if problem is None:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready", "reason": problem}, status=503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application(client_max_size=webhooks.MAX_BODY_BYTES)
    webhooks.add_routes(app, channels, sink, observer)
    partner_webhooks.add_partner_route(app, channels, partner_secret, sink, observer)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
