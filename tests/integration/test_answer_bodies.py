"""Answer bodies the client cannot take whole (issue 14): larger than it reads, or nested deeper
than the JSON parsers go. Through the real `ApiClient` on a loopback server, then the verdict.

A 2xx is the API saying it took the request: when its body cannot be read, the message id is
recovered from the text if it is there, and otherwise the row is `unknown` (resolved by a status
or the channel's unknown policy), never retried at once as if nothing had happened.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from outbox.domain import retry
from outbox.domain.codes import Code
from outbox.domain.models import ClaimedMessage, Dialect, SentAs, State
from outbox.domain.outcome import judge
from outbox.domain.request import ApiRequest
from outbox.domain.response import ANSWER_LIMIT, Accepted, Rejected
from outbox.http.api_client import ApiClient, create_session
from tests.answers import Answer
from tests.integration.test_hostile_answers import RawApi, channel_of

ID = "wamid.HBgLNDkxNTExMjM0NTY3OBUCABEYEjQ"
DEEP = 5_000  # past orjson's 1,024 levels and the standard decoder's recursion limit
NESTED = "[" * DEEP + "]" * DEEP
TO = "4915112345678"


def _ok(body: str, status: bytes = b"HTTP/1.1 200 OK") -> Answer:
    return Answer(status, (b"Content-Type: application/json",), body.encode(), "exact")


def _message() -> ClaimedMessage:
    now = datetime.now(UTC)
    return ClaimedMessage(
        id=1,
        channel="cloud",
        recipient=TO,
        payload={"type": "text", "text": {"body": "x"}},
        fallback_template=None,
        attempts=1,
        created_at=now,
        expires_at=None,
    )


def _verdict(outcome: object) -> State:
    judged = judge(
        _message(), SentAs.FREEFORM, outcome,  # type: ignore[arg-type]
        now=datetime.now(UTC), policy=retry.RetryPolicy(), rand=lambda: 0.5,
    )  # fmt: skip
    return judged.result.state


@pytest.fixture
async def raw_api() -> AsyncIterator[tuple[RawApi, ApiClient, str]]:
    api = RawApi()
    base_url = await api.start()
    async with create_session(4, timedelta(seconds=10)) as session:
        yield api, ApiClient(session), base_url
    await api.stop()


async def _send(raw: tuple[RawApi, ApiClient, str], answer: Answer) -> object:
    api, client, base_url = raw
    api.answers[TO] = answer
    request = ApiRequest("/messages", {"to": TO, "type": "text"}, SentAs.FREEFORM)
    return await client.send(channel_of(Dialect.CLOUD, base_url), request)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            f'{{"messaging_product":"whatsapp","contacts":[{{"input":"{TO}","wa_id":"{TO}"}}],'
            f'"messages":[{{"id":"{ID}"}}],"debug":{NESTED}}}',
            id="cloud-nesting-after",
        ),
        pytest.param(f'{{"debug":{NESTED},"messages":[{{"id":"{ID}"}}]}}', id="nesting-before"),
        pytest.param(
            f'{{"messages":[{{"message_status":"accepted","id":"{ID}"}}],"meta":{NESTED}}}',
            id="status-before-id",
        ),
        pytest.param(f'{{"messages":[{{"id":"{ID}"}}]', id="cut-short"),
    ],
)
async def test_a_success_whose_body_cannot_be_parsed_keeps_its_id(
    raw_api: tuple[RawApi, ApiClient, str], body: str
) -> None:
    """Before: read as text, `HTTP 200` without an id, and queued to be sent again."""
    outcome = await _send(raw_api, _ok(body))
    assert outcome == Accepted(ID, None)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(f'{{"messages":{NESTED}}}', id="nested-no-id"),
        pytest.param('{"messages":[{"id":"wamid.', id="id-cut"),
        pytest.param("<html>OK</html>", id="html"),
        pytest.param("", id="empty"),
        pytest.param('{"messages":[{"id":"bad\\u0000id"}],"x":' + NESTED + "}", id="id-with-nul"),
    ],
)
async def test_a_success_that_cannot_be_read_is_unknown_not_sent_again(
    raw_api: tuple[RawApi, ApiClient, str], body: str
) -> None:
    outcome = await _send(raw_api, _ok(body))
    assert _verdict(outcome) is State.UNKNOWN, outcome
    result = judge(
        _message(), SentAs.FREEFORM, outcome,  # type: ignore[arg-type]
        now=datetime.now(UTC), policy=retry.RetryPolicy(), rand=lambda: 0.5,
    ).result  # fmt: skip
    assert result.error_code == Code.UNREADABLE_ANSWER
    assert result.error_detail


class _Flood:
    """Answers with headers announcing `size` bytes, then writes them in 64 KiB pieces until
    done or the client hangs up; `sent` counts what left."""

    def __init__(self, status: bytes, prefix: bytes, size: int) -> None:
        self.status, self.prefix, self.size, self.sent = status, prefix, size, 0
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        piece = b" " * 65536
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                self.status + b"\r\nContent-Type: application/json\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n" % self.size
            )
            writer.write(self.prefix)
            self.sent = len(self.prefix)
            while self.sent < self.size:
                chunk = piece[: self.size - self.sent]
                writer.write(chunk)
                await writer.drain()
                self.sent += len(chunk)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up: what it read was enough
        finally:
            writer.close()


@pytest.mark.parametrize(
    ("status", "prefix", "expected"),
    [
        pytest.param(b"HTTP/1.1 200 OK", f'{{"messages":[{{"id":"{ID}"}}],"pad":"'.encode(),
                     State.ACCEPTED, id="success-with-id"),
        pytest.param(b"HTTP/1.1 200 OK", b'{"pad":"', State.UNKNOWN, id="success-no-id"),
        pytest.param(b"HTTP/1.1 500 Oops", b'{"error":{"message":"', State.QUEUED, id="error"),
    ],
)  # fmt: skip
async def test_an_answer_larger_than_the_cap_is_never_read_whole(
    status: bytes, prefix: bytes, expected: State
) -> None:
    """Before: a 64 MiB answer was read to its end (and a 2xx without an id sent again)."""
    flood = _Flood(status, prefix, 64 * 1024 * 1024)
    base_url = await flood.start()
    try:
        async with create_session(1, timedelta(seconds=30)) as session:
            request = ApiRequest("/messages", {"to": TO, "type": "text"}, SentAs.FREEFORM)
            outcome = await ApiClient(session).send(channel_of(Dialect.CLOUD, base_url), request)
        await asyncio.sleep(0.1)  # the server notices the hang-up
    finally:
        await flood.stop()
    assert _verdict(outcome) is expected, outcome
    if isinstance(outcome, Accepted):
        assert outcome.wamid == ID
    if isinstance(outcome, Rejected):
        assert outcome.detail is not None
        assert "1 MiB" in outcome.detail
    # The client stopped near the cap; what else left sat in socket buffers.
    assert flood.sent < 16 * ANSWER_LIMIT, flood.sent
