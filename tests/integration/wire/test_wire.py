"""The send path's HTTP pool (`outbox.http.wire`, issue 16) against real servers on loopback:
connections kept and reused, at most `limit` of them over all origins, every failure said as
"no request left" or "it may have arrived", TLS. Answers as bytes in `test_hostile_answers`
and `test_answer_bodies` (through `ApiClient`). Every test runs on asyncio's loop and on uvloop
(`conftest.py`)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from yarl import URL

from outbox.http import wire
from outbox.http.wire import Wire, WireError
from tests.support import key_recording_api, loopback_site

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
CHUNKED = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n1\r\n}\r\n0\r\n\r\n"
# What the server writes for a request with body `body`: bytes, or None to write nothing.
Plan = Callable[[bytes], Awaitable[bytes | None]]


class Server:
    """A keep-alive HTTP/1.1 server on loopback whose answers are planned per request; it
    counts the connections it accepted."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.accepted = 0
        self.close_after_answer = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> URL:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return URL(f"http://127.0.0.1:{port}/messages")

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *([0-9]+)", head)
                body = await reader.readexactly(int(length[1]) if length else 0)
                answer = await self.plan(body)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after_answer:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


async def _ok(_: bytes) -> bytes:
    return OK


@pytest.fixture
async def pool() -> AsyncIterator[Wire]:
    pool = Wire(limit=3, timeout=2.0, connect_timeout=1.0, answer_limit=1024)
    yield pool
    await pool.close()


async def test_a_connection_is_kept_and_reused(pool: Wire) -> None:
    server = Server(_ok)
    async with server as api, Server(_ok) as other:
        for _ in range(20):
            answer = await pool.post(api, {"D360-API-KEY": "k"}, b"{}")
            assert (answer.status, answer.body, answer.cut) == (200, b"{}", False)
        await pool.post(other, {}, b"{}")
    assert server.accepted == 1


async def test_at_most_limit_connections_over_all_origins(pool: Wire) -> None:
    busy = most = 0

    async def slow(_: bytes) -> bytes:
        nonlocal busy, most
        busy += 1
        most = max(most, busy)
        await asyncio.sleep(0.02)
        busy -= 1
        return OK

    first, second = Server(slow), Server(slow)
    async with first as one, second as two:
        posts = [pool.post(one if n % 2 else two, {}, b"{}") for n in range(30)]
        answers = await asyncio.gather(*posts)
    assert all(a.status == 200 for a in answers)
    assert most == 3
    # an idle connection to one origin was closed to make room for the other
    assert first.accepted + second.accepted > 3


async def test_a_refused_connect_left_no_request() -> None:
    pool = Wire(limit=1, timeout=1.0, connect_timeout=1.0, answer_limit=1024)
    with pytest.raises(WireError) as refused:
        await pool.post(URL("http://127.0.0.1:9/messages"), {}, b"{}")
    assert refused.value.ambiguous is False
    assert refused.value.reason.startswith("connect failed: ")
    await pool.close()


@pytest.mark.parametrize(
    ("written", "reason"),
    [
        (None, "server disconnected before an answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{", "server disconnected mid-answer"),
        (b"HELLO\r\n\r\n", "malformed answer: "),
        (b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 9000, "answer's headers over 64 KiB"),
    ],
    ids=["nothing", "cut-short", "not-http", "endless-headers"],
)
async def test_a_request_without_a_whole_answer_may_have_arrived(
    pool: Wire, written: bytes | None, reason: str
) -> None:
    async def plan(_: bytes) -> bytes | None:
        return written

    server = Server(plan)
    server.close_after_answer = True
    async with server as api:
        with pytest.raises(WireError) as failed:
            await pool.post(api, {}, b"{}")
        assert failed.value.ambiguous is True
        assert failed.value.reason.startswith(reason)
        assert (await _later(pool, api, server)).status == 200


async def _later(pool: Wire, api: URL, server: Server) -> wire.Answer:
    """The pool still works after a failure: a new connection answers."""
    server.plan = _ok
    return await pool.post(api, {}, b"{}")


@pytest.mark.parametrize(
    ("written", "body"),
    [
        (b"HTTP/1.0 200 OK\r\n\r\n{}", b"{}"),  # its end is the close
        (CHUNKED, b"{}"),
        (b"HTTP/1.1 100 Continue\r\n\r\n" + OK, b"{}"),
    ],
    ids=["until-close", "chunked", "interim-100"],
)
async def test_answers_however_framed(pool: Wire, written: bytes, body: bytes) -> None:
    async def plan(_: bytes) -> bytes:
        return written

    server = Server(plan)
    server.close_after_answer = written.startswith(b"HTTP/1.0")
    async with server as api:
        for _ in range(3):
            answer = await pool.post(api, {}, b"{}")
            assert (answer.body, answer.cut) == (body, False)
            assert answer.status in (200, 201)
    assert server.accepted == (3 if server.close_after_answer else 1)


