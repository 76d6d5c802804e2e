"""Issue 17 end to end: channels added, disabled and enabled through `outbox channels` reach
running `outbox run` replicas without a restart.

The sandbox knows the new channel's key from the start; the replicas learn the channel (and its
sealed key) only from the registry, while they run.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from pathlib import Path

import pytest

from outbox.cli.runtime import YOUNG_GENERATION
from outbox.sandbox import Sandbox
from outbox.sealing import generate_key
from tests.support import (
    KEYS,
    SUBPROCESS_ENV,
    config_toml,
    daemon_started,
    enqueue_in_window,
    fetch,
    run_process,
    spawn_daemon,
    stop_daemon,
    wait_until,
)

pytestmark = pytest.mark.slow

FRESH_KEY = "fresh-channel-plain-key"


def _env(tmp_path: Path) -> dict[str, str]:
    key_file = tmp_path / "master.key"
    if not key_file.exists():
        key_file.write_text(generate_key() + "\n")
    return {**SUBPROCESS_ENV, "OUTBOX_SECRET_KEY_FILE": str(key_file)}


async def _channels(config: Path, env: dict[str, str], *args: str, stdin: str = "") -> str:
    import sys

    secrets = config.parent / "stdin.txt"
    secrets.write_text(stdin)
    with secrets.open("rb") as given:
        code, out, err = await run_process(
            sys.executable, "-m", "outbox", "channels", *args, "--config", str(config),
            stdin=given, env={**__import__("os").environ, **env},
        )  # fmt: skip
    assert code == 0, err
    return out


async def _add_fresh(config: Path, env: dict[str, str], base_url: str, *extra: str) -> float:
    await _channels(
        config, env, "add", "fresh", "--dialect", "cloud", "--base-url", base_url,
        "--rate-per-second", "200", "--secrets-stdin", *extra, stdin=f"api_key={FRESH_KEY}\n",
    )  # fmt: skip
    return time.monotonic()


def _changed_at(log: Path, channel: str, key: str = "added") -> datetime | None:
    """When the replica logged the change (its JSON log line's timestamp), if it has."""
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event["event"] == "outbox.channels.changed" and channel in event.get(key, []):
                return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    return None


async def _states(db_url: str, channel: str) -> dict[str, int]:
    rows = await fetch(
        db_url,
        "SELECT state, count(*) AS n, sum(attempts) AS attempts FROM outbox.messages"
        " WHERE channel = $1 GROUP BY state",
        channel,
    )
    return {r["state"]: int(r["n"]) for r in rows}


async def _fresh_rows(db_url: str, count: int, after: int) -> None:
    await enqueue_in_window(db_url, count, after=after, channel="fresh")


async def test_a_channel_added_while_two_replicas_run_reaches_both_within_2s(
    db_url: str, tmp_path: Path
) -> None:
    api = Sandbox({**KEYS, FRESH_KEY: "fresh"})
    base_url = await api.start()
    config = tmp_path / "outbox.toml"
    config.write_text(config_toml(db_url, base_url))
    env = _env(tmp_path)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    processes = [await spawn_daemon(config, log, "sender", env) for log in logs]
    try:
        for process, log in zip(processes, logs, strict=True):
            await daemon_started(process, log)
        await asyncio.sleep(1.0)  # listeners connected and idle
        await _add_fresh(config, env, base_url)
        [added] = await fetch(db_url, "SELECT created_at FROM outbox.channels WHERE id = 'fresh'")
        reached = []
        for log in logs:
            await wait_until(lambda log=log: _changed_at(log, "fresh"), within=10, interval=0.01)
            applied = _changed_at(log, "fresh")
            assert applied is not None
            # From the insert's transaction (the database's clock, this machine's) to the log line.
            reached.append((applied - added["created_at"]).total_seconds())
        await _fresh_rows(db_url, 300, 0)
        await wait_until(lambda: _all_accepted(db_url, 300), within=30)
    finally:
        for process, log in zip(processes, logs, strict=True):
            await stop_daemon(process, log)
        await api.stop()
    print(f"\nchannels add -> replicas: {', '.join(f'{s:.3f} s' for s in reached)}")
    assert max(reached) < 2.0, f"seconds from `channels add` to each replica: {reached}"
    fresh = [r for r in api.message_requests() if r.api_key_label == "fresh"]
    assert len(fresh) == 300
    assert all(r.message_id is not None for r in fresh)


async def _all_accepted(db_url: str, count: int) -> bool:
    states = await _states(db_url, "fresh")
    return states.get("accepted", 0) + states.get("sent", 0) + states.get("delivered", 0) + states.get("read", 0) == count  # fmt: skip


async def test_rolling_update_a_replica_from_before_the_channel_and_one_from_after(
    db_url: str, tmp_path: Path
) -> None:
    """Replica `old` starts before the channel exists, `new` after it was added; both run. No
    row of the new channel fails (unknown_channel after a short grace would be the old
    failure), all are sent."""
    api = Sandbox({**KEYS, FRESH_KEY: "fresh"})
    base_url = await api.start()
    config = tmp_path / "outbox.toml"
    config.write_text(config_toml(db_url, base_url, unknown_channel_grace=0.2))
    env = _env(tmp_path)
    old_log, new_log = tmp_path / "old.log", tmp_path / "new.log"
    old = await spawn_daemon(config, old_log, "sender", env)
    new = None
    try:
        await daemon_started(old, old_log)
        await _add_fresh(config, env, base_url)
        await _fresh_rows(db_url, 200, 0)
        new = await spawn_daemon(config, new_log, "sender", env)
        started = await daemon_started(new, new_log)
        assert "fresh" in started["channels"]
        assert started["gc_threshold"][0] == YOUNG_GENERATION  # `outbox run`'s collector
        await _fresh_rows(db_url, 200, 200)
        await wait_until(lambda: _all_accepted(db_url, 400), within=30)
        await asyncio.sleep(1.5)  # maintenance ticks in both: still nothing failed
        states = await _states(db_url, "fresh")
    finally:
        await stop_daemon(old, old_log)
        if new is not None:
            await stop_daemon(new, new_log)
        await api.stop()
    assert states == {"accepted": 400}
    assert sum(1 for r in api.message_requests() if r.api_key_label == "fresh") == 400


async def test_disabling_under_traffic_leaves_rows_queued_with_no_attempt_charged(
    db_url: str, tmp_path: Path
) -> None:
    api = Sandbox({**KEYS, FRESH_KEY: "fresh"}, latency=0.02)
    base_url = await api.start()
    config = tmp_path / "outbox.toml"
    config.write_text(config_toml(db_url, base_url, unknown_channel_grace=0.2))
    env = _env(tmp_path)
    log = tmp_path / "a.log"
    await _channels(
        config, env, "add", "fresh", "--dialect", "cloud", "--base-url", base_url,
        "--rate-per-second", "50", "--secrets-stdin", stdin=f"api_key={FRESH_KEY}\n",
    )  # fmt: skip
    process = await spawn_daemon(config, log, "sender", env)
    try:
        await daemon_started(process, log)
        await _fresh_rows(db_url, 500, 0)
        await wait_until(lambda: len(api.message_requests()) >= 50, within=20)
        await _channels(config, env, "disable", "fresh")
        await wait_until(lambda: _changed_at(log, "fresh", "disabled"), within=5)
        await asyncio.sleep(1.0)  # requests already in flight end
        sent_at_disable = len(api.message_requests())
        await asyncio.sleep(2.0)
        assert len(api.message_requests()) == sent_at_disable, "a disabled channel kept sending"
        waiting = await fetch(
            db_url,
            "SELECT count(*) AS n, max(attempts) AS most, count(error_code) AS errors"
            " FROM outbox.messages WHERE channel = 'fresh' AND state = 'queued'",
        )
        states = await _states(db_url, "fresh")
        assert states.keys() <= {"queued", "accepted"}, states
        assert waiting[0]["n"] == 500 - sent_at_disable > 0
        assert (waiting[0]["most"], waiting[0]["errors"]) == (0, 0)
        await _channels(config, env, "enable", "fresh")
        await wait_until(lambda: _all_accepted(db_url, 500), within=30)
    finally:
        await stop_daemon(process, log)
        await api.stop()
