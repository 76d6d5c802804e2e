"""A row sent again keeps one truth: the current send's id, and every earlier one in its history.

The window fallback (a `failed 131047` status), an operator's replay and the unknown resend send
a row again. The new send's answer may be lost (the sandbox's `hang` accepts the message but the
answer never arrives; `disconnect` drops the request unaccepted), which leaves the row `unknown`.
Then a status of the new send, found by the outbox id, must settle the row, and a late status of
the earlier send must change nothing.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db.operator_store import OperatorStore
from outbox.domain.models import Dialect, State
from outbox.sandbox import Fault, Sandbox
from outbox.sandbox.notifications import AcceptedMessage, status_body
from tests.support import fetch, insert, row, running, settings_for, wait_until

RECIPIENT = "4915100000001"
TEXT = {"type": "text", "text": {"body": "hi"}}
FALLBACK = json.dumps({"type": "template", "template": {"name": "x", "language": {"code": "en"}}})
# Longer than the hung request: its status arrives before the unknown row would be resent.
QUIET = timedelta(seconds=1.5)
HANG = 0.5


def _settings(db_url: str, base_url: str, quiet: timedelta = QUIET) -> Any:
    return settings_for(
        db_url,
        base_url,
        poll_interval=timedelta(milliseconds=50),
        maintenance_interval=timedelta(milliseconds=100),
        request_timeout=timedelta(milliseconds=300),
        unknown_quiet=quiet,
    )


async def _status(
    db_url: str,
    channel: str,
    wamid: str,
    status: str,
    message_id: int,
    *,
    code: int | None = None,
) -> None:
    """A status notification in the API's own shape, stored as the receiver stores it; Cloud's
    echoes the outbox id (biz_opaque_callback_data), On-Premise's names the wamid only."""
    dialect = Dialect(channel)
    callback = f"outbox:{message_id}" if dialect is Dialect.CLOUD else None
    accepted = AcceptedMessage(dialect.value, wamid, RECIPIENT, 1765000000.0, callback)
    body = status_body(accepted, status, 1765000000.0)
    if code is not None:
        statuses = body["statuses"] if "statuses" in body else body["entry"][0]["changes"][0]["value"]["statuses"]  # fmt: skip
        statuses[0]["errors"] = [{"code": code, "title": "Re-engagement message"}]
    await fetch(
        db_url,
        "INSERT INTO outbox.webhook_events (channel, payload) VALUES ($1, $2::jsonb)",
        channel,
        json.dumps(body),
    )
    await wait_until(lambda: _processed(db_url))


async def _processed(db_url: str) -> bool:
    return not await fetch(db_url, "SELECT 1 FROM outbox.webhook_events WHERE processed_at IS NULL")


def _state(db_url: str, message_id: int, state: str) -> Any:
    async def check() -> bool:
        return str((await row(db_url, message_id))["state"]) == state

    return check


async def _verdicts(db_url: str, message_id: int) -> list[tuple[str, str, str]]:
    rows = await fetch(
        db_url,
        "SELECT wamid, status, verdict FROM outbox.status_history WHERE message_id = $1 ORDER BY id",
        message_id,
    )
    return [(r["wamid"], r["status"], r["verdict"]) for r in rows]


async def _sent_first_as_text(db_url: str, api: Sandbox, channel: str) -> tuple[int, str]:
    """A free-form row with a fallback, accepted as W1; returns its id and W1."""
    message_id = await insert(db_url, channel, RECIPIENT, TEXT, fallback_template=FALLBACK)
    await wait_until(_state(db_url, message_id, "accepted"))
    [first] = api.message_requests()
    assert first.message_id is not None
    return message_id, first.message_id