async def test_an_answer_over_the_limit_is_cut_and_its_connection_closed(pool: Wire) -> None:
    async def big(_: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nRetry-After: 7\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000

    server = Server(big)
    async with server as api:
        answer = await pool.post(api, {}, b"{}")
        assert (len(answer.body), answer.cut, answer.retry_after) == (1024, True, "7")
        server.plan = _ok
        await pool.post(api, {}, b"{}")
    assert server.accepted == 2


async def test_no_answer_in_time_is_a_timeout_and_the_connection_is_not_reused() -> None:
    pool = Wire(limit=1, timeout=0.3, connect_timeout=0.3, answer_limit=1024)

    async def never(_: bytes) -> bytes:
        await asyncio.sleep(60)
        return OK

    server = Server(never)
    async with server as api:
        with pytest.raises(TimeoutError):
            await pool.post(api, {}, b"{}")
        assert (await _later(pool, api, server)).status == 200
    assert server.accepted == 2
    await pool.close()


async def test_a_cancelled_request_frees_its_connection_and_never_reuses_it() -> None:
    pool = Wire(limit=1, timeout=5.0, connect_timeout=1.0, answer_limit=1024)
    arrived = asyncio.Event()

    async def hold(_: bytes) -> bytes:
        arrived.set()
        await asyncio.sleep(60)
        return OK

    server = Server(hold)
    async with server as api:
        request = asyncio.create_task(pool.post(api, {}, b"{}"))
        await arrived.wait()
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        assert (await asyncio.wait_for(_later(pool, api, server), 2)).status == 200
    assert server.accepted == 2
    await pool.close()


async def test_a_closed_pool_sends_nothing_and_keeps_no_connection_it_was_opening() -> None:
    pool = Wire(limit=2, timeout=2.0, connect_timeout=1.0, answer_limit=1024)
    arrived: list[bytes] = []

    async def plan(body: bytes) -> bytes:
        arrived.append(body)
        return OK

    server = Server(plan)
    async with server as api:
        connecting = asyncio.create_task(pool.post(api, {}, b"{}"))
        await asyncio.sleep(0)  # the post is connecting
        await pool.close()
        with pytest.raises(WireError) as closed:
            await connecting
        assert (closed.value.ambiguous, closed.value.reason) == (
            False,
            "the connection pool is closed",
        )
        with pytest.raises(WireError):
            await pool.post(api, {}, b"{}")
        await asyncio.sleep(0.05)
    assert arrived == []


async def test_a_header_that_would_break_the_request_is_never_sent(pool: Wire) -> None:
    server = Server(_ok)
    async with server as api:
        for value in ("k\r\nX-Injected: 1", "k\n", "k\x00", "ключ"):
            with pytest.raises(WireError) as refused:
                await pool.post(api, {"D360-API-KEY": value}, b"{}")
            assert refused.value.ambiguous is False
            assert value not in refused.value.reason  # a key never reaches a message
    assert server.accepted == 0


async def test_an_idle_connection_the_server_closed_is_not_reused(pool: Wire) -> None:
    server = Server(_ok)
    server.close_after_answer = True  # answers as kept-alive, then closes
    async with server as api:
        for _ in range(3):
            assert (await pool.post(api, {}, b"{}")).status == 200
            await asyncio.sleep(0.05)
    assert server.accepted == 3


async def test_a_connection_idle_past_the_keepalive_is_closed_not_reused(
    pool: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire, "KEEPALIVE", 0.05)
    server = Server(_ok)
    async with server as api:
        await pool.post(api, {}, b"{}")
        await asyncio.sleep(0.1)
        await pool.post(api, {}, b"{}")
        await pool.post(api, {}, b"{}")
    assert server.accepted == 2


async def test_a_connection_is_not_reused_near_the_servers_keep_alive_limit(pool: Wire) -> None:
    async def keeps_two_seconds(_: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=2, max=100\r\nContent-Length: 2\r\n\r\n{}"

    server = Server(keeps_two_seconds)
    async with server as api:
        await pool.post(api, {}, b"{}")
        await pool.post(api, {}, b"{}")  # at once: reused
        await asyncio.sleep(1.2)  # past a second less than the server's two
        await pool.post(api, {}, b"{}")
    assert server.accepted == 2


async def test_bytes_nobody_asked_for_close_the_connection(pool: Wire) -> None:
    async def twice(_: bytes) -> bytes:
        return OK + OK  # a second answer behind the first

    server = Server(twice)
    async with server as api:
        for _ in range(3):
            assert (await pool.post(api, {}, b"{}")).body == b"{}"
            await asyncio.sleep(0.01)
    assert server.accepted == 3


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6(), reason="no IPv6 loopback on this machine")
async def test_an_ipv6_address_is_connected_to_and_named_in_host(pool: Wire) -> None:
    heads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        await reader.readexactly(2)
        writer.write(OK)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "::1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        answer = await pool.post(URL(f"http://[::1]:{port}/v1/messages?x=1"), {}, b"{}")
    finally:
        server.close()
        await server.wait_closed()
    assert answer.status == 200
    [head] = heads
    assert head.startswith(b"POST /v1/messages?x=1 HTTP/1.1\r\nHost: [::1]:%d\r\n" % port)


# --- TLS ---------------------------------------------------------------------------------------


def _certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "outbox test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_https_verifies_the_server_and_keeps_its_connection(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    seen: list[str] = []
    app = key_recording_api(seen)
    runner, base = await loopback_site(app, server_context)
    url = URL(f"{base}/messages")
    trusting = Wire(2, 5.0, 2.0, 1024, ssl.create_default_context(cafile=str(cert)))
    default = Wire(2, 5.0, 2.0, 1024)
    try:
        for _ in range(2):
            answer = await trusting.post(url, {"D360-API-KEY": "k"}, b"{}")
            assert (answer.status, answer.body) == (200, b'{"messages": [{"id": "wamid.1"}]}')
        with pytest.raises(WireError) as untrusted:
            await default.post(url, {"D360-API-KEY": "k"}, b"{}")
        assert untrusted.value.ambiguous is False
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted.value.reason
        assert seen == ["k", "k"]
    finally:
        await trusting.close()
        await default.close()
        await runner.cleanup()
