"""Producer rows PostgreSQL accepts but a JSON decoder may not: each fails alone, with a reason.

`jsonb` takes numbers of any size and nesting of any depth; the daemon reads every jsonb value
through one guarded decoder, so such a row fails `invalid_payload` with no request while the
other rows of every channel are sent, and the operator's commands still read it.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db.inspection import InspectionStore
from outbox.db.operator_store import OperatorStore
from outbox.domain.models import State
from outbox.ports import Selector
from outbox.sandbox import Sandbox
from tests.support import drain, fetch, insert, row, set_last_inbound, settings_for

TEXT = {"type": "text", "text": {"body": "hello"}}
TEMPLATE = {"type": "template", "template": {"name": "x", "language": {"code": "en"}}}
DEEP = "[" * 1100 + "]" * 1100

# (column, the document as SQL writes it, what error_detail must say)
HOSTILE = {
    "huge-number": ("payload", '{"type": "text", "text": {"body": "x"}, "n": 1e400}', "64-bit"),
    "deep-nesting": (
        "payload",
        '{"type": "text", "text": {"body": "x"}, "n": ' + DEEP + "}",
        "nested",
    ),
    "int-over-2^64": (
        "payload",
        '{"type": "text", "text": {"body": "x"}, "n": 18446744073709551616}',
        "64-bit",
    ),
    "fallback-huge": (
        "fallback_template",
        '{"type": "template", "n": 1e400}',
        "fallback_template:",
    ),
}


@pytest.mark.parametrize("case", HOSTILE)
async def test_a_row_the_decoder_refuses_fails_alone_and_the_rest_are_sent(
    db_url: str, sandbox: tuple[Sandbox, str], case: str
) -> None:
    api, base_url = sandbox
    column, document, detail = HOSTILE[case]
    good = [
        await insert(db_url, ch, f"491510000000{i}", TEXT)
        for i, ch in enumerate(["cloud", "onprem"], start=1)
    ]
    await set_last_inbound(db_url, "cloud", "4915100000009", timedelta(minutes=1))
    payload = TEXT if column == "fallback_template" else None
    bad_id = int(
        (
            await fetch(
                db_url,
                f"INSERT INTO outbox.messages (channel, recipient, payload{', fallback_template' if payload else ''}) "
                f"VALUES ('cloud', '4915100000009', $1::jsonb{', $2::jsonb' if payload else ''}) RETURNING id",
                *([json.dumps(payload), document] if payload else [document]),
            )
        )[0]["id"]
    )
    await drain(settings_for(db_url, base_url))
    bad = await row(db_url, bad_id)
    assert (bad["state"], bad["error_code"]) == ("failed", "invalid_payload")
    assert detail in bad["error_detail"]
    assert [(await row(db_url, i))["state"] for i in good] == ["accepted", "accepted"]
    assert len(api.message_requests()) == 2


async def test_show_and_cancel_read_a_row_the_decoder_refuses(
    db_url: str, engine: AsyncEngine
) -> None:
    [bad] = await fetch(
        db_url,
        "INSERT INTO outbox.messages (channel, recipient, payload, metadata) "
        "VALUES ('cloud', '4915100000009', $1::jsonb, $1::jsonb) RETURNING id",
        '{"type": "text", "n": 1e400, "deep": ' + DEEP + "}",
    )
    shown = await InspectionStore(engine).message(bad["id"])
    assert shown is not None
    assert "1000000000" in str(shown["payload"])
    pages = [
        page
        async for page in OperatorStore(engine).candidates(
            Selector(states=(State.QUEUED,), ids=(bad["id"],))
        )
    ]
    assert [c.id for page in pages for c in page] == [bad["id"]]


async def test_integers_beyond_a_double_are_sent_exactly_or_refused(
    db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    """2**63 - 1 is sent digit for digit; nothing is ever rounded to a float on the way."""
    api, base_url = sandbox
    exact = await insert(db_url, "cloud", "4915100000001", {**TEXT, "n": 2**63 - 1})
    await drain(settings_for(db_url, base_url))
    assert (await row(db_url, exact))["state"] == "accepted"
    [request] = api.message_requests()
    assert request.body["n"] == 2**63 - 1
