"""The hardened HTTP edge (issue 19 section 2), against the real receiver on loopback: no channel
enumeration, throttling per source, the body and head deadlines, the handler cap, the admin
listener, cached readiness, and errors that carry none of the client's bytes."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest

from outbox.config import ChannelConfig, Secret, Settings
from outbox.db import migrate
from outbox.domain.models import Dialect
from tests.support import running, settings_for

PASSWORD = "hook-pass-0123456789"
AUTH = "Basic " + base64.b64encode(f"hook-user:{PASSWORD}".encode()).decode()
WRONG = "Basic " + base64.b64encode(b"hook-user:not-the-password").decode()


def _settings(db_url: str, **http: Any) -> Settings:
    settings = settings_for(db_url, "http://127.0.0.1:9")
    onprem, cloud = settings.channels
    cloud = dataclasses.replace(
        cloud, webhook_username=Secret("hook-user"), webhook_password=Secret(PASSWORD)
    )
    # No credentials and no explicit choice: every webhook is refused.
    closed = ChannelConfig("closed", Dialect.CLOUD, "http://127.0.0.1:9", Secret("k"))
    return dataclasses.replace(
        settings,
        channels=(onprem, cloud, closed),
        http=dataclasses.replace(settings.http, **http),
    )


async def _post(
    port: int,
    path: str,
    body: bytes = b"{}",
    auth: str | None = None,
    *,
    source: str = "127.0.0.1",
) -> tuple[int, bytes, dict[str, str]]:
    headers = {"Content-Type": "application/json", **({"Authorization": auth} if auth else {})}
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(f"http://127.0.0.1:{port}{path}", data=body, headers=headers) as response,
    ):
        return response.status, await response.read(), dict(response.headers)


@pytest.fixture
async def port(db_url: str) -> AsyncIterator[int]:
    async with running(_settings(db_url), {"web"}) as started:
        assert started.http_port is not None
        yield started.http_port


async def test_an_unknown_channel_is_answered_as_wrong_credentials_are(port: int) -> None:
    answers = [
        await _post(port, "/webhooks/nowhere"),
        await _post(port, "/webhooks/nowhere", auth=AUTH),
        await _post(port, "/webhooks/cloud", auth=WRONG),
        await _post(port, "/webhooks/cloud"),
        await _post(port, "/webhooks/closed", auth=AUTH),
    ]
    shapes = {(s, body, h.get("WWW-Authenticate"), h.get("Content-Type")) for s, body, h in answers}
    assert shapes == {(401, b'{"error": "unauthorised"}', 'Basic realm="outbox"', "application/json; charset=utf-8")}  # fmt: skip
    assert (await _post(port, "/webhooks/cloud", auth=AUTH))[0] == 200


async def test_a_source_that_fails_20_times_gets_429_and_others_do_not(
    port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in range(20):
        path = "/webhooks/cloud" if n % 2 else f"/webhooks/guess{n}"
        assert (await _post(port, path, auth=WRONG, source="127.0.0.3"))[0] == 401
    status, body, headers = await _post(port, "/webhooks/cloud", auth=AUTH, source="127.0.0.3")
    assert (status, body) == (429, b'{"error": "throttled"}')
    assert 55 <= int(headers["Retry-After"]) <= 60
    # Another address is not held back by this one's failures.
    assert (await _post(port, "/webhooks/cloud", auth=AUTH, source="127.0.0.4"))[0] == 200
    logged = capsys.readouterr().out
    assert "outbox.webhook.throttled" in logged
    assert "peer=127.0.0.3" in logged  # the rejection log names the source


async def test_a_slow_body_gets_408_and_the_handler_cap_503(db_url: str) -> None:
    settings = _settings(db_url, body_timeout=timedelta(seconds=0.5), max_webhook_handlers=1)
    async with running(settings, {"web"}) as started:
        port = started.http_port
        assert port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                b"POST /webhooks/onprem HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            await writer.drain()
            await asyncio.sleep(0.1)  # the slow body holds the only handler slot
            status, _, headers = await _post(port, "/webhooks/onprem")
            assert (status, headers["Retry-After"]) == (503, "1")
            answer = await asyncio.wait_for(reader.read(), 5)  # read() to EOF: it is closed
        finally:
            writer.close()
            await writer.wait_closed()
        assert answer.startswith(b"HTTP/1.1 408")
        assert (await _post(port, "/webhooks/onprem"))[0] == 200  # the slot is free again


async def test_a_connection_without_a_whole_head_in_time_is_closed(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _settings(db_url, header_timeout=timedelta(seconds=0.5))
    async with running(settings, {"web"}) as started:
        assert started.http_port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", started.http_port)
        try:
            writer.write(b"POST /webhooks/cloud HTTP/1.1\r\nHost: x\r\nContent-")
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
        finally:
            writer.close()
            await writer.wait_closed()
    assert "outbox.http.head_timeout" in capsys.readouterr().out


async def test_a_malformed_request_is_logged_in_one_line_without_its_bytes(
    port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /webhooks/onprem HTTP/1.1\r\nX-Evil: " + b"ATTACKER" * 2000 + b"\r\n\r\n"
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    assert answer.split(b" ", 2)[1].startswith(b"4")  # refused as the client's mistake
    logged = capsys.readouterr()
    text = logged.out + logged.err
    assert "outbox.http.bad_request" in text
    assert "ATTACKER" not in text
    assert "Traceback" not in text
    assert "error" not in [line.split("[")[1].split("]")[0].strip() for line in logged.out.splitlines() if "[" in line]  # fmt: skip


async def test_an_unstorable_body_is_400_without_postgresql_text(port: int) -> None:
    status, body, _ = await _post(port, "/webhooks/onprem", b'{"a": "\\u0000"}')
    assert (status, body) == (400, b'{"error": "unstorable"}')


async def test_the_admin_listener_serves_metrics_and_the_public_one_does_not(
    db_url: str,
) -> None:
    settings = _settings(db_url, admin_listen="127.0.0.1:0")
    async with running(settings, {"web"}) as started, aiohttp.ClientSession() as session:
        public, admin = started.http_port, started.admin_port
        assert admin is not None
        assert admin != public
        for path in ("/metrics", "/healthz", "/readyz"):
            async with session.get(f"http://127.0.0.1:{admin}{path}") as response:
                assert response.status == 200, path
            async with session.get(f"http://127.0.0.1:{public}{path}") as response:
                assert response.status == 404, path
        async with session.get(f"http://127.0.0.1:{admin}/metrics") as response:
            assert "outbox_webhooks_total" in await response.text()
        assert (await _post(public or 0, "/webhooks/onprem"))[0] == 200


async def test_readiness_makes_at_most_one_database_round_per_interval(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rounds = 0
    real = migrate.schema_state

    async def counted(engine: Any) -> Any:
        nonlocal rounds
        rounds += 1
        return await real(engine)

    monkeypatch.setattr(migrate, "schema_state", counted)
    settings = _settings(db_url, readiness_interval=timedelta(seconds=1))
    connector = aiohttp.TCPConnector(limit=50)  # within the per-source connection cap
    async with (
        running(settings, {"web"}) as started,
        aiohttp.ClientSession(connector=connector) as session,
    ):
        url = f"http://127.0.0.1:{started.http_port}/readyz"

        async def ready() -> int:
            async with session.get(url) as response:
                return response.status

        at_start = rounds  # the start-up check
        statuses = await asyncio.gather(*(ready() for _ in range(200)))
        assert set(statuses) == {200}
        assert rounds - at_start <= 1
        await asyncio.sleep(1.1)
        assert {await ready() for _ in range(50)} == {200}
        assert rounds - at_start <= 2
