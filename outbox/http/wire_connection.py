"""One kept-alive HTTP/1.1 connection of the send path's pool (`outbox.http.wire`): writes a
request, parses its answer with httptools (llhttp, the parser aiohttp and Node use)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import httptools

HEAD_LIMIT = 64 * 1024  # an answer's status line and headers; real ones are under 1 kB
_KEPT = (b"retry-after", b"location", b"content-length", b"transfer-encoding", b"keep-alive")
_TIMEOUT = re.compile(r"(?i)\btimeout\s*=\s*([0-9]{1,6})")
Origin = tuple[str, str, int]  # scheme, host, port


class WireError(Exception):
    """A request that got no complete answer. `ambiguous`: the request may have arrived."""

    def __init__(self, reason: str, *, ambiguous: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.ambiguous = ambiguous


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes  # at most the pool's answer limit
    cut: bool  # there was more: the connection was closed instead of read to the end
    retry_after: str | None
    location: str | None


class Connection(asyncio.Protocol):
    """One exchange at a time. `on_closed` is called once, when the connection is done with
    (closed by either side), so that the pool counts it out exactly once."""

    def __init__(self, origin: Origin, limit: int, on_closed: Callable[[Connection], None]):
        self.origin = origin
        self.idle_until = 0.0  # the loop's time after which it is closed rather than reused
        self.server_keeps: float | None = None  # seconds, when the server said (Keep-Alive)
        self.closed = False
        self._limit = limit
        self._on_closed = on_closed
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Answer] | None = None
        self._keep_alive = False  # the last answer's: the parser forgets it once it is complete
        self._reset()

    def _reset(self) -> None:
        self._head = 0
        self._headers_done = False
        self._status = 0
        self._kept: dict[bytes, str] = {}
        self._chunks: list[bytes] = []
        self._size = 0

    @property
    def reusable(self) -> bool:
        return not self.closed and self._waiter is None and self._keep_alive

    async def exchange(self, data: bytes, deadline: float) -> Answer:
        """Write `data` (a whole request) and wait for its answer until `deadline` (the loop's
        clock): TimeoutError after it, WireError when the answer cannot be had."""
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        self._reset()
        self._keep_alive = False
        waiter: asyncio.Future[Answer] = loop.create_future()
        self._waiter = waiter
        self._transport.write(data)
        timer = loop.call_at(deadline, self._time_out)
        try:
            return await waiter
        finally:
            timer.cancel()
            if self._waiter is waiter:  # cancelled: its answer may still come, so never reuse
                self._waiter = None
                self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        if not self.closed:
            self.closed = True
            self._on_closed(self)

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's: no asyncio subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self._on_closed(self)
        if self._waiter is None:
            return
        if self._headers_done and not self._sized():
            self._finish(cut=False)  # an answer whose end is the close (HTTP/1.0 style)
        else:
            where = "mid-answer" if self._status else "before an answer"
            self._fail(WireError(f"server disconnected {where}", ambiguous=True))

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            self.close()  # bytes nobody asked for: the connection's state is unknown
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(WireError(f"malformed answer: {exc}", ambiguous=True))
            return
        if not self._headers_done:  # checked after the chunk: its end may be the body's start
            self._head += len(data)
            if self._head > HEAD_LIMIT:
                self._fail(WireError("answer's headers over 64 KiB", ambiguous=True))

    # --- httptools' callbacks ---
    def on_message_begin(self) -> None:
        if self._waiter is None:  # a second answer behind the first, unasked for
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        field = name.lower()
        if field in _KEPT and len(value) <= 1024:
            self._kept[field] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self._waiter is None:
            return
        self._size += len(body)
        self._chunks.append(body)
        if self._size > self._limit:
            self._finish(cut=True)

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:  # an interim answer (100 Continue): the real one follows
            self._reset()
        elif self._waiter is not None:
            self._keep_alive = self._parser.should_keep_alive()
            if (said := _TIMEOUT.search(self._kept.get(b"keep-alive", ""))) is not None:
                self.server_keeps = float(said[1])
            self._finish(cut=False)

    def _time_out(self) -> None:
        self._fail(TimeoutError())

    def _sized(self) -> bool:
        return b"content-length" in self._kept or b"transfer-encoding" in self._kept

    def _finish(self, *, cut: bool) -> None:
        waiter, self._waiter = self._waiter, None
        body = b"".join(self._chunks)[: self._limit]
        if cut:
            self.close()
        if waiter is not None and not waiter.done():
            kept = self._kept
            location = kept.get(b"location")
            waiter.set_result(Answer(self._status, body, cut, kept.get(b"retry-after"), location))

    def _fail(self, error: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
