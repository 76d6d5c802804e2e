"""Connection limits aiohttp does not have: a deadline for the request head and a cap on open
connections (issue 19 section 2).

aiohttp closes an idle kept-alive connection after `keepalive_timeout`, but nothing else bounds
what an unauthenticated client holds: a connection that sends half a header line, or nothing,
keeps its descriptor. Here each connection must deliver a whole request head within
`header_timeout` of opening, and the server holds at most `max_connections` at once (at most half
the process's descriptor limit, so the database pool and the API client always find
descriptors). At the cap a new connection evicts the oldest one that is idle (no request in
progress: nothing sent, half a head, or kept alive between requests); only when every
connection is in a request is the new one closed. A real webhook, which sends its head at once,
therefore always gets in, while held-open sockets are the first to go.

aiohttp offers no public hook for either, so this subclasses its Server and RequestHandler and
reads two of the handler's private fields (`_request_count`, `_request_in_progress`); the slow
client test (tests/integration/test_slow_clients.py) fails if an aiohttp upgrade breaks them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import resource
from collections.abc import Iterable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from outbox.config import HttpConfig

log = structlog.get_logger("outbox.http")


def connection_cap(wanted: int) -> int:
    """`wanted`, but at most half the soft descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft // 2))


class _GuardedHandler(RequestHandler):
    """One connection: closed unless a whole request head arrives in time; quiet about the
    client's protocol errors (their text holds the client's bytes)."""

    def __init__(self, server: GuardedServer, **kwargs: Any) -> None:
        super().__init__(server, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._header_timeout = server.header_timeout

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._head_deadline = self._loop.call_later(self._header_timeout, self._head_overdue)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        super().connection_lost(exc)

    def _head_overdue(self) -> None:
        if self._request_count == 0:
            log.info("outbox.http.head_timeout", peer=_peer(self.transport))
            self.force_close()

    def idle(self) -> bool:
        return not self._request_in_progress and not self._messages

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        peer = _peer(self.transport)
        if isinstance(exc, HttpProcessingError | ConnectionError | asyncio.CancelledError):
            # A malformed or abandoned request is the client's business: one line, no bytes.
            log.info("outbox.http.bad_request", peer=peer, error=type(exc).__name__)
            return
        # Our own failure while handling a request: worth ERROR, still without the request.
        log.error("outbox.http.handler_failed", peer=peer, error=type(exc).__name__)


class GuardedServer(web.Server):
    def __init__(
        self,
        *args: Any,
        header_timeout: float,
        max_connections: int,
        per_source: int,
        exempt: TrustedProxies,
        **kw: Any,
    ) -> None:
        super().__init__(*args, **kw)
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.per_source = per_source
        self.exempt = exempt  # trusted proxies: every client comes through them

    def __call__(self) -> RequestHandler:
        return _GuardedHandler(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        source = _peer(transport)
        victim, refusal = self._make_room(source)
        if refusal is not None:
            log.info("outbox.http.connection_refused", peer=source, reason=refusal)
            transport.close()
            handler.force_close()
            return
        if victim is not None:
            victim.force_close()
            self._connections.pop(victim, None)  # its descriptor is freed with the close
        super().connection_made(handler, transport)

    def _make_room(self, source: str | None) -> tuple[RequestHandler | None, str | None]:
        """The connection to close for a new one from `source`, or why it is refused."""
        held = [h for h, t in self._connections.items() if _peer(t) == source]
        if source not in self.exempt and len(held) >= self.per_source:
            # One address never takes more than its share: it makes room among its own.
            victim = _oldest_idle(held)
            return victim, None if victim is not None else "the source's connections are busy"
        if len(self._connections) >= self.max_connections:
            victim = _oldest_idle(self._busiest_source()) or _oldest_idle(self._connections)
            return victim, None if victim is not None else "every connection is busy"
        return None, None

    def _busiest_source(self) -> list[RequestHandler]:
        by_source: dict[str | None, list[RequestHandler]] = {}
        for h, t in self._connections.items():
            by_source.setdefault(_peer(t), []).append(h)
        return max(by_source.values(), key=len, default=[])


def _oldest_idle(handlers: Iterable[RequestHandler]) -> RequestHandler | None:
    return next((h for h in handlers if isinstance(h, _GuardedHandler) and h.idle()), None)


class GuardedRunner(web.AppRunner):
    """An AppRunner whose server applies `[http]`'s limits."""

    def __init__(self, app: web.Application, http: HttpConfig) -> None:
        super().__init__(
            app, access_log=None, keepalive_timeout=http.keepalive_timeout.total_seconds()
        )
        self._http = http

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        cap = connection_cap(self._http.max_connections)
        return GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            header_timeout=self._http.header_timeout.total_seconds(),
            max_connections=cap,
            # One address never holds more than half: another always finds room.
            per_source=min(self._http.max_connections_per_source, max(1, cap // 2)),
            exempt=TrustedProxies(self._http.trusted_proxies),
            **plain._kwargs,
        )


class TrustedProxies:
    """`[http] trusted_proxies`: addresses or networks (CIDR) of the proxies in front."""

    def __init__(self, listed: str) -> None:
        self._networks = tuple(
            ipaddress.ip_network(p.strip(), strict=False) for p in listed.split(",") if p.strip()
        )

    def __contains__(self, address: object) -> bool:
        try:
            ip = ipaddress.ip_address(str(address))
        except ValueError:
            return False
        return any(ip in network for network in self._networks)


def _peer(transport: asyncio.BaseTransport | None) -> str | None:
    if transport is None:
        return None
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else None
