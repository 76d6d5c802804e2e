"""The sandbox's Partner API and health status, spoken to by the real HTTP adapter
(outbox/http/partner_client.py) on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import timedelta

import aiohttp
import pytest
from aiohttp import web

from outbox.config import ChannelConfig, PartnerConfig, Secret
from outbox.domain.models import Dialect
from outbox.domain.partner import CanSend, Failure
from outbox.http import partner_client
from outbox.http.partner_client import NumberClient, PartnerClient, create_session
from outbox.ports.partner import PartnerApiError
from outbox.sandbox import Sandbox
from outbox.sandbox.hub import Hub

PARTNER, PARTNER_KEY = "testPA", "partner-secret-key"


@dataclass
class World:
    sandbox: Sandbox
    hub: Hub
    url: str
    partner: PartnerClient
    numbers: NumberClient
    session: aiohttp.ClientSession

    def config(self, partner_id: str = PARTNER, key: str = PARTNER_KEY) -> PartnerConfig:
        return PartnerConfig(partner_id, Secret(key), base_url=f"{self.url}/api/v2")

    def number(self, channel_id: str, key: str | None = None) -> ChannelConfig:
        return ChannelConfig(
            id=channel_id,
            dialect=Dialect.CLOUD,
            base_url=self.url,
            api_key=Secret(key or self.hub.current_key(channel_id) or "none"),
            webhook_username=Secret("user"),
            webhook_password=Secret("pass-0123456789abcdef"),
        )


@pytest.fixture
async def world() -> AsyncIterator[World]:
    sandbox = Sandbox({}, statuses=False)
    hub = Hub(sandbox, PARTNER, PARTNER_KEY)
    hub.populate(25, clients=3)
    url = await sandbox.start()
    session = create_session(timedelta(seconds=5))
    try:
        config = PartnerConfig(PARTNER, Secret(PARTNER_KEY), base_url=f"{url}/api/v2")
        yield World(
            sandbox, hub, url, PartnerClient(session, config), NumberClient(session), session
        )
    finally:
        await session.close()
        await sandbox.stop()


async def send(world: World, key: str) -> int:
    body = {"messaging_product": "whatsapp", "to": "4915112345678", "type": "text",
            "text": {"body": "hi"}}  # fmt: skip
    async with world.session.post(
        f"{world.url}/messages", json=body, headers={"D360-API-KEY": key}
    ) as response:
        return response.status


async def test_listing_pages_filters_and_totals(world: World) -> None:
    page = await world.partner.list_channels({}, offset=20, limit=10)
    assert page.total == 25
    assert [c.id for c in page.channels] == [f"CH{i:05d}" for i in range(20, 25)]
    first = page.channels[0]
    assert (first.client_id, first.status, first.phone_number) == (
        "CL002",
        "running",
        "491510000020",
    )
    assert (first.waba_id, first.phone_number_id) == ("1000000020", "2000000020")
    filtered = await world.partner.list_channels({"client_id": "CL001"}, offset=0, limit=100)
    assert filtered.total == 8
    assert {c.client_id for c in filtered.channels} == {"CL001"}


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ({"limit": "500"}, "limit between"),
        ({"offset": "-1"}, "offset >= 0"),
        ({"filters": "[1]"}, "JSON object"),
        ({"filters": '{"colour": "red"}'}, "JSON object of"),
        ({"sort": "colour"}, "sort by"),
    ],
)
async def test_a_wrong_listing_query_is_400(
    world: World, query: dict[str, str], words: str
) -> None:
    async with world.session.get(
        f"{world.url}/api/v2/partners/{PARTNER}/channels",
        params=query,
        headers={"X-API-Key": PARTNER_KEY},
    ) as response:
        assert response.status == 400
        assert words in (await response.json())["detail"]


@pytest.mark.parametrize(
    ("partner_id", "key", "failure"),
    [
        (PARTNER, "wrong", Failure.UNAUTHORIZED),
        ("otherPA", PARTNER_KEY, Failure.FORBIDDEN),
    ],
)
async def test_partner_auth(world: World, partner_id: str, key: str, failure: Failure) -> None:
    client = PartnerClient(world.session, world.config(partner_id, key))
    with pytest.raises(PartnerApiError) as raised:
        await client.list_channels({}, offset=0, limit=10)
    assert raised.value.failure is failure
    assert key not in str(raised.value)


async def test_a_new_key_revokes_the_old_one_and_drops_its_webhook(world: World) -> None:
    first = await world.partner.create_api_key("CH00003")
    assert first.address == world.url
    old = world.number("CH00003", first.api_key.reveal())
    await world.numbers.set_webhook(old, "http://127.0.0.1:9/webhooks/CH00003")
    webhook = world.sandbox.webhook(first.api_key.reveal())
    assert webhook is not None
    assert webhook.headers["Authorization"].startswith("Basic ")
    assert await send(world, first.api_key.reveal()) == 200

    second = await world.partner.create_api_key("CH00003")
    assert second.api_key != first.api_key
    assert await send(world, first.api_key.reveal()) == 401
    assert await send(world, second.api_key.reveal()) == 200
    assert world.sandbox.webhook(second.api_key.reveal()) is None  # dropped with the old key
    labels = [r.api_key_label for r in world.sandbox.message_requests()]
    assert labels == ["CH00003#1", None, "CH00003#2"]


@pytest.mark.parametrize(
    ("setup", "channel", "failure"),
    [
        (lambda hub: setattr(hub.channels["CH00001"], "permission", False), "CH00001",
         Failure.FORBIDDEN),
        (lambda hub: None, "CH99999", Failure.NOT_FOUND),
    ],
)  # fmt: skip
async def test_keys_refused(world: World, setup: object, channel: str, failure: Failure) -> None:
    setup(world.hub)  # type: ignore[operator]
    with pytest.raises(PartnerApiError) as raised:
        await world.partner.create_api_key(channel)
    assert raised.value.failure is failure
    assert world.hub.channels.get(channel) is None or world.hub.current_key(channel) is None


async def test_scripted_faults_and_the_retry_hint(world: World) -> None:
    world.hub.fail(429, "/channels", retry_after=2.5)
    world.hub.fail(503, "/api_keys")
    with pytest.raises(PartnerApiError) as raised:
        await world.partner.list_channels({}, offset=0, limit=10)
    assert raised.value.failure is Failure.RATE_LIMITED
    assert raised.value.retry_after == 2.5
    with pytest.raises(PartnerApiError) as raised:
        await world.partner.create_api_key("CH00001")
    assert raised.value.failure is Failure.SERVER
    assert world.hub.current_key("CH00001") is None
    assert (await world.partner.list_channels({}, offset=0, limit=10)).total == 25  # used up


async def test_health_status_with_the_channel_key(world: World) -> None:
    issued = await world.partner.create_api_key("CH00002")
    channel = world.number("CH00002")
    assert (await world.numbers.health(channel)).can_send is CanSend.AVAILABLE
    world.hub.channels["CH00002"].health = "BLOCKED"
    health = await world.numbers.health(channel)
    assert health.can_send is CanSend.BLOCKED
    assert not health.sendable
    assert health.reasons == ("The number is restricted (scripted in the sandbox)",)
    await world.partner.create_api_key("CH00002")
    with pytest.raises(PartnerApiError) as raised:
        await world.numbers.health(replace(channel, api_key=issued.api_key))
    assert raised.value.failure is Failure.UNAUTHORIZED


@pytest.fixture
async def odd_server() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """Answers a redirect, a huge body, or nothing for a long time; records what reached it."""
    seen: list[dict[str, str]] = []

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"partner_channels": [], "total": 0})

    async def huge(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 4096)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    app = web.Application()
    app.add_routes(
        [
            web.get("/redirect/partners/p/channels", redirect),
            web.get("/elsewhere", elsewhere),
            web.get("/huge/partners/p/channels", huge),
            web.get("/slow/partners/p/channels", slow),
        ]
    )
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", seen
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("prefix", "failure", "words"),
    [
        ("redirect", Failure.BAD_ANSWER, "not followed"),
        ("huge", Failure.BAD_ANSWER, "larger than"),
        ("slow", Failure.SERVER, "TimeoutError"),
    ],
)
async def test_no_redirects_bounded_answers_and_timeouts(
    odd_server: tuple[str, list[dict[str, str]]],
    monkeypatch: pytest.MonkeyPatch,
    prefix: str,
    failure: Failure,
    words: str,
) -> None:
    url, seen = odd_server
    monkeypatch.setattr(partner_client, "MAX_ANSWER", 1024)
    config = PartnerConfig("p", Secret(PARTNER_KEY), base_url=f"{url}/{prefix}")
    async with create_session(timedelta(seconds=0.5)) as session:
        with pytest.raises(PartnerApiError) as raised:
            await PartnerClient(session, config).list_channels({}, offset=0, limit=10)
    assert raised.value.failure is failure
    assert words in str(raised.value)
    assert seen == []  # the key never went where the redirect pointed
