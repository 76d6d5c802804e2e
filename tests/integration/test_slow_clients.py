"""Slow clients beyond the descriptor limit (issue 19 section 2, "Must show").

The real `outbox run` (every role) with RLIMIT_NOFILE = 256, while an unauthenticated attacker
holds idle connections, half request heads and slow bodies, more of them than the process has
descriptors, and opens new ones as the daemon closes them. Meanwhile real webhooks must keep
answering 200 and be stored, and sends must keep reaching the sandbox, each on its first attempt
(before the edge was hardened the daemon ran out of descriptors: webhooks were reset and sends
failed with `Too many open files`, charged as attempts).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import resource
import time
from pathlib import Path

import aiohttp
import pytest

from outbox.sandbox import Sandbox
from tests.support import (
    KEYS,
    SUBPROCESS_ENV,
    config_toml,
    daemon_started,
    enqueue_in_window,
    fetch,
    spawn_daemon,
    stop_daemon,
    wait_until,
)

pytestmark = pytest.mark.slow

NOFILE = 256
IDLE, HALF_HEAD, SLOW_BODY = 160, 100, 60  # 320 held connections: more than NOFILE
ATTACK_SECONDS = 25
PASSWORD = "hook-pass-0123456789"
AUTH = "Basic " + base64.b64encode(f"hook-user:{PASSWORD}".encode()).decode()
ENV = {**SUBPROCESS_ENV, "TEST_HOOK_USER": "hook-user", "TEST_HOOK_PASS": PASSWORD}
SENDS = 40
ATTACKER = "127.0.0.2"  # another host than 360dialog's (the real webhooks come from 127.0.0.1)


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


class Attacker:
    """Holds `IDLE + HALF_HEAD + SLOW_BODY` connections, reopening each one the server closes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.opened = 0
        self.stopping = False
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        kinds = ["idle"] * IDLE + ["half"] * HALF_HEAD + ["slow"] * SLOW_BODY
        self.tasks = [asyncio.create_task(self._hold(kind)) for kind in kinds]

    async def stop(self) -> None:
        # The flag as well as the cancellation: a holder whose read completes in the loop
        # iteration that cancels it must still end (on Python 3.11 `asyncio.wait_for` returned
        # the read and dropped the cancellation: the stop then waited forever).
        self.stopping = True
        for task in self.tasks:
            task.cancel()
        async with asyncio.timeout(10):
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _hold(self, kind: str) -> None:
        while not self.stopping:
            writer = None
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", self.port, local_addr=(ATTACKER, 0)
                )
                self.opened += 1
                if kind == "half":
                    writer.write(b"POST /webhooks/cloud HTTP/1.1\r\nHost: x\r\nContent-")
                elif kind == "slow":
                    writer.write(
                        b"POST /webhooks/cloud HTTP/1.1\r\nHost: x\r\n"
                        + f"Authorization: {AUTH}\r\n".encode()
                        + b"Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n{"
                    )
                while not reader.at_eof() and not self.stopping:
                    if kind == "slow":
                        writer.write(b" ")  # one byte a second: the body never ends in time
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await reader.read(4096)
            except OSError:
                pass
            finally:
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()
            # Back again soon: the connections stay beyond the limit without this test's own
            # process (which also runs the sandbox) spending its time reconnecting.
            await asyncio.sleep(0.5)


def _inbound(marker: str) -> bytes:
    message = {"from": "4915100000001", "id": marker, "timestamp": "1", "type": "text",
               "text": {"body": "hi"}}  # fmt: skip
    value = {"messaging_product": "whatsapp", "messages": [message]}
    return json.dumps({"object": "whatsapp_business_account",
                       "entry": [{"changes": [{"field": "messages", "value": value}]}]}).encode()  # fmt: skip


async def _webhook(port: int, marker: str) -> int | str:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.post(
                f"http://127.0.0.1:{port}/webhooks/cloud",
                data=_inbound(marker),
                headers={"Authorization": AUTH, "Content-Type": "application/json"},
            ) as response,
        ):
            await response.read()
            return response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        return type(exc).__name__


@pytest.mark.timeout(180)
async def test_webhooks_and_sends_go_on_while_slow_clients_exceed_the_descriptor_limit(
    db_url: str, tmp_path: Path
) -> None:
    api = Sandbox(KEYS, statuses=False)
    base_url = await api.start()
    config = tmp_path / "outbox.toml"
    config.write_text(config_toml(db_url, base_url, cloud_hook_auth=True))
    log = tmp_path / "daemon.log"
    process = await spawn_daemon(config, log, "sender,reconciler,web", ENV, preexec_fn=_low_nofile)
    attacker: Attacker | None = None
    answers: dict[str, int | str] = {}
    try:
        port = int((await daemon_started(process, log))["http_port"])
        attacker = Attacker(port)
        attacker.start()
        await asyncio.sleep(3)  # the attack is in place before the first real request
        began = time.monotonic()
        sent = 0
        while time.monotonic() - began < ATTACK_SECONDS:
            marker = f"wamid.slow.{len(answers):03d}"
            answers[marker] = await _webhook(port, marker)
            if sent < SENDS:
                await enqueue_in_window(db_url, 4, after=sent)
                sent += 4
            await asyncio.sleep(0.5)
        held = attacker.opened
        accepted = await _accepted(db_url)
        await wait_until(lambda: _all_accepted(db_url, sent), within=30, interval=0.2)
        alive = process.returncode is None
    finally:
        if attacker is not None:
            await attacker.stop()
        code = await stop_daemon(process, log)
        await api.stop()
    text = log.read_text(errors="replace")
    assert alive, text[-3000:]
    assert code == 0, text[-3000:]
    assert set(answers.values()) == {200}, answers
    stored = await fetch(
        db_url,
        "SELECT payload #>> '{entry,0,changes,0,value,messages,0,id}' AS marker "
        "FROM outbox.webhook_events",
    )
    assert {r["marker"] for r in stored} >= set(answers)
    rows = await fetch(db_url, "SELECT state, attempts FROM outbox.messages")
    assert len(rows) == sent
    assert {(r["state"], r["attempts"]) for r in rows} == {("accepted", 1)}, rows
    assert accepted > 0  # sends flowed during the attack, not only after it
    assert "Too many open files" not in text
    assert held > IDLE + HALF_HEAD + SLOW_BODY  # the daemon closed some, the attacker reopened


async def _accepted(db_url: str) -> int:
    [[n]] = await fetch(db_url, "SELECT count(*) FROM outbox.messages WHERE state = 'accepted'")
    return int(n)


async def _all_accepted(db_url: str, count: int) -> bool:
    return await _accepted(db_url) == count
