"""Issue 19 §1 end to end: `outbox run` as the README's daemon role sends, reconciles and
receives a producer's rows through the sandbox; the README's producer examples run verbatim as
the producer role; every admin verb runs as the operator role."""

from __future__ import annotations

import base64
import json
import os
import sys
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
    SUBPROCESS_ENV,
    daemon_http_port,
    fetch,
    outbox_command,
    run_process,
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


async def _seed(db_url: str, state: str, **columns: str) -> int:
    """A row as the daemon would have left it (written as the superuser); SQL values."""
    values = {"channel": "'shop-de'", "recipient": "'4915100000009'", "state": f"'{state}'"}
    values |= {"payload": """'{"type": "template"}'""", **columns}
    [record] = await fetch(
        db_url,
        f"INSERT INTO outbox.messages ({', '.join(values)}) "
        f"VALUES ({', '.join(values.values())}) RETURNING id",
    )
    return int(record["id"])


# Twenty `outbox` processes, each a Python start (about 1.5 s on an idle machine, more at load 8).
@pytest.mark.timeout(400)
async def test_every_admin_verb_runs_as_the_operator_role(
    roles: Roles, db_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "operator.toml"
    config.write_text(_config(roles.url("outbox_operator"), "http://127.0.0.1:9"))
    queued = await _seed(db_url, "queued")
    failed = await _seed(db_url, "failed", error_code="'131026'", failed_at="now()")
    aged = "now() - interval '40 days'"
    old = await _seed(db_url, "read", created_at=aged, updated_at=aged)
    await fetch(
        db_url,
        "INSERT INTO outbox.status_history (message_id, wamid, status, at, verdict)"
        " VALUES ($1, 'wamid.R', 'read', now() - interval '40 days', 'applied')",
        old,
    )
    await fetch(
        db_url,
        "INSERT INTO outbox.templates (waba_id, name, language, status, source)"
        " VALUES ('w1', 'promo', 'en', 'PAUSED', 'webhook')",
    )
    secrets = tmp_path / "secrets.txt"
    secrets.write_text("api_key=sealed-key\n")
    master = base64.urlsafe_b64encode(os.urandom(32)).decode()
    env = {"TEST_KEY": "k", "OUTBOX_SECRET_KEY_ENV": "TEST_MASTER", "TEST_MASTER": master}
    for argv, expected in [
        (["show", str(failed)], "131026"),
        (["stats"], "shop-de"),
        (["replay", "--id", str(failed), "--dry-run"], "would replay: 1"),
        (["replay", "--id", str(failed), "--reason", "test"], "replayed: 1"),
        (["cancel", "--id", str(queued), "--dry-run"], ""),
        (["cancel", "--id", str(queued)], "cancelled: 1"),
        (["purge", "--older-than", "30d", "--include-delivered", "--dry-run"], ""),
        (["purge", "--older-than", "30d", "--include-delivered"], ""),
        (
            [
                "channels",
                "add",
                "extra",
                "--dialect",
                "cloud",
                "--base-url",
                "http://127.0.0.1:9",
                "--api-key-env",
                "TEST_KEY",
            ],
            "",
        ),
        (["channels", "update", "extra", "--rate-per-second", "5"], ""),
        (
            [
                "channels",
                "add",
                "sealed",
                "--dialect",
                "cloud",
                "--base-url",
                "http://127.0.0.1:9",
                "--secrets-stdin",
            ],
            "",
        ),
        (["keys", "check"], ""),
        (["keys", "rotate"], ""),
        (["channels", "remove", "sealed"], ""),
        (["channels", "disable", "extra"], ""),
        (["channels", "enable", "extra"], ""),
        (["channels", "list"], "extra"),
        (["channels", "show", "extra"], "extra"),
        (["channels", "remove", "extra"], ""),
        (["templates", "list"], "promo"),
        (["templates", "resume", "promo"], "resumed promo"),
    ]:
        with secrets.open("rb") as stdin:  # read by --secrets-stdin only
            code, out, err = await run_process(
                sys.executable, "-m", "outbox", *argv, "--config", str(config),
                stdin=stdin, env={**os.environ, **SUBPROCESS_ENV, **env},
            )  # fmt: skip
        assert code == 0, (argv, out, err)
        assert expected in out, (argv, out)
    states = await fetch(db_url, "SELECT id, state FROM outbox.messages ORDER BY id")
    assert [tuple(r) for r in states] == [(queued, "cancelled"), (failed, "queued")]
    actions = await fetch(db_url, "SELECT count(*) FROM outbox.operator_actions")
    assert actions[0][0] >= 2
