"""HTTP/1.1 POSTs on kept-alive connections: the send path's transport (issue 16).

aiohttp's client cost the sender about 135 µs of its event loop a request on this machine, two
thirds of all the sender spent a message; this pool, with httptools parsing the answers, about
36 µs (README "Dependency notes"). It does only what a send needs: one request at a time per
connection, nothing followed (a redirect is an answer), no cookies, no compression asked for,
at most `limit` connections over all origins, and every failure said as either "no request
left" (`ambiguous=False`) or "it may have arrived". aiohttp keeps every other call.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Mapping

from yarl import URL

from outbox.http.wire_connection import Answer, Connection, Origin, WireError

__all__ = ["Answer", "Wire", "WireError"]

# Seconds a connection may sit idle and still be reused (aiohttp's default), or a second less
# than the server said it keeps one (`Keep-Alive: timeout=N`): a request written as the server
# closes the connection may have arrived, so it is never reused near the server's limit.
KEEPALIVE = 15.0


class Wire:
    """A pool of connections per origin, `limit` in all. A request waits for a connection
    when all are busy; its `timeout` counts the wait, the connect and the answer, and only
    `connect_timeout` (at most) goes to connecting."""

    def __init__(
        self,
        limit: int,
        timeout: float,
        connect_timeout: float,
        answer_limit: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._limit = limit
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._answer_limit = answer_limit
        self._ssl = ssl_context  # made on the first https connect when not given
        self._idle: dict[Origin, deque[Connection]] = {}
        self._open: set[Connection] = set()
        self._connecting = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._heads: dict[URL, tuple[Origin, bytes]] = {}
        self._shut = False

    async def post(self, url: URL, headers: Mapping[str, str], body: bytes) -> Answer:
        """The answer, WireError when there is none (`ambiguous` says whether the request may
        have arrived), TimeoutError when it did not come in time after the request left."""
        deadline = asyncio.get_running_loop().time() + self._timeout
        origin, head = self._head(url)
        request = b"".join((head, _fields(headers, len(body)), body))
        connection = await self._acquire(origin, deadline)
        try:
            return await connection.exchange(request, deadline)
        finally:
            self._release(connection)

    async def close(self) -> None:
        self._shut = True  # a connect still in progress closes what it opens
        for connection in list(self._open):
            connection.close()
        self._idle.clear()
        await asyncio.sleep(0)  # the transports' own close runs in the next turn of the loop

    def _head(self, url: URL) -> tuple[Origin, bytes]:
        """The origin and the request line with Host, made once per URL (a partner's channels
        share a few)."""
        known = self._heads.get(url)
        if known is None:
            if url.scheme not in ("http", "https") or not url.host or url.port is None:
                raise WireError(f"not an http(s) URL: {url.scheme}://…", ambiguous=False)
            origin = (url.scheme, url.host, url.port)
            line = f"POST {url.raw_path_qs} HTTP/1.1\r\nHost: {url.host_port_subcomponent}\r\n"
            known = self._heads[url] = (origin, line.encode("ascii"))
        return known

    async def _acquire(self, origin: Origin, deadline: float) -> Connection:
        loop = asyncio.get_running_loop()
        while True:
            if self._shut:
                raise WireError("the connection pool is closed", ambiguous=False)
            idle = self._idle.get(origin)
            if idle:
                now = loop.time()
                while idle and idle[0].idle_until <= now:  # the oldest first: left unused
                    idle.popleft().close()
                while idle:
                    connection = idle.pop()  # the most recent: the least likely closed by now
                    if not connection.closed and connection.idle_until > now:
                        return connection
                    connection.close()
            if len(self._open) + self._connecting < self._limit:
                return await self._connect(origin, deadline)
            if not self._close_an_idle_one():
                await self._wait(deadline)

    async def _connect(self, origin: Origin, deadline: float) -> Connection:
        loop = asyncio.get_running_loop()
        scheme, host, port = origin
        context = None
        if scheme == "https":
            context = self._ssl = self._ssl or ssl.create_default_context()
        self._connecting += 1
        connection: Connection | None = None
        try:
            async with asyncio.timeout_at(min(deadline, loop.time() + self._connect_timeout)):
                _, connection = await loop.create_connection(
                    lambda: Connection(origin, self._answer_limit, self._closed),
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if context else None,
                )
        except TimeoutError:
            raise WireError("connect timed out", ambiguous=False) from None
        except OSError as exc:  # refused, unreachable, no such host, a certificate refused
            raise WireError(f"connect failed: {exc}", ambiguous=False) from None
        finally:
            self._connecting -= 1
            if connection is None:
                self._wake()  # its room goes to a request waiting for one
        if self._shut:
            connection.close()
            raise WireError("the connection pool is closed", ambiguous=False)
        if connection.closed:  # closed by the server before anything was written
            raise WireError("server closed the connection at once", ambiguous=False)
        self._open.add(connection)
        return connection

    async def _wait(self, deadline: float) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except TimeoutError:
            raise WireError("timed out waiting for a connection", ambiguous=False) from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._wake()  # the turn it was given goes to the next one
            raise
        finally:
            if not waiter.done():
                self._waiters.remove(waiter)

    def _release(self, connection: Connection) -> None:
        if connection.reusable:
            kept = KEEPALIVE
            if connection.server_keeps is not None:
                kept = min(kept, connection.server_keeps - 1.0)
            connection.idle_until = asyncio.get_running_loop().time() + kept
            self._idle.setdefault(connection.origin, deque()).append(connection)
        else:
            connection.close()
        self._wake()

    def _close_an_idle_one(self) -> bool:
        """At the limit with idle connections to other origins: one of them makes room."""
        for idle in self._idle.values():
            while idle:
                connection = idle.popleft()
                if not connection.closed:
                    connection.close()
                    return True
        return False

    def _closed(self, connection: Connection) -> None:
        self._open.discard(connection)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def _fields(headers: Mapping[str, str], length: int) -> bytes:
    """The request's header fields. A value that would break the request's framing (a line
    break, a NUL, a character beyond Latin-1) is refused: nothing is sent."""
    lines = [f"Content-Length: {length}\r\n"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\0" in value or not name.isascii():
            raise WireError(f"header {name!r} has a character HTTP cannot carry", ambiguous=False)
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    try:
        return "".join(lines).encode("latin-1")
    except UnicodeEncodeError:
        raise WireError("a header has a character HTTP cannot carry", ambiguous=False) from None
