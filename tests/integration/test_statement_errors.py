"""A statement the database refuses for its text is a bug, not an outage (issue 14, item 12).

Driver errors are sorted by SQLSTATE class: the database away (`DatabaseUnavailable`), the
statement's data refused (`StatementRejected`: 22, 23, 54), or the statement itself refused
(`StatementInvalid`: 42, 0A, ...). A running daemon hit by the last logs ERROR, counts it on
/metrics and answers 503 on /readyz until the statement works again.
"""

from __future__ import annotations

from datetime import timedelta

import aiohttp
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db.errors import translated_errors
from outbox.errors import DatabaseError, StatementInvalid, StatementRejected
from outbox.sandbox import Sandbox
from tests.support import fetch, insert, row, running, settings_for, wait_until


@pytest.mark.parametrize(
    ("sql", "params", "kind"),
    [
        pytest.param("SELCT 1", {}, StatementInvalid, id="42601-syntax"),
        pytest.param("SELECT * FROM outbox.nope", {}, StatementInvalid, id="42P01-no-table"),
        pytest.param("SELECT nope FROM outbox.messages", {}, StatementInvalid, id="42703-column"),
        pytest.param("SELECT CAST(:v AS text)", {"v": "a\x00b"}, StatementRejected, id="22021-nul"),
        pytest.param(
            "SELECT CAST(:v AS text)", {"v": "\ud800"}, StatementRejected, id="lone-surrogate"
        ),
        pytest.param("SELECT 1 / 0", {}, StatementRejected, id="22012-division"),
    ],
)
async def test_driver_errors_are_sorted_by_what_was_refused(
    engine: AsyncEngine, sql: str, params: dict[str, str], kind: type[DatabaseError]
) -> None:
    async def run() -> None:
        with translated_errors():
            async with engine.connect() as connection:
                await connection.execute(text(sql), params)

    with pytest.raises(DatabaseError) as caught:
        await run()
    assert type(caught.value) is kind
    # The driver's own words, short: never the whole statement with its parameters.
    message = str(caught.value)
    assert "[SQL:" not in message
    assert "\x00" not in message
    assert len(message) <= 500


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, await response.text()


async def test_a_refused_statement_fails_readiness_loudly_until_it_works_again(
    db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    _, base_url = sandbox
    settings = settings_for(db_url, base_url, flush_interval=timedelta(0))
    async with running(settings, roles={"sender", "web"}) as started, aiohttp.ClientSession() as s:
        web = f"http://127.0.0.1:{started.http_port}"
        assert (await _get(s, f"{web}/readyz"))[0] == 200
        # A schema the code does not expect: every result write names a column that is gone.
        await fetch(db_url, "ALTER TABLE outbox.messages RENAME COLUMN error_detail TO gone")
        message_id = await insert(db_url, "cloud", "4915112345678", {"text": {"body": "hi"}})

        async def not_ready() -> bool:
            status, body = await _get(s, f"{web}/readyz")
            return status == 503 and "statement" in body

        await wait_until(not_ready, within=20)
        _, metrics = await _get(s, f"{web}/metrics")
        assert 'outbox_statements_invalid_total{part="results"}' in metrics
        assert (await row(db_url, message_id))["state"] == "sending"

        await fetch(db_url, "ALTER TABLE outbox.messages RENAME COLUMN gone TO error_detail")

        async def accepted_and_ready() -> bool:
            done = (await row(db_url, message_id))["state"] == "accepted"
            return done and (await _get(s, f"{web}/readyz"))[0] == 200

        await wait_until(accepted_and_ready, within=30)
