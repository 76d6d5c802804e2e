"""Issue 19 §1 end to end: `outbox run` as the README's daemon role sends, reconciles and
receives a producer's rows through the sandbox; the README's producer examples run verbatim as
the producer role; every admin verb runs as the operator role."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from outbox.sandbox import Sandbox
from tests.roles import (
    CONTACTS_EXAMPLE,
    DAEMON,
    OPERATOR,
    PRODUCER,
    PRODUCERS,
    TEMPLATE_EXAMPLE,
    TEXT_EXAMPLE,
    Roles,
    readme_sql,
    scoped_roles,
)
from tests.support import (
    KEYS,
    daemon_http_port,
    fetch,
    outbox_command,
    spawn_daemon,
    stop_daemon,
    wait_until,
)

pytestmark = pytest.mark.slow


def _config(database_url: str, base_url: str) -> str:
    return f"""
database_url = {json.dumps(database_url)}

[http]
host = "127.0.0.1"
port = 0

[sender]
poll_interval = 1

[[channels]]
id = "shop-de"
dialect = "cloud"
base_url = {json.dumps(base_url)}
api_key_env = "TEST_CLOUD_KEY"
rate_per_second = 1000
webhook_auth = "none"
"""


@pytest.fixture
async def roles(db_url: str) -> AsyncIterator[Roles]:
    async with scoped_roles(db_url) as made:
        await made.run(DAEMON, OPERATOR, PRODUCERS, PRODUCER)
        yield made


async def _state(db_url: str, message_id: int) -> tuple[str, str | None]:
    [found] = await fetch(
        db_url, "SELECT state, error_code FROM outbox.messages WHERE id = $1", message_id
    )
    return found["state"], found["error_code"]


async def test_the_daemon_role_sends_a_producers_rows_through_the_sandbox(
    roles: Roles, db_url: str, tmp_path: Path
) -> None:
    api = Sandbox(KEYS)  # with status webhooks: the receiver and reconciler run as the role
    base_url = await api.start()
    daemon_config, operator_config = tmp_path / "daemon.toml", tmp_path / "operator.toml"
    daemon_config.write_text(_config(roles.url("outbox_daemon"), base_url))
    operator_config.write_text(_config(roles.url("outbox_operator"), base_url))
    log = tmp_path / "daemon.log"
    daemon = await spawn_daemon(daemon_config, log, roles="sender,reconciler,web")
    try:
        port = await daemon_http_port(daemon, log)
        code, _, err = await outbox_command(
            "set-webhook", "shop-de", f"http://127.0.0.1:{port}/webhooks/shop-de",
            "--config", str(operator_config),
        )  # fmt: skip
        assert code == 0, err
        producer = await roles.connect("shop_producer")
        try:
            await producer.execute(readme_sql(TEMPLATE_EXAMPLE))
            template = await producer.fetchval("SELECT max(id) FROM outbox.messages")
            # The text to a user who never wrote: window_closed, as the README says.
            text = await producer.fetchval(readme_sql(TEXT_EXAMPLE))
            await wait_until(lambda: _is(db_url, text, ("failed", "window_closed")), within=60)
            await wait_until(lambda: _is(db_url, template, ("read", None)), within=60)
            # The producer records the user's message; the operator replays the text.
            await producer.execute(readme_sql(CONTACTS_EXAMPLE))
            code, out, err = await outbox_command(
                "replay", "--id", str(text), "--config", str(operator_config)
            )
            assert code == 0, err
            assert "replayed: 1" in out
            await wait_until(lambda: _is(db_url, text, ("read", None)), within=60)
            outcome = await producer.fetch(
                readme_sql("Read the outcome").replace("id = 42", f"id = {text}")
            )
        finally:
            await producer.close()
    finally:
        code = await stop_daemon(daemon, log)
        await api.stop()
    assert code == 0, log.read_text()[-3000:]
    assert [r["state"] for r in outcome] == ["read"]
    sent = [r.body["type"] for r in api.message_requests()]
    assert sent == ["template", "text"]
    text_log = log.read_text()
    events = [json.loads(line) for line in text_log.splitlines() if line.startswith("{")]
    troubles = {e["event"] for e in events if e["level"] in ("warning", "error", "critical")}
    # The text's window_closed, and the channel that takes webhooks without credentials.
    assert troubles <= {"outbox.send.failed", "outbox.webhook.unauthenticated"}, troubles
    for trouble in ("permission denied", "statement_invalid", "InsufficientPrivilege"):
        assert trouble not in text_log, trouble


async def _is(db_url: str, message_id: int, expected: tuple[str, str | None]) -> bool:
    return await _state(db_url, message_id) == expected
