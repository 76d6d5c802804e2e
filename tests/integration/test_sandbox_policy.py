"""The sandbox speaks issue 18: each new error code on demand, paused and held templates,
pricing in Cloud statuses, faults scoped to a template."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from outbox.domain.response import Accepted, Rejected, Unreadable, parse_send_response
from outbox.domain.retry import ErrorClass, classify
from outbox.sandbox.faults import Fault
from outbox.sandbox.notifications import AcceptedMessage, status_body
from outbox.sandbox.server import Sandbox
from outbox.sandbox.templates import TemplateBook
from tests.support import KEYS

TO = "4915112345678"


def template(name: str) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "to": TO,
        "type": "template",
        "template": {"name": name, "language": {"code": "en_US"}},
    }


@pytest.fixture
async def api() -> AsyncIterator[tuple[Sandbox, str, aiohttp.ClientSession]]:
    sandbox = Sandbox(KEYS, statuses=False)
    base_url = await sandbox.start()
    async with aiohttp.ClientSession() as session:
        yield sandbox, base_url, session
    await sandbox.stop()


async def send(
    api: tuple[Sandbox, str, aiohttp.ClientSession], body: dict[str, Any]
) -> Accepted | Rejected | Unreadable:
    _, base_url, session = api
    headers = {"D360-API-KEY": "cloud-key"}
    async with session.post(f"{base_url}/messages", json=body, headers=headers) as response:
        return parse_send_response(response.status, await response.json())


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (131048, ErrorClass.SPAM_LIMIT),
        (131049, ErrorClass.MARKETING_CAP),
        (131050, ErrorClass.OPTED_OUT),
        (131056, ErrorClass.RECIPIENT_THROTTLE),
        (131057, ErrorClass.MAINTENANCE),
        (132015, ErrorClass.TEMPLATE_PAUSED),
        (130472, ErrorClass.PERMANENT),
        (131026, ErrorClass.PERMANENT),
    ],
)
async def test_each_code_on_demand(
    api: tuple[Sandbox, str, aiohttp.ClientSession], code: int, expected: ErrorClass
) -> None:
    api[0].faults.add(Fault("error_code", code=code, times=1))
    rejected = await send(api, template("promo"))
    assert isinstance(rejected, Rejected)
    assert rejected.code == code
    assert classify(rejected) is expected
    assert isinstance(await send(api, template("promo")), Accepted)  # times=1


async def test_a_fault_can_name_templates(api: tuple[Sandbox, str, aiohttp.ClientSession]) -> None:
    api[0].faults.add(Fault("error_code", code=131048, templates=frozenset({"promo"})))
    assert isinstance(await send(api, template("otp")), Accepted)
    assert isinstance(await send(api, template("promo")), Rejected)


async def test_paused_and_held_templates(api: tuple[Sandbox, str, aiohttp.ClientSession]) -> None:
    sandbox, base_url, session = api
    async with session.post(
        f"{base_url}/sandbox/templates/promo", json={"status": "PAUSED"}
    ) as response:
        assert response.status == 200
    paused = await send(api, template("promo"))
    assert isinstance(paused, Rejected)
    assert paused.code == 132015
    sandbox.templates.set("promo", {"status": "APPROVED", "held": True})
    held = await send(api, template("promo"))
    assert isinstance(held, Accepted)
    assert held.message_status == "held_for_quality_assessment"
    fine = await send(api, template("otp"))
    assert isinstance(fine, Accepted)
    assert fine.message_status == "accepted"
    async with session.post(
        f"{base_url}/sandbox/templates/promo", json={"category": "PROMOTIONAL"}
    ) as response:
        assert response.status == web.HTTPBadRequest.status_code


def test_cloud_statuses_carry_pricing() -> None:
    book = TemplateBook()
    book.set("otp", {"category": "AUTHENTICATION"})
    sent = AcceptedMessage("cloud", "wamid.X", TO, 1.0, None, pricing=book.pricing(template("otp")))
    [item] = status_body(sent, "sent", 2.0)["entry"][0]["changes"][0]["value"]["statuses"]
    assert item["pricing"] == {
        "billable": True,
        "pricing_model": "PMP",
        "category": "authentication",
        "type": "regular",
    }
    free_form = book.pricing({"type": "text", "text": {"body": "hi"}})
    assert (free_form["category"], free_form["type"]) == ("service", "free_customer_service")
    read = status_body(sent, "read", 3.0)["entry"][0]["changes"][0]["value"]["statuses"][0]
    assert "pricing" not in read
