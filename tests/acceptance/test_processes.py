"""Real `outbox run` processes against the embedded PostgreSQL and the sandbox."""

from __future__ import annotations

import base64
import json
import signal
from pathlib import Path

import aiohttp
import pytest

from outbox.config import ChannelConfig, Secret
from outbox.domain.models import Dialect
from outbox.sandbox import Sandbox
from tests.support import (
    KEYS,
    SUBPROCESS_ENV,
    accepted_count,
    busiest_second,
    claims,
    config_toml,
    daemon_http_port,
    enqueue_in_window,
    fetch,
    listener_count,
    record_claims,
    spawn_daemon,
    stop_daemon,
    wait_for_progress,
    wait_until,
)

pytestmark = pytest.mark.slow


async def _pending(db_url: str) -> int:
    rows = await fetch(
        db_url, "SELECT count(*) FROM outbox.messages WHERE state IN ('queued', 'sending')"
    )
    return int(rows[0][0])


async def test_two_processes_drain_10000_rows_each_sent_exactly_once(
    db_url: str, sandbox: tuple[Sandbox, str], tmp_path: Path
) -> None:
    api, base_url = sandbox
    config = tmp_path / "outbox.toml"
    config.write_text(config_toml(db_url, base_url, batch_size=100))
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    processes = [await spawn_daemon(config, log) for log in logs]
    try:
        await wait_until(lambda: _listeners_are(db_url, 2), within=30)
        await enqueue_in_window(db_url, 10_000)
        await wait_until(lambda: _drained(db_url), within=120, interval=0.2)
    finally:
        codes = [await stop_daemon(p, log) for p, log in zip(processes, logs, strict=True)]
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]

    requests = api.message_requests()
    recipients = [r.body["to"] for r in requests]
    assert len(requests) == 10_000
    assert len(set(recipients)) == 10_000
    cloud_ids = sorted(
        int(r.body["biz_opaque_callback_data"].removeprefix("outbox:"))
        for r in requests
        if r.dialect == "cloud"
    )
    rows = await fetch(db_url, "SELECT id, channel, state, wamid FROM outbox.messages")
    assert cloud_ids == sorted(r["id"] for r in rows if r["channel"] == "cloud")
    assert {r["state"] for r in rows} == {"accepted"}
    assert {r["wamid"] for r in rows} == {r.message_id for r in requests}
    # Both processes took part, and their own counts add up.
    accepted = [accepted_count(log) for log in logs]
    assert all(n > 0 for n in accepted), accepted
    assert sum(accepted) == 10_000
    for log in logs:
        text = log.read_text()
        assert not [k for k in SUBPROCESS_ENV.values() if k in text], "an API key reached the log"


async def _listeners_are(db_url: str, count: int) -> bool:
    return await listener_count(db_url) == count


async def _drained(db_url: str) -> bool:
    return await _pending(db_url) == 0


async def _done(db_url: str) -> int:
    rows = await fetch(
        db_url, "SELECT count(*) FROM outbox.messages WHERE state NOT IN ('queued', 'sending')"
    )
    return int(rows[0][0])


async def test_sigterm_mid_drain_leaves_nothing_sending_and_loses_nothing(
    db_url: str, tmp_path: Path
) -> None:
    api = Sandbox(KEYS, latency=0.05, statuses=False)
    base_url = await api.start()
    config = tmp_path / "outbox.toml"
    config.write_text(config_toml(db_url, base_url, rate=500))
    log = tmp_path / "daemon.log"
    try:
        process = await spawn_daemon(config, log)
        await enqueue_in_window(db_url, 4000)
        await wait_until(lambda: len(api.message_requests()) >= 500, within=60)
        code = await stop_daemon(process, log)
    finally:
        await api.stop()
    assert code == 0, log.read_text()[-3000:]

    rows = await fetch(db_url, "SELECT recipient, state, attempts FROM outbox.messages")
    states = {r["state"] for r in rows}
    assert states <= {"accepted", "queued"}, states
    requested = [r.body["to"] for r in api.message_requests()]
    assert len(requested) == len(set(requested))
    accepted = {r["recipient"] for r in rows if r["state"] == "accepted"}
    assert accepted == set(requested)
    assert all(r["attempts"] == 0 for r in rows if r["state"] == "queued")
    assert 500 <= len(accepted) < 4000


RATES = {"onprem": (150.0, 15.0), "cloud": (400.0, 40.0)}  # rate, burst


