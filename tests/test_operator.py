"""`outbox replay`, `cancel` and `purge` as an operator runs them, on a real database."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import config_toml, fetch
from tests.test_cli import _outbox

pytestmark = pytest.mark.slow

_TEXT = '{"type":"text","text":{"body":"hi"}}'
_TEMPLATE = '{"type":"template","template":{"name":"t","language":{"code":"en"}}}'


async def _seed(db_url: str, state: str, *, payload: str = _TEMPLATE, **columns: str) -> int:
    names = ", ".join(["channel", "recipient", "payload", "state", *columns])
    values = ", ".join(
        ["'cloud'", "'4915100000009'", f"'{payload}'", f"'{state}'", *columns.values()]
    )
    [record] = await fetch(
        db_url, f"INSERT INTO outbox.messages ({names}) VALUES ({values}) RETURNING id"
    )
    return int(record["id"])


async def test_replay_dry_run_then_replay_keeps_lineage(db_url: str, tmp_path: Path) -> None:
    config = tmp_path / "outbox.toml"
    config.write_text(config_toml(db_url, "http://127.0.0.1:9"))
    failed = await _seed(
        db_url, "failed", error_code="'131026'", attempts="1", failed_at="now()", wamid="'wamid.F1'"
    )
    delivered_then_failed = await _seed(db_url, "failed", error_code="'131026'", attempts="1")
    await fetch(
        db_url,
        "INSERT INTO outbox.status_history (message_id, wamid, status, at, verdict)"
        " VALUES ($1, 'wamid.D1', 'delivered', now(), 'applied')",
        delivered_then_failed,
    )
    code, out, err = await _outbox(
        "replay", "--error-code", "131026", "--dry-run", "--config", str(config)
    )
    assert code == 0, err
    assert "would replay: 1" in out
    assert "skipped, it was delivered per its status history" in out
    [before] = await fetch(db_url, "SELECT state FROM outbox.messages WHERE id = $1", failed)
    assert before["state"] == "failed"

    code, out, err = await _outbox(
        "replay",
        "--error-code",
        "131026",
        "--reason",
        "outage",
        "--actor",
        "ops",
        "--config",
        str(config),
    )
    assert code == 0, err
    assert "replayed: 1" in out
    [after] = await fetch(
        db_url,
        "SELECT state, attempts, error_code, replays, replayed_at FROM outbox.messages"
        " WHERE id = $1",
        failed,
    )
    assert (after["state"], after["attempts"], after["error_code"], after["replays"]) == (
        "queued",
        0,
        None,
        1,
    )
    assert after["replayed_at"] is not None
    code, out, err = await _outbox("show", str(failed), "--config", str(config))
    assert code == 0, err
    assert "replay by ops; was failed after 1 attempts, error 131026, wamid wamid.F1: outage" in out
