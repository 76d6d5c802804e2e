"""The README's rolling update, with real `outbox` processes: the next release's migration is
applied while this release runs; this release stays ready, keeps sending, restarts and can be
rolled back to. A later migration that declares itself incompatible takes it out of service."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from outbox.db import migrate
from outbox.sandbox import Sandbox
from tests.releases import upgrade_with, write_revision
from tests.support import (
    config_toml,
    daemon_http_port,
    enqueue_in_window,
    fetch,
    outbox_command,
    readyz,
    spawn_daemon,
    stop_daemon,
    wait_until,
)

pytestmark = pytest.mark.slow


async def _all_accepted(db_url: str, count: int) -> bool:
    rows = await fetch(db_url, "SELECT count(*) FROM outbox.messages WHERE state = 'accepted'")
    return int(rows[0][0]) == count


async def test_rolling_update_and_rollback_as_the_readme_says(
    db_url: str, sandbox: tuple[Sandbox, str], tmp_path: Path
) -> None:
    _, base_url = sandbox
    config = tmp_path / "outbox.toml"
    config.write_text(config_toml(db_url, base_url))
    head = migrate.head_revision()
    release = tmp_path / "next-release"
    write_revision(release, "9001", head, head, "ALTER TABLE outbox.messages ADD COLUMN note text")
    log = tmp_path / "daemon.log"

    old = await spawn_daemon(config, log, roles="sender,web")
    try:
        port = await daemon_http_port(old, log)
        await enqueue_in_window(db_url, 20)
        await wait_until(lambda: _all_accepted(db_url, 20), within=20)

        # Step 1: the next release's `outbox migrate`, while this release runs.
        await upgrade_with(db_url, release, "9001")
        for _ in range(4):  # the probes keep passing, so the Service keeps this pod
            assert await readyz(port) == (200, "")
            await asyncio.sleep(0.25)
        await enqueue_in_window(db_url, 20, after=20)
        await wait_until(lambda: _all_accepted(db_url, 40), within=20)
        code, out, err = await outbox_command("check", "--config", str(config), "--skip-api")
        assert code == 0, err
        assert f"schema at revision 9001, newer than this release ({head})" in out
    finally:
        assert await stop_daemon(old, log) == 0

    # A pod of this release restarted during the rollout, or rolled back to, starts and serves;
    # this release's migrate Job run again has nothing to do.
    code, out, err = await outbox_command("migrate", "--config", str(config))
    assert (code, err) == (0, "")
    assert "newer than this release" in out
    assert "nothing to migrate" in out
    log = tmp_path / "restarted.log"
    restarted = await spawn_daemon(config, log, roles="sender,web")
    try:
        port = await daemon_http_port(restarted, log)
        assert await readyz(port) == (200, "")

        # A later release declares that no release before it runs on its schema.
        write_revision(
            release, "9002", "9001", "9002", "ALTER TABLE outbox.messages DROP COLUMN note"
        )
        await upgrade_with(db_url, release, "9002")
        refusal = (
            f"schema at revision 9002 needs a release at revision 9002 or newer; "
            f"this release is at {head}: deploy a newer release"
        )

        async def refusing() -> bool:
            return await readyz(port) == (503, refusal)

        # /readyz answers from a check at most `readiness_interval` (5 s) old (issue 19 §2).
        await wait_until(refusing, within=20, interval=0.5)
    finally:
        assert await stop_daemon(restarted, log) == 0

    code, out, err = await outbox_command("check", "--config", str(config), "--skip-api")
    assert code == 1
    assert err.strip().splitlines()[-1].endswith(refusal)
    refused_log = tmp_path / "refused.log"
    refused = await spawn_daemon(config, refused_log, roles="sender,web")
    assert await asyncio.wait_for(refused.wait(), 60) == 1
    assert refusal in refused_log.read_text()
    assert "Traceback" not in refused_log.read_text()