async def test_the_fallback_whose_answer_was_lost_is_settled_by_its_own_status(
    db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    api, base_url = sandbox
    async with running(_settings(db_url, base_url), roles={"sender", "reconciler"}):
        message_id, w1 = await _sent_first_as_text(db_url, api, "cloud")
        api.faults.add(Fault("hang", delay=HANG, times=1))
        await _status(db_url, "cloud", w1, "failed", message_id, code=131047)
        await wait_until(_state(db_url, message_id, "unknown"))
        await wait_until(lambda: api.message_requests()[1].message_id is not None)
        fallback = api.message_requests()[1]
        assert fallback.body["type"] == "template"
        w2 = fallback.message_id
        assert w2 is not None
        assert w2 != w1

        await _status(db_url, "cloud", w2, "sent", message_id)
        stored = await row(db_url, message_id)
        await asyncio.sleep(QUIET.total_seconds() + 0.5)  # past the quiet period: no resend

    assert (stored["state"], stored["wamid"], stored["sent_as"]) == (
        "sent",
        w2,
        "fallback_template",
    )
    # No resend: the fallback's own status settled the row.
    assert len(api.message_requests()) == 2
    assert (w2, "sent", "applied") in await _verdicts(db_url, message_id)
    sends = await fetch(db_url, "SELECT wamid, sent_as FROM outbox.message_sends WHERE message_id = $1", message_id)  # fmt: skip
    assert [(s["wamid"], s["sent_as"]) for s in sends] == [(w1, "freeform")]


@pytest.mark.parametrize("channel", ["cloud", "onprem"])
async def test_a_late_status_of_the_earlier_send_changes_nothing(
    db_url: str, sandbox: tuple[Sandbox, str], channel: str
) -> None:
    api, base_url = sandbox
    # The unknown row is held for the test's length: the late status must not settle it.
    settings = _settings(db_url, base_url, quiet=timedelta(minutes=5))
    async with running(settings, roles={"sender", "reconciler"}):
        message_id, w1 = await _sent_first_as_text(db_url, api, channel)
        api.faults.add(Fault("disconnect", times=1))
        await _status(db_url, channel, w1, "failed", message_id, code=131047)
        await wait_until(_state(db_url, message_id, "unknown"))
        # The fallback never reached the API; a late `sent` of the text arrives.
        await _status(db_url, channel, w1, "sent", message_id)
        stored = await row(db_url, message_id)

    assert (stored["state"], stored["error_code"], stored["wamid"]) == ("unknown", "no_response", None)  # fmt: skip
    assert stored["sent_at"] is None
    assert await _verdicts(db_url, message_id) == [
        (w1, "failed", "fallback"),
        (w1, "sent", "superseded"),
    ]


async def test_a_replay_whose_answer_was_lost_is_settled_by_its_own_status(
    db_url: str, sandbox: tuple[Sandbox, str], engine: AsyncEngine
) -> None:
    api, base_url = sandbox
    async with running(_settings(db_url, base_url), roles={"sender", "reconciler"}):
        message_id = await insert(db_url, "cloud", RECIPIENT, TEXT)
        await wait_until(_state(db_url, message_id, "accepted"))
        w1 = api.message_requests()[0].message_id
        assert w1 is not None
        await _status(db_url, "cloud", w1, "failed", message_id, code=131026)
        assert (await row(db_url, message_id))["state"] == "failed"

        api.faults.add(Fault("hang", delay=HANG, times=1))
        replayed = await OperatorStore(engine).replay(
            [message_id], [State.FAILED], actor="t", forced=False, expires_at=None, note=None
        )
        assert replayed.done == [message_id]
        await wait_until(_state(db_url, message_id, "unknown"))
        await wait_until(lambda: api.message_requests()[1].message_id is not None)
        w2 = api.message_requests()[1].message_id
        assert w2 is not None

        await _status(db_url, "cloud", w2, "delivered", message_id)
        assert (await row(db_url, message_id))["state"] == "delivered"
        await asyncio.sleep(QUIET.total_seconds() + 0.5)  # past the quiet period: no resend
        # A late `read` of the first send is about the earlier send only.
        await _status(db_url, "cloud", w1, "read", message_id)
        stored = await row(db_url, message_id)

    assert (stored["state"], stored["wamid"], stored["read_at"]) == ("delivered", w2, None)
    assert len(api.message_requests()) == 2
    assert (w1, "read", "superseded") in await _verdicts(db_url, message_id)
