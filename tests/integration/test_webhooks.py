"""The webhook receiver: raw bodies stored durably, bad ones refused with the right 4xx."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import pytest

from outbox.config import Secret, Settings, WebhookAuth
from outbox.sandbox import Sandbox
from tests.paths import WEBHOOK_FIXTURES
from tests.support import KEYS, fetch, insert, running, settings_for, wait_until

FIXTURES = WEBHOOK_FIXTURES
NOTIFICATIONS = (
    sorted(p for p in FIXTURES.glob("*.json") if "__send-" not in p.name)
    if FIXTURES.is_dir()
    else []
)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


AUTH = basic("hook-user", "hook-pass-0123456789")


def _with_auth(settings: Settings) -> Settings:
    onprem, cloud = settings.channels
    cloud = dataclasses.replace(
        cloud,
        webhook_username=Secret("hook-user"),
        webhook_password=Secret("hook-pass-0123456789"),
        webhook_auth=WebhookAuth.BASIC,
    )
    return dataclasses.replace(settings, channels=(onprem, cloud))


@pytest.fixture
async def receiver(db_url: str) -> AsyncIterator[str]:
    settings = _with_auth(settings_for(db_url, "http://127.0.0.1:9"))
    # Hundreds of posts at once from one address test the group commit, not the edge's caps.
    settings = dataclasses.replace(
        settings,
        http=dataclasses.replace(
            settings.http,
            max_webhook_handlers=1000,
            max_connections=1000,
            max_connections_per_source=1000,
        ),
    )
    async with running(settings, roles={"web"}) as started:
        yield f"http://127.0.0.1:{started.http_port}"


async def _post(url: str, data: bytes, auth: str | None = None) -> int:
    headers = {"Content-Type": "application/json", **({"Authorization": auth} if auth else {})}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=io.BytesIO(data), headers=headers) as response,
    ):
        await response.read()
        return response.status


async def _stored(db_url: str) -> list[tuple[str, object]]:
    rows = await fetch(db_url, "SELECT channel, payload FROM outbox.webhook_events ORDER BY id")
    return [(r["channel"], json.loads(r["payload"])) for r in rows]


@pytest.mark.skipif(not NOTIFICATIONS, reason="shared fixtures not beside the checkout")
async def test_every_fixture_body_is_stored_as_received(db_url: str, receiver: str) -> None:
    for path in NOTIFICATIONS:
        assert await _post(f"{receiver}/webhooks/onprem", path.read_bytes()) == 200, path.name
    stored = await _stored(db_url)
    assert stored == [("onprem", json.loads(p.read_bytes())) for p in NOTIFICATIONS]


@pytest.mark.parametrize(
    ("path", "body", "auth", "status"),
    [
        ("/webhooks/nope", b"{}", None, 401),  # as wrong credentials: no enumeration
        ("/webhooks/cloud", b"{}", None, 401),
        ("/webhooks/cloud", b"{}", basic("hook-user", "wrong"), 401),
        ("/webhooks/cloud", b"{}", basic("wrong", "hook-pass-0123456789"), 401),
        ("/webhooks/onprem", b"not json", None, 400),
        ("/webhooks/onprem", b"[1, 2]", None, 400),
        ("/webhooks/onprem", b'{"statuses": "\\u0000"}', None, 400),
        ("/webhooks/onprem", b'{"x": "' + b"a" * (1024 * 1024) + b'"}', None, 413),
        ("/webhooks/onprem", '{"statuses": []}'.encode("utf-16"), None, 400),
        ("/webhooks/onprem", '{"statuses": []}'.encode("utf-16-le"), None, 400),
        ("/webhooks/onprem", '{"statuses": []}'.encode("utf-32"), None, 400),
        ("/webhooks/onprem", b'{"a": "\xff"}', None, 400),
    ],
    ids=[
        "unknown-channel",
        "no-credentials",
        "wrong-password",
        "wrong-user",
        "not-json",
        "not-an-object",
        "nul-escape",
        "too-large",
        "utf-16",
        "utf-16-no-bom",
        "utf-32",
        "latin-1",
    ],
)
async def test_bad_posts_get_a_4xx_and_store_nothing(
    db_url: str, receiver: str, path: str, body: bytes, auth: str | None, status: int
) -> None:
    assert await _post(receiver + path, body, auth) == status
    assert await _stored(db_url) == []


async def test_a_body_that_is_not_utf8_is_a_client_mistake_not_an_outage(
    db_url: str, receiver: str
) -> None:
    """JSON must be UTF-8 (RFC 8259): a UTF-16 body is refused with a reason, and counted as the
    sender's mistake, never as "database unavailable" (which pages and makes 360dialog retry)."""
    body = '{"statuses": []}'.encode("utf-16")
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{receiver}/webhooks/onprem", data=body) as response,
        session.get(f"{receiver}/metrics") as metrics,
    ):
        answer = await response.json()
        exposition = await metrics.text()
    assert (response.status, answer["error"]) == (400, "not_utf8")
    assert "UTF-8" in answer["detail"]
    assert 'outbox_webhooks_total{channel="onprem",outcome="not_utf8"} 1.0' in exposition
    assert 'outcome="unavailable"' not in exposition


