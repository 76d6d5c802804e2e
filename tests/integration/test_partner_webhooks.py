"""POST /webhooks: signed partner bodies, Basic-auth WABA bodies, routing, unrouted parts."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from outbox.config import Secret, Settings
from tests.integration.test_webhooks import basic
from tests.support import cloud_on_account, fetch, running, settings_for

SECRET = "platform-secret"
WABA = "102290129340398"
CLOUD_NUMBER = "106540352242922"
ONPREM_NUMBER = "106540352242923"


def _settings(db_url: str, *, secret: str | None) -> Settings:
    settings = cloud_on_account(settings_for(db_url, "http://127.0.0.1:9"), CLOUD_NUMBER, WABA)
    onprem, cloud = settings.channels
    onprem = dataclasses.replace(onprem, phone_number_id=ONPREM_NUMBER, waba_id=WABA)
    return dataclasses.replace(
        settings,
        channels=(onprem, cloud),
        partner_webhook_secret=None if secret is None else Secret(secret),
    )


@pytest.fixture
async def signed(db_url: str) -> AsyncIterator[str]:
    async with running(_settings(db_url, secret=SECRET), roles={"web"}) as started:
        yield f"http://127.0.0.1:{started.http_port}"


@pytest.fixture
async def unsigned(db_url: str) -> AsyncIterator[str]:
    async with running(_settings(db_url, secret=None), roles={"web"}) as started:
        yield f"http://127.0.0.1:{started.http_port}"


def _sign(raw: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


async def _post(url: str, raw: bytes, **headers: str) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", **headers}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/webhooks", data=io.BytesIO(raw), headers=headers) as response,
    ):
        return response.status, await response.json()


async def _metric(url: str, line: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        text = await response.text()
    for row in text.splitlines():
        if row.startswith(line + " "):
            return float(row.split()[-1])
    return 0.0


async def _stored(db_url: str) -> list[tuple[str, bool, Any]]:
    rows = await fetch(
        db_url, "SELECT channel, authenticated, payload FROM outbox.webhook_events ORDER BY id"
    )
    return [(r["channel"], r["authenticated"], json.loads(r["payload"])) for r in rows]


def _body(*changes: tuple[str, dict[str, Any]], waba: str = WABA) -> bytes:
    entry = {
        "id": waba,
        "time": 1751247548,
        "changes": [{"field": f, "value": v} for f, v in changes],
    }
    return json.dumps({"object": "whatsapp_business_account", "entry": [entry]}).encode()


def _status(number: str) -> tuple[str, dict[str, Any]]:
    value = {"metadata": {"phone_number_id": number}, "statuses": [{"id": "wamid.x"}]}
    return "messages", value


TEMPLATE = ("message_template_status_update", {"event": "APPROVED", "message_template_name": "t"})


async def test_a_signed_body_is_stored_in_either_spelling(db_url: str, signed: str) -> None:
    raw = _body(_status(CLOUD_NUMBER))
    for header in (_sign(raw), f"sha256={_sign(raw)}"):
        status, answer = await _post(signed, raw, **{"x-360dialog-signature": header})
        assert (status, len(answer["stored"])) == (200, 1)
    assert [(c, a) for c, a, _ in await _stored(db_url)] == [("cloud", True), ("cloud", True)]


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing"),
        ({"x-360dialog-signature": "0" * 64}, "wrong"),
        ({"x-360dialog-signature": _sign(b"another body")}, "wrong"),
        ({"x-360dialog-signature": _sign(_body(_status(CLOUD_NUMBER)), "other")}, "wrong"),
        ({"x-360dialog-signature": "sha256=<script>"}, "malformed"),
        # Basic auth does not replace the signature once a secret is configured
        ({"Authorization": basic("hook-user", "hook-pass-0123456789")}, "missing"),
    ],
)
async def test_a_missing_or_wrong_signature_is_401_and_counted(
    db_url: str,
    signed: str,
    headers: dict[str, str],
    reason: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, answer = await _post(signed, _body(_status(CLOUD_NUMBER)), **headers)
    assert (status, answer) == (401, {"error": "unauthorised"})  # the log and metric say why
    # logged with the reason only: none of the attacker's bytes (header value, body)
    logged = capsys.readouterr().out
    assert f"outbox.webhook.bad_signature verdict={reason}" in " ".join(logged.split())
    for value in headers.values():
        assert value.removeprefix("Basic ").removeprefix("sha256=") not in logged
    assert "wamid.x" not in logged
    assert await _stored(db_url) == []
    metric = f'outbox_webhook_signature_failures_total{{reason="{reason}"}}'
    assert await _metric(signed, metric) == 1


async def test_the_signature_covers_the_raw_bytes(db_url: str, signed: str) -> None:
    raw = _body(_status(CLOUD_NUMBER))
    respaced = json.dumps(json.loads(raw), indent=2).encode()  # the same JSON, other bytes
    status, _ = await _post(signed, respaced, **{"x-360dialog-signature": _sign(raw)})
    assert status == 401


async def test_routing_by_number_and_by_waba_with_unknowns_stored_and_counted(
    db_url: str, signed: str
) -> None:
    raw = _body(_status(CLOUD_NUMBER), _status(ONPREM_NUMBER), _status("999"), TEMPLATE)
    unknown_waba = _body(TEMPLATE, waba="0")
    for body in (raw, unknown_waba):
        status, _ = await _post(signed, body, **{"x-360dialog-signature": _sign(body)})
        assert status == 200
    stored = await _stored(db_url)
    routed = [(c, [ch["field"] for e in p["entry"] for ch in e["changes"]]) for c, _, p in stored]
    assert sorted(routed) == [
        ("(unrouted)", ["message_template_status_update"]),
        ("(unrouted)", ["messages"]),
        ("cloud", ["messages", "message_template_status_update"]),
        ("onprem", ["messages", "message_template_status_update"]),
    ]
    assert await _metric(signed, 'outbox_webhooks_unrouted_total{missed="phone_number_id"}') == 1
    assert await _metric(signed, 'outbox_webhooks_unrouted_total{missed="waba_id"}') == 1


async def test_a_body_that_is_no_cloud_envelope_is_kept_unrouted(db_url: str, signed: str) -> None:
    raw = b'{"event": "channel_created", "channel_id": "abc"}'
    status, _ = await _post(signed, raw, **{"x-360dialog-signature": _sign(raw)})
    assert status == 200
    assert await _stored(db_url) == [("(unrouted)", True, json.loads(raw))]


@pytest.mark.parametrize(("raw", "status"), [(b"not json", 400), (b"[1]", 400), (b"\xff{}", 400)])
async def test_bad_bodies_are_4xx_after_the_signature(
    db_url: str, signed: str, raw: bytes, status: int
) -> None:
    assert (await _post(signed, raw, **{"x-360dialog-signature": _sign(raw)}))[0] == status


async def test_without_a_secret_basic_auth_vouches_only_for_its_channel(
    db_url: str, unsigned: str
) -> None:
    raw = _body(TEMPLATE)
    assert (await _post(unsigned, raw))[0] == 401
    assert (await _post(unsigned, raw, Authorization=basic("hook-user", "wrong")))[0] == 401
    status, _ = await _post(unsigned, raw, Authorization=basic("hook-user", "hook-pass-0123456789"))
    assert status == 200
    assert sorted((c, a) for c, a, _ in await _stored(db_url)) == [
        ("cloud", True),
        ("onprem", False),
    ]


async def test_the_per_channel_endpoint_still_works(db_url: str, signed: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{signed}/webhooks/cloud",
            data=_body(_status(CLOUD_NUMBER)),
            headers={"Authorization": basic("hook-user", "hook-pass-0123456789")},
        ) as response,
    ):
        assert response.status == 200
    assert [(c, a) for c, a, _ in await _stored(db_url)] == [("cloud", True)]
