"""The send path end to end: rows inserted by SQL, the sandbox API on loopback, rows read back."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from outbox.sandbox import Fault, Sandbox
from tests.support import (
    NAMESPACE,
    drain,
    fetch,
    insert,
    row,
    running,
    settings_for,
    wait_until,
)

RECIPIENT = "4915112345678"
TEMPLATE = {
    "name": "order_shipped",
    "language": {"code": "en_US"},
    "components": [{"type": "body", "parameters": [{"type": "text", "text": "Anna"}]}],
}
DOCUMENT = {"link": "https://example.com/invoice.pdf", "caption": "Invoice", "filename": "i.pdf"}
BUTTONS = {
    "type": "button",
    "body": {"text": "Confirm delivery slot?"},
    "action": {"buttons": [{"type": "reply", "reply": {"id": "yes", "title": "Yes"}}]},
}


# (payload, expected On-Premise body minus `to`/`recipient_type`, expected Cloud body minus
#  `to`/`recipient_type`/`messaging_product`/`biz_opaque_callback_data`, sent_as)
CASES: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any], str]] = {
    "text": (
        {"type": "text", "text": {"body": "hi", "preview_url": True}},
        {"type": "text", "text": {"body": "hi"}, "preview_url": True},
        {"type": "text", "text": {"body": "hi", "preview_url": True}},
        "freeform",
    ),
    "template": (
        {"type": "template", "template": TEMPLATE},
        {
            "type": "template",
            "template": {
                **TEMPLATE,
                "namespace": NAMESPACE,
                "language": {"policy": "deterministic", "code": "en_US"},
            },
        },
        {"type": "template", "template": TEMPLATE},
        "template",
    ),
    "media": (
        {"type": "document", "document": DOCUMENT},
        {"type": "document", "document": DOCUMENT},
        {"type": "document", "document": DOCUMENT},
        "freeform",
    ),
    "interactive": (
        {"type": "interactive", "interactive": BUTTONS},
        {"type": "interactive", "interactive": BUTTONS},
        {"type": "interactive", "interactive": BUTTONS},
        "freeform",
    ),
}


@pytest.mark.parametrize("case", CASES)
async def test_each_dialect_receives_exactly_its_request(
    db_url: str, sandbox: tuple[Sandbox, str], case: str
) -> None:
    api, base_url = sandbox
    payload, onprem_body, cloud_body, sent_as = CASES[case]
    onprem_id = await insert(db_url, "onprem", "+49 151 1234-5678", payload)
    cloud_id = await insert(db_url, "cloud", RECIPIENT, payload)

    await drain(settings_for(db_url, base_url))

    requests = {r.api_key_label: r for r in api.message_requests()}
    assert len(api.message_requests()) == 2
    assert requests["onprem"].path == "/v1/messages"
    assert requests["onprem"].body == {
        "to": RECIPIENT,
        "recipient_type": "individual",
        **onprem_body,
    }
    assert requests["cloud"].path == "/messages"
    assert requests["cloud"].body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": RECIPIENT,
        **cloud_body,
        "biz_opaque_callback_data": f"outbox:{cloud_id}",
    }
    for message_id, label in ((onprem_id, "onprem"), (cloud_id, "cloud")):
        stored = await row(db_url, message_id)
        assert stored["state"] == "accepted"
        assert stored["wamid"] == requests[label].message_id
        assert stored["sent_as"] == sent_as
        assert stored["accepted_at"] is not None
        assert stored["attempts"] == 1
        assert stored["claimed_by"] is None
        assert stored["error_code"] is None


# (fault, expected state, error_code, attempts, retry scheduled)
# Full jitter can draw a delay of next to nothing, and a retry due before the drain ends is
# sent within it: backoff this long makes that one chance in thousands.
SLOW_BACKOFF = {"backoff_base": timedelta(hours=1), "backoff_cap": timedelta(days=1)}

ERROR_CASES = {
    # 1006 (unknown contact or media) gets one more try, as courier does.
    "onprem-404-1006": (
        "onprem",
        Fault("error_code", code=1006, http_status=404),
        "queued",
        "1006",
        1,
        True,
    ),
    "cloud-131026": (
        "cloud",
        Fault("error_code", code=131026, http_status=400),
        "failed",
        "131026",
        1,
        False,
    ),
    "onprem-2014-template": (
        "onprem",
        Fault("error_code", code=2001, http_status=400),
        "failed",
        "2001",
        1,
        False,
    ),
    "onprem-429": (
        "onprem",
        Fault("status", status=429, retry_after=30),
        "queued",
        "http_429",
        0,
        True,
    ),
    "cloud-429": ("cloud", Fault("status", status=429), "queued", "130429", 0, True),
    "onprem-503": ("onprem", Fault("status", status=503), "queued", "http_503", 1, True),
    "cloud-130429": (
        "cloud",
        Fault("error_code", code=130429, http_status=400),
        "queued",
        "130429",
        0,
        True,
    ),
    "cloud-131056": (
        "cloud",
        Fault("error_code", code=131056, http_status=400),
        "queued",
        "131056",
        0,
        True,
    ),
    # The channel pauses; the row waits in line, uncharged, with no retry time of its own.
    "onprem-401": ("onprem", Fault("status", status=401), "queued", "http_401", 0, False),
    "cloud-disconnect": ("cloud", Fault("disconnect"), "unknown", "no_response", 1, False),
}


@pytest.mark.parametrize("case", ERROR_CASES)
async def test_error_shapes_map_to_row_values(
    db_url: str, sandbox: tuple[Sandbox, str], case: str
) -> None:
    api, base_url = sandbox
    channel, fault, state, code, attempts, retry_scheduled = ERROR_CASES[case]
    api.faults.add(fault)
    message_id = await insert(db_url, channel, RECIPIENT, {"type": "text", "text": {"body": "x"}})

    await drain(settings_for(db_url, base_url, **SLOW_BACKOFF))

    stored = await row(db_url, message_id)
    assert (stored["state"], stored["error_code"], stored["attempts"]) == (state, code, attempts)
    assert stored["error_title"]
    assert (stored["next_attempt_at"] is not None) is retry_scheduled
    assert stored["wamid"] is None
    assert len(api.message_requests()) == 1
    if state == "failed":
        assert stored["failed_at"] is not None


async def test_retry_after_server_error_then_success(
    db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    api, base_url = sandbox
    api.faults.add(Fault("status", status=500, times=1))
    message_id = await insert(db_url, "cloud", RECIPIENT, {"type": "text", "text": {"body": "x"}})
    settings = settings_for(db_url, base_url, **SLOW_BACKOFF)

    await drain(settings)
    first = await row(db_url, message_id)
    assert (first["state"], first["error_code"]) == ("queued", "http_500")
    await fetch(db_url, "UPDATE outbox.messages SET next_attempt_at = now()")
    await drain(settings)

    stored = await row(db_url, message_id)
    assert (stored["state"], stored["attempts"], stored["error_code"]) == ("accepted", 2, None)
    assert len(api.message_requests()) == 2


async def test_bad_rows_fail_without_a_request_and_good_rows_still_go(
    db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    api, base_url = sandbox
    bad: dict[str, tuple[str, str, Any, str]] = {
        "not-a-phone": (
            "cloud",
            "call me",
            {"type": "text", "text": {"body": "x"}},
            "invalid_recipient",
        ),
        "no-type-object": ("cloud", RECIPIENT, {"type": "image"}, "invalid_payload"),
        "unknown-type": (
            "onprem",
            RECIPIENT,
            {"type": "hologram", "hologram": {}},
            "invalid_payload",
        ),
        "template-no-name": (
            "cloud",
            RECIPIENT,
            {"type": "template", "template": {"language": {"code": "en"}}},
            "invalid_payload",
        ),
        "too-long": (
            "onprem",
            RECIPIENT,
            {"type": "text", "text": {"body": "x" * 4097}},
            "invalid_payload",
        ),
    }
    ids = {name: await insert(db_url, ch, rcpt, p) for name, (ch, rcpt, p, _) in bad.items()}
    good = await insert(db_url, "cloud", RECIPIENT, {"type": "text", "text": {"body": "ok"}})

    await drain(settings_for(db_url, base_url))

    for name, (_, _, _, code) in bad.items():
        stored = await row(db_url, ids[name])
        assert (stored["state"], stored["error_code"]) == ("failed", code), name
        assert stored["error_detail"], name
        assert stored["attempts"] == 0, name
    assert (await row(db_url, good))["state"] == "accepted"
    assert len(api.message_requests()) == 1


async def test_expired_row_is_not_sent(db_url: str, sandbox: tuple[Sandbox, str]) -> None:
    api, base_url = sandbox
    message_id = await insert(
        db_url,
        "cloud",
        RECIPIENT,
        {"type": "text", "text": {"body": "x"}},
        expires_at=__import__("datetime").datetime(2020, 1, 1, tzinfo=__import__("datetime").UTC),
    )
    await drain(settings_for(db_url, base_url))
    assert (await row(db_url, message_id))["state"] == "expired"
    assert api.message_requests() == []


async def test_future_send_after_waits_and_priority_goes_first(
    db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    api, base_url = sandbox
    text = {"type": "text", "text": {"body": "x"}}
    later = await insert(
        db_url,
        "cloud",
        "4915100000001",
        text,
        send_after=__import__("datetime").datetime(2999, 1, 1, tzinfo=__import__("datetime").UTC),
    )
    low = await insert(db_url, "cloud", "4915100000002", text)
    high = await insert(db_url, "cloud", "4915100000003", text, priority=9)

    await drain(settings_for(db_url, base_url, max_in_flight=1))

    assert (await row(db_url, later))["state"] == "queued"
    assert [r.body["to"] for r in api.message_requests()] == ["4915100000003", "4915100000002"]
    assert {(await row(db_url, i))["state"] for i in (low, high)} == {"accepted"}


async def test_insert_wakes_an_idle_sender_well_before_the_poll(
    db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    from datetime import timedelta

    api, base_url = sandbox
    settings = settings_for(db_url, base_url, poll_interval=timedelta(seconds=30))
    async with running(settings):
        await asyncio.sleep(0.3)  # the first poll has run; the sender is idle now
        loop = asyncio.get_running_loop()
        began = loop.time()
        await insert(db_url, "cloud", RECIPIENT, {"type": "text", "text": {"body": "x"}})
        await wait_until(lambda: api.message_requests(), within=10)
        woke_after = loop.time() - began
    # The poll would have taken 30 s; a starved machine can take seconds for the wake-up.
    assert woke_after < 5.0, woke_after


async def test_listener_reconnects_after_its_connection_is_killed(
    db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    from datetime import timedelta

    api, base_url = sandbox
    settings = settings_for(db_url, base_url, poll_interval=timedelta(seconds=30))
    async with running(settings):
        await asyncio.sleep(0.3)
        killed = await fetch(
            db_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'outbox:listener'",
        )
        assert [r[0] for r in killed] == [True]
        await wait_until(
            lambda: fetch(
                db_url,
                "SELECT 1 FROM pg_stat_activity WHERE application_name = 'outbox:listener'",
            ),
            within=10,
        )
        await insert(db_url, "cloud", RECIPIENT, {"type": "text", "text": {"body": "x"}})
        await wait_until(lambda: api.message_requests(), within=5)


async def test_expired_lease_becomes_unknown_not_resent(
    db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    api, base_url = sandbox
    message_id = await insert(db_url, "cloud", RECIPIENT, {"type": "text", "text": {"body": "x"}})
    await fetch(
        db_url,
        "UPDATE outbox.messages SET state = 'sending', claimed_by = 'crashed:1', attempts = 1, "
        "lease_until = now() - interval '1 second' WHERE id = $1",
        message_id,
    )
    async with running(settings_for(db_url, base_url)):
        await wait_until(lambda: _state(db_url, message_id, "unknown"))
    stored = await row(db_url, message_id)
    # The holder stays on record: were it alive, its answer would still win (test_lease_rescue).
    assert (stored["error_code"], stored["claimed_by"]) == ("lease_expired", "crashed:1")
    assert api.message_requests() == []


async def _state(db_url: str, message_id: int, state: str) -> bool:
    return bool((await row(db_url, message_id))["state"] == state)
