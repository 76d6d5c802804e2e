"""What every webhook request passes before its channel is looked at (issue 19 section 2): the
per-source throttle of failed authentications and the cap on webhooks handled at once.

Both answer at once, without reading the body: 429 to a throttled source, 503 beyond the cap
(360dialog retries either), each with Retry-After and the connection closed. Nothing queues.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from outbox.config import HttpConfig
from outbox.domain.throttle import FailureThrottle
from outbox.http.edge import TrustedProxies

log = structlog.get_logger("outbox.webhooks")


class WebhookGuard:
    def __init__(self, http: HttpConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.body_timeout = http.body_timeout.total_seconds()
        self._clock = clock
        self._free = http.max_webhook_handlers
        self._throttle = FailureThrottle(
            http.auth_failures_per_minute, window=60.0, block=http.auth_block.total_seconds()
        )
        self._proxies = TrustedProxies(http.trusted_proxies)

    def source(self, request: web.Request) -> str:
        """The client's address: the peer, or what a trusted proxy says it forwarded for."""
        peer = request.remote or "?"
        forwarded = request.headers.get("X-Forwarded-For")
        if peer in self._proxies and forwarded:
            # The proxy appends the address it saw: the last entry is the one it vouches for.
            last = forwarded.rsplit(",", 1)[-1].strip()
            try:
                return str(ipaddress.ip_address(last))
            except ValueError:
                return peer
        return peer

    def guarded(
        self, handle: Callable[[web.Request, str], Awaitable[web.Response]]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """A webhook handler behind the throttle and the cap: `handle(request, source)` runs
        holding one handler slot, or the request is answered at once."""

        async def receive(request: web.Request) -> web.Response:
            source = self.source(request)
            refused = self._refused(source)
            if refused is not None:
                return refused
            try:
                return await handle(request, source)
            finally:
                self._free += 1

        return receive

    def _refused(self, source: str) -> web.Response | None:
        """The answer to give at once instead of handling the request, if any; otherwise the
        caller holds one handler slot until it gives it back."""
        wait = self._throttle.blocked_for(source, self._clock())
        if wait > 0:
            return _closing(429, "throttled", wait)
        if self._free <= 0:
            log.warning("outbox.webhook.busy", peer=source)
            return _closing(503, "busy", 1)
        self._free -= 1
        return None

    def failed(self, source: str) -> None:
        if self._throttle.failed(source, self._clock()):
            log.warning("outbox.webhook.throttled", peer=source)

    async def read(self, request: web.Request) -> bytes | None:
        """The whole body within `body_timeout`; None when it took longer."""
        try:
            async with asyncio.timeout(self.body_timeout):
                return await request.read()
        except TimeoutError:
            log.info("outbox.webhook.body_timeout", peer=self.source(request))
            return None


def _closing(status: int, error: str, retry_after: float) -> web.Response:
    response = web.json_response(
        {"error": error}, status=status, headers={"Retry-After": str(math.ceil(retry_after))}
    )
    response.force_close()
    return response


def body_timeout_answer() -> web.Response:
    response = web.json_response({"error": "body_timeout"}, status=408)
    response.force_close()
    return response