async def test_right_credentials_are_accepted(db_url: str, receiver: str) -> None:
    assert await _post(f"{receiver}/webhooks/cloud", b'{"object": "x"}', AUTH) == 200
    assert await _stored(db_url) == [("cloud", {"object": "x"})]


async def test_database_outage_answers_503_then_recovers(
    db_url: str, receiver: str, pg_server: object
) -> None:
    name = urlsplit(db_url).path.lstrip("/")
    admin = pg_server.get_uri("postgres")  # type: ignore[attr-defined]
    await fetch(admin, f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
    await fetch(
        admin,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
        name,
    )
    try:
        assert await _post(f"{receiver}/webhooks/onprem", b'{"during": "outage"}') == 503
    finally:
        await fetch(admin, f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
    assert await _post(f"{receiver}/webhooks/onprem", b'{"after": "outage"}') == 200
    assert await _stored(db_url) == [("onprem", {"after": "outage"})]


async def test_concurrent_posts_are_each_stored_once(db_url: str, receiver: str) -> None:
    bodies = [json.dumps({"n": n}).encode() for n in range(300)]
    statuses = await asyncio.gather(*(_post(f"{receiver}/webhooks/onprem", b) for b in bodies))
    assert set(statuses) == {200}
    assert sorted(p["n"] for _, p in await _stored(db_url)) == list(range(300))  # type: ignore[index]


async def test_a_body_jsonb_refuses_fails_alone_in_a_group_commit(
    db_url: str, receiver: str
) -> None:
    """Concurrent bodies share INSERTs; the one PostgreSQL refuses must not take others down."""
    bodies = [
        (b'{"n": %d, "bad": "\\u0000"}' if n % 50 == 7 else b'{"n": %d}') % n for n in range(400)
    ]
    statuses = await asyncio.gather(*(_post(f"{receiver}/webhooks/onprem", b) for b in bodies))
    refused = [n for n, status in enumerate(statuses) if status == 400]
    assert refused == [n for n in range(400) if n % 50 == 7]
    assert set(statuses) == {200, 400}
    stored = sorted(p["n"] for _, p in await _stored(db_url))  # type: ignore[index]
    assert stored == [n for n in range(400) if n % 50 != 7]


async def test_sandbox_statuses_flow_back_through_the_receiver(db_url: str) -> None:
    api = Sandbox(KEYS, status_delays=(0.01, 0.02, 0.03))
    base_url = await api.start()
    try:
        settings = settings_for(db_url, base_url)
        async with running(settings, roles={"web", "sender"}) as started:
            hook = f"http://127.0.0.1:{started.http_port}/webhooks/cloud"
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{base_url}/v1/configs/webhook",
                    json={"url": hook},
                    headers={"D360-API-KEY": "cloud-key"},
                ) as response,
            ):
                assert response.status == 200
            await insert(db_url, "cloud", "4915112345678", {"type": "text", "text": {"body": "x"}})
            await wait_until(lambda: _count(db_url, 3), within=10)
    finally:
        await api.stop()
    stored = await _stored(db_url)
    statuses = [p["entry"][0]["changes"][0]["value"]["statuses"][0]["status"] for _, p in stored]  # type: ignore[index]
    assert sorted(statuses) == ["delivered", "read", "sent"]


async def _count(db_url: str, n: int) -> bool:
    return len(await _stored(db_url)) >= n
