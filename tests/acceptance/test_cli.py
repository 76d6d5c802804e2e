"""The `outbox` command as an operator runs it: real processes, exit codes, messages."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from pathlib import Path

import pytest

from outbox.db import migrate
from outbox.sandbox import Sandbox
from tests.paths import ROOT
from tests.support import SUBPROCESS_ENV, config_toml, fetch, reap, run_process
from tests.support import outbox_command as _outbox

pytestmark = pytest.mark.slow


async def test_migrate_then_check(empty_db_url: str, tmp_path: Path) -> None:
    config = tmp_path / "outbox.toml"
    config.write_text(config_toml(empty_db_url, "http://127.0.0.1:9"))

    code, _, err = await _outbox("check", "--config", str(config), "--skip-api")
    assert code == 1
    assert "run `outbox migrate`" in err

    code, out, _ = await _outbox("migrate", "--config", str(config))
    assert code == 0
    assert f"schema: empty -> {migrate.head_revision()}" in out

    code, out, _ = await _outbox("check", "--config", str(config), "--skip-api")
    assert code == 0, out
    assert "schema current" in out


async def test_alembic_upgrade_head_works_from_the_checkout(empty_db_url: str) -> None:
    code, _, err = await run_process(
        sys.executable, "-m", "alembic", "upgrade", "head",
        cwd=ROOT, env={**os.environ, "OUTBOX_DATABASE_URL": empty_db_url},
    )  # fmt: skip
    assert code == 0, err
    rows = await fetch(empty_db_url, "SELECT version_num FROM outbox.alembic_version")
    assert [r[0] for r in rows] == [migrate.head_revision()]


async def test_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "outbox.toml"
    config.write_text(
        config_toml(f"postgresql://nobody@/nowhere?host={tmp_path}", "http://127.0.0.1:9")
    )
    code, _, err = await _outbox("check", "--config", str(config), "--skip-api")
    assert code == 1
    assert "database unreachable" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("mutate", "named"),
    [
        (
            lambda t: t.replace('dialect = "cloud"', 'dialect = "graph"'),
            "channels[1] (id 'cloud').dialect",
        ),
        (lambda t: t + "\nsurprise = 1\n", "surprise"),
        (lambda t: t.replace("[sender]", "[sender]\nbatch_sise = 5"), "sender.batch_sise"),
    ],
    ids=["bad-dialect", "unknown-top-level-key", "typo-in-sender"],
)
async def test_bad_config_names_the_key_and_exits_2(
    tmp_path: Path, mutate: object, named: str
) -> None:
    config = tmp_path / "outbox.toml"
    config.write_text(mutate(config_toml("postgresql://u@/db", "http://127.0.0.1:9")))  # type: ignore[operator]
    code, _, err = await _outbox("run", "--config", str(config))
    assert code == 2
    assert named in err
    assert "Traceback" not in err


async def test_missing_api_key_names_the_channel_and_no_secret(tmp_path: Path) -> None:
    config = tmp_path / "outbox.toml"
    config.write_text(config_toml("postgresql://u@/db", "http://127.0.0.1:9"))
    env = {**SUBPROCESS_ENV, "TEST_CLOUD_KEY": ""}
    code, out, err = await _outbox("check", "--config", str(config), env=env)
    assert code == 2
    assert "channels[1] (id 'cloud')" in err
    assert "TEST_CLOUD_KEY" in err
    assert "onprem-key" not in out + err


async def test_help_names_environment_fallbacks() -> None:
    code, out, _ = await _outbox("run", "--help")
    assert code == 0
    assert "OUTBOX_CONFIG" in out
    assert "OUTBOX_ROLE" in out


async def test_set_webhook_registers_the_url_with_basic_auth_and_masks_it(
    db_url: str, sandbox: tuple[Sandbox, str], tmp_path: Path
) -> None:
    api, base_url = sandbox
    config = tmp_path / "outbox.toml"
    config.write_text(config_toml(db_url, base_url, cloud_hook_auth=True))
    url = "https://hooks.example.com/webhooks/cloud"
    code, out, err = await _outbox(
        "set-webhook",
        "cloud",
        url,
        "--config",
        str(config),
        env={"TEST_HOOK_USER": "hook-user", "TEST_HOOK_PASS": "s3cret-pass-0123456789"},
    )
    assert code == 0, err
    assert url in out
    assert '"Authorization": "********"' in out
    token = base64.b64encode(b"hook-user:s3cret-pass-0123456789").decode()
    assert token not in out + err
    [request] = [r for r in api.requests if r.path == "/v1/configs/webhook"]
    assert request.body == {"url": url, "headers": {"Authorization": f"Basic {token}"}}
    assert request.api_key_label == "cloud"


async def test_set_webhook_waba_registers_the_accounts_webhook(
    db_url: str, sandbox: tuple[Sandbox, str], tmp_path: Path
) -> None:
    api, base_url = sandbox
    config = tmp_path / "outbox.toml"
    config.write_text(config_toml(db_url, base_url, cloud_hook_auth=True))
    url = "https://hooks.example.com/webhooks"
    code, out, err = await _outbox(
        "set-webhook",
        "cloud",
        url,
        "--waba",
        "--config",
        str(config),
        env={"TEST_HOOK_USER": "hook-user", "TEST_HOOK_PASS": "s3cret-pass-0123456789"},
    )
    assert code == 0, err
    assert url in out
    assert '"Authorization": "********"' in out
    token = base64.b64encode(b"hook-user:s3cret-pass-0123456789").decode()
    assert token not in out + err
    assert api.waba.registrations == [
        {"url": url, "headers": {"Authorization": f"Basic {token}"}, "override_all": False}
    ]
    # the number's own webhook is left as it was
    assert [r for r in api.requests if r.path == "/v1/configs/webhook"] == []


async def test_sandbox_refuses_a_partner_secret_variable_that_is_not_set() -> None:
    code, _, err = await _outbox(
        "sandbox", "--port", "0", "--partner-secret-env", "H18_NO_SUCH_VARIABLE"
    )
    assert code == 2
    assert "--partner-secret-env: H18_NO_SUCH_VARIABLE is not set" in err


async def test_set_webhook_refuses_unknown_channels_and_reports_api_errors(
    db_url: str, sandbox: tuple[Sandbox, str], tmp_path: Path
) -> None:
    _, base_url = sandbox
    config = tmp_path / "outbox.toml"
    config.write_text(config_toml(db_url, base_url))
    code, _, err = await _outbox(
        "set-webhook", "nope", "https://x.example/h", "--config", str(config)
    )
    assert code == 2
    assert "no channel 'nope'" in err
    code, _, err = await _outbox(
        "set-webhook",
        "onprem",
        "https://x.example/h",
        "--config",
        str(config),
        env={"TEST_ONPREM_KEY": "wrong-key"},
    )
    assert code == 1
    assert "HTTP 401" in err


async def test_the_config_files_log_level_applies(db_url: str, tmp_path: Path) -> None:
    config = tmp_path / "outbox.toml"
    config.write_text(
        config_toml(db_url, "http://127.0.0.1:9").replace(
            "[http]", 'log_level = "warning"\nlog_format = "json"\n\n[http]'
        )
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "outbox", "run", "--config", str(config), "--role", "sender",
        stderr=asyncio.subprocess.PIPE, env={**os.environ, **SUBPROCESS_ENV},
    )  # fmt: skip
    try:
        await asyncio.sleep(3)
        process.terminate()
        _, err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        await reap(process)
    assert process.returncode == 0, err.decode()
    assert b"outbox.started" not in err  # an info line


async def test_show_prints_a_message_with_its_status_history(db_url: str, tmp_path: Path) -> None:
    config = tmp_path / "outbox.toml"
    config.write_text(config_toml(db_url, "http://127.0.0.1:9"))
    [row] = await fetch(
        db_url,
        "INSERT INTO outbox.messages (channel, recipient, payload, state, wamid, attempts,"
        " accepted_at, delivered_at) VALUES ('cloud', '4915100000001',"
        """ '{"type":"text","text":{"body":"hello there"}}', 'delivered', 'wamid.SHOW1', 1,"""
        " now(), now()) RETURNING id",
    )
    message_id = row["id"]
    await fetch(
        db_url,
        "INSERT INTO outbox.status_history (message_id, wamid, status, at, verdict) VALUES"
        " ($1, 'wamid.SHOW1', 'sent', '2026-01-01T00:00:00Z', 'applied'),"
        " ($1, 'wamid.SHOW1', 'delivered', '2026-01-01T00:00:03Z', 'applied'),"
        " ($1, 'wamid.SHOW1', 'sent', '2026-01-01T00:00:01Z', 'no_downgrade')",
        message_id,
    )
    code, out, err = await _outbox("show", str(message_id), "--config", str(config))
    assert code == 0, err
    assert f"message {message_id}" in out
    assert "wamid.SHOW1" in out
    assert "hello there" in out
    timeline = [line.split()[1:3] for line in out.split("status history", 1)[1].splitlines()[1:]]
    assert timeline == [["sent", "applied"], ["sent", "no_downgrade"], ["delivered", "applied"]]

    code, _, err = await _outbox("show", "999999", "--config", str(config))
    assert code == 1
    assert "no message with id 999999" in err


async def test_stats_shows_counts_per_state_and_a_paused_channel(
    db_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "outbox.toml"
    config.write_text(config_toml(db_url, "http://127.0.0.1:9"))
    await fetch(
        db_url,
        "INSERT INTO outbox.messages (channel, recipient, payload, state, accepted_at)"
        " SELECT CASE WHEN g <= 3 THEN 'cloud' ELSE 'onprem' END, '49151' || g,"
        """ '{"type":"text","text":{"body":"x"}}',"""
        " CASE WHEN g IN (1, 4) THEN 'queued' ELSE 'accepted' END,"
        " CASE WHEN g IN (1, 4) THEN NULL ELSE now() END FROM generate_series(1, 5) AS g",
    )
    await fetch(
        db_url,
        "INSERT INTO outbox.channel_state (channel, paused_until, pause_reason)"
        " VALUES ('onprem', now() + interval '5 minutes', 'Invalid api_key')",
    )
    await fetch(
        db_url,
        "INSERT INTO outbox.templates (waba_id, name, language, status, category, source)"
        " VALUES ('1023', 'promo', 'en_US', 'PAUSED', 'MARKETING', 'webhook')",
    )
    await fetch(
        db_url,
        "INSERT INTO outbox.account_health (channel, waba_id, quality_event, current_limit,"
        " max_daily_conversations) VALUES ('cloud', '1023', 'FLAGGED', 'TIER_10K', '2000')",
    )
    await fetch(
        db_url,
        "INSERT INTO outbox.account_events (channel, kind, event, effect, detail, at) VALUES"
        " ('cloud', 'account', 'DISABLED_UPDATE', 'pause', 'ban state DISABLE', now())",
    )
    code, out, err = await _outbox("stats", "--config", str(config))
    assert code == 0, err
    table, health = out.strip().split("\n\n", 1)
    assert "promo (en_US, WABA 1023): PAUSED, MARKETING, quality unknown" in health
    assert "cloud: WABA 1023, number ?, quality FLAGGED, limit TIER_10K" in health
    assert "max daily 2000" in health
    assert "cloud: DISABLED_UPDATE -> pause (ban state DISABLE)" in health
    header, *rows = table.splitlines()
    # Issue 19 §4: a column for every state, 0 when none, then accepted lately.
    assert header.split()[:12] == [
        "channel", "queued", "sending", "unknown", "accepted", "sent", "delivered", "read",
        "failed", "expired", "cancelled", "sent/5m",
    ]  # fmt: skip
    by_channel = {line.split()[0]: line for line in rows}
    assert by_channel["cloud"].split()[1:12] == ["1", "0", "0", "2", *["0"] * 6, "2"]
    assert by_channel["cloud"].endswith("ok")
    assert by_channel["onprem"].split()[1:12] == ["1", "0", "0", "1", *["0"] * 6, "1"]
    assert "PAUSED until" in by_channel["onprem"]
    assert "Invalid api_key" in by_channel["onprem"]
