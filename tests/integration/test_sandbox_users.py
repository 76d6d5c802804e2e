"""The sandbox speaks username users (issue 18 §1, §6): sends with `recipient`, answers that
name the BSUID, statuses with `recipient_user_id`, inbound messages with no phone number."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from outbox.sandbox import Sandbox

KEYS = {"k": "cloud"}
BSUID = "US.13491208655302741918"
TEXT = {"type": "text", "text": {"body": "hi"}}


@pytest.fixture
async def hooked() -> AsyncIterator[tuple[Sandbox, str, list[dict[str, Any]]]]:
    """A sandbox with statuses on, whose webhook for key `k` is a local receiver."""
    received: list[dict[str, Any]] = []

    async def receive(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    api = Sandbox(KEYS, status_delays=(0.0, 0.01, 0.02))
    base_url = await api.start()
    async with aiohttp.ClientSession() as session:
        answer = await session.post(
            f"{base_url}/v1/configs/webhook",
            json={"url": f"http://127.0.0.1:{port}/hook"},
            headers={"D360-API-KEY": "k"},
        )
        assert answer.status == 200
    try:
        yield api, base_url, received
    finally:
        await api.stop()
        await runner.cleanup()


async def _send(base_url: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base_url}{path}", json=body, headers={"D360-API-KEY": "k"}) as answer,
    ):
        return answer.status, await answer.json()


def _statuses(received: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        s
        for body in received
        for entry in body.get("entry", [])
        for change in entry["changes"]
        for s in change["value"].get("statuses", [])
    ]


async def test_a_send_to_a_bsuid_is_answered_and_its_statuses_name_the_bsuid_only(
    hooked: tuple[Sandbox, str, list[dict[str, Any]]],
) -> None:
    api, base_url, received = hooked
    api.users.add(BSUID)
    body = {"messaging_product": "whatsapp", "recipient": BSUID, **TEXT}
    status, answer = await _send(base_url, "/messages", body)
    assert status == 200
    assert answer["contacts"] == [{"input": BSUID, "user_id": BSUID}]
    await api.wait_idle()
    statuses = _statuses(received)
    assert [s["status"] for s in statuses] == ["sent", "delivered", "read"]
    assert all(s["recipient_user_id"] == BSUID and "recipient_id" not in s for s in statuses)


async def test_a_known_pair_is_named_in_answers_and_statuses(
    hooked: tuple[Sandbox, str, list[dict[str, Any]]],
) -> None:
    api, base_url, received = hooked
    api.users.add(BSUID, "4915112345678")
    body = {"messaging_product": "whatsapp", "to": "4915112345678", **TEXT}
    status, answer = await _send(base_url, "/messages", body)
    assert status == 200
    assert answer["contacts"] == [
        {"input": "4915112345678", "wa_id": "4915112345678", "user_id": BSUID}
    ]
    await api.wait_idle()
    ids = {(s["recipient_id"], s["recipient_user_id"]) for s in _statuses(received)}
    assert ids == {("4915112345678", BSUID)}


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (
            "/messages",
            {"messaging_product": "whatsapp", "recipient": "US.1-2", **TEXT},
            "recipient",
        ),
        ("/messages", {"messaging_product": "whatsapp", "recipient": 5, **TEXT}, "recipient"),
        (
            "/messages",
            {"messaging_product": "whatsapp", "recipient": BSUID, "to": "1", **TEXT},
            "to",
        ),
        ("/v1/messages", {"recipient": BSUID, "to": "491511", **TEXT}, "recipient"),
    ],
)
async def test_bad_recipient_fields_are_refused(
    hooked: tuple[Sandbox, str, list[dict[str, Any]]], path: str, body: dict[str, Any], param: str
) -> None:
    _, base_url, _ = hooked
    status, answer = await _send(base_url, path, body)
    assert status == 400
    assert param in str(answer)


async def test_a_username_only_user_writes_without_a_phone_number(
    hooked: tuple[Sandbox, str, list[dict[str, Any]]],
) -> None:
    api, _, received = hooked
    api.users.add(BSUID)
    api.user_writes("k", BSUID, "hello")
    await api.wait_idle()
    (body,) = received
    value = body["entry"][0]["changes"][0]["value"]
    (message,) = value["messages"]
    assert message["from_user_id"] == BSUID
    assert "from" not in message
    assert "wa_id" not in value["contacts"][0]
    assert value["contacts"][0]["user_id"] == BSUID