# Progress-bounded (`wait_for_progress`), not by the suite's 120 s: three daemons on two
# starved cores take minutes and are still correct.
@pytest.mark.timeout(900)
async def test_three_processes_hold_each_channels_rate_in_every_second(
    db_url: str, sandbox: tuple[Sandbox, str], tmp_path: Path, quiet_gc: None
) -> None:
    api, base_url = sandbox
    text = config_toml(db_url, base_url, batch_size=100)
    for channel, (rate, burst) in RATES.items():
        text = text.replace(
            f'id = "{channel}"', f'id = "{channel}"\nrate_per_second = {rate}\nburst = {burst}'
        )
    # The generic rate line comes after each channel's own and would win: drop it.
    text = "\n".join(line for line in text.splitlines() if line != "rate_per_second = 5000")
    config = tmp_path / "outbox.toml"
    config.write_text(text)
    logs = [tmp_path / f"{n}.log" for n in range(3)]
    await record_claims(db_url)
    processes = [await spawn_daemon(config, log) for log in logs]
    try:
        await wait_until(lambda: _listeners_are(db_url, 3), within=120)
        await enqueue_in_window(db_url, 5_000)
        await wait_for_progress(lambda: _done(db_url), 5_000, daemons=processes)
    finally:
        codes = [await stop_daemon(p, log) for p, log in zip(processes, logs, strict=True)]
    assert codes == [0, 0, 0], [log.read_text()[-2000:] for log in logs]

    requests = api.message_requests()
    assert len(requests) == 5_000
    assert len({r.body["to"] for r in requests}) == 5_000  # no message requested twice
    rows = await fetch(db_url, "SELECT state, count(*) AS n FROM outbox.messages GROUP BY state")
    assert {r["state"]: r["n"] for r in rows} == {"accepted": 5_000}
    for channel, (rate, burst) in RATES.items():
        # The limit, where it is applied: claims by the bucket's own clock, the database's.
        # Every 1-second window holds at most the rate plus what the bucket holds (the burst
        # less the 50 ms it keeps back for the way to the API), to the row.
        limits = ChannelConfig(
            channel, Dialect.CLOUD, base_url, Secret(""), rate, burst=burst
        ).limits()
        claimed = [at for _, at in await claims(db_url, channel)]
        assert len(claimed) == 2_500
        assert busiest_second(claimed) <= limits.rate + limits.burst, channel
        # At the API, whose arrival times bunch when this process is starved (a stall of a
        # few hundred ms stamps what arrived meanwhile at once): the drain took as long as the
        # rate demands, within a second of slack for the stalls at either end.
        times = sorted(r.at for r in requests if r.api_key_label == channel)
        assert len(times) == 2_500
        assert times[-1] - times[0] >= (len(times) - burst) / rate - 1.0, channel
    assert all(accepted_count(log) > 0 for log in logs)  # every process took part


async def test_sighup_reloads_a_fixed_key_and_webhook_password_without_a_restart(
    db_url: str, sandbox: tuple[Sandbox, str], tmp_path: Path
) -> None:
    """Keys mounted as files (a Kubernetes Secret) change under a running daemon: SIGHUP takes
    the new ones, and a channel paused by the bad key resumes at once, not after its pause."""
    api, base_url = sandbox
    key, user, password = (tmp_path / name for name in ("key", "user", "password"))
    key.write_text("revoked-key\n")
    user.write_text("hooks")
    password.write_text("old-password-0123456789")
    config = tmp_path / "outbox.toml"
    config.write_text(
        f"""
database_url = {json.dumps(db_url)}
[http]
host = "127.0.0.1"
port = 0
[sender]
poll_interval = 1
breaker_cooldown = 300
[[channels]]
id = "cloud"
dialect = "cloud"
base_url = {json.dumps(base_url)}
api_key_file = {json.dumps(str(key))}
webhook_username_file = {json.dumps(str(user))}
webhook_password_file = {json.dumps(str(password))}
"""
    )
    log = tmp_path / "daemon.log"
    process = await spawn_daemon(config, log, roles="sender,web")
    try:
        port = await daemon_http_port(process, log)
        await enqueue_in_window(db_url, 50, channel="cloud")
        await wait_until(lambda: _paused(db_url), within=30)
        refused = len(api.message_requests())

        key.write_text("cloud-key\n")
        password.write_text("new-password-0123456789")
        process.send_signal(signal.SIGHUP)
        # Well inside the 300 s pause: the reload lifted it.
        await wait_until(lambda: _drained(db_url), within=30)
        statuses = {
            secret: await _post_webhook(port, "hooks", secret)
            for secret in ("old-password-0123456789", "new-password-0123456789")
        }
    finally:
        code = await stop_daemon(process, log)
    assert code == 0, log.read_text()[-3000:]
    assert refused >= 1
    sent = api.message_requests()[refused:]
    assert {r.api_key_label for r in sent} == {"cloud"}
    rows = await fetch(db_url, "SELECT state, count(*) AS n FROM outbox.messages GROUP BY state")
    assert {r["state"]: r["n"] for r in rows} == {"accepted": 50}
    assert statuses == {"old-password-0123456789": 401, "new-password-0123456789": 200}
    text = log.read_text()
    assert '"outbox.reload.credentials"' in text
    assert "cloud-key" not in text
    assert "new-password-0123456789" not in text


async def _paused(db_url: str) -> bool:
    rows = await fetch(
        db_url,
        "SELECT 1 FROM outbox.channel_state WHERE paused_until > now() AND channel = 'cloud'",
    )
    return bool(rows)


async def _post_webhook(port: int, user: str, password: str) -> int:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}/webhooks/cloud",
            json={"entry": []},
            headers={"Authorization": f"Basic {token}"},
        ) as response,
    ):
        return response.status
