"""Issue 19 §3, through the commands as operators run them: a database URL with an unencoded
`/`, `#`, `?` or `@` in its password is refused with the password masked, never a traceback that
quotes it; `outbox sandbox` takes its keys from a file or the environment, never argv;
`set-webhook` refuses a plain-http URL off loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.support import config_toml, outbox_command, reap

PASSWORD = "Pa55/w0rd-7d1c"


@pytest.mark.parametrize("verb", [("check",), ("migrate",), ("run", "--role", "sender")])
@pytest.mark.parametrize(
    "password", [PASSWORD, "Pa55#w0rd-7d1c", "Pa55?w0rd-7d1c", "Pa55@w0rd-7d1c"]
)
async def test_no_part_of_the_password_reaches_stderr(
    tmp_path: Path, verb: tuple[str, ...], password: str
) -> None:
    url = f"postgresql://outbox:{password}@127.0.0.1:9/outbox"
    config = tmp_path / "outbox.toml"
    config.write_text(config_toml("postgresql://unused@127.0.0.1:9/x", "http://127.0.0.1:9"))
    code, out, err = await outbox_command(
        *verb, "--config", str(config), env={"OUTBOX_DATABASE_URL": url}
    )
    assert code == 2, (out, err)
    assert "Traceback" not in err
    assert "database_url cannot be parsed" in err
    assert "postgresql://outbox:***@127.0.0.1:9/outbox" in err
    for part in ("Pa55", "w0rd", "7d1c", password):
        assert part not in out + err


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _status(port: int, key: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}/v1/configs/webhook",
            json={"url": "https://hooks.example.com/webhooks/cloud"},
            headers={"D360-API-KEY": key},
        ) as response,
    ):
        return response.status


@pytest.mark.parametrize("source", ["file", "environment"])
async def test_the_sandbox_takes_keys_from_a_file_or_the_environment_not_argv(
    tmp_path: Path, source: str
) -> None:
    key = "SECRETKEY-cloud1-7f3a9c"
    keys_file = tmp_path / "sandbox.keys"
    keys_file.write_text(f"{key}=cloud1\nother-key=onprem1\n", encoding="utf-8")
    port = _free_port()
    argv = ["sandbox", "--port", str(port)]
    env = dict(os.environ)
    if source == "file":
        argv += ["--keys-file", str(keys_file)]
    else:
        env["OUTBOX_SANDBOX_KEYS"] = f"{key}=cloud1,other-key=onprem1"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "outbox", *argv, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        for _ in range(600):
            try:
                status = await _status(port, key)
                break
            except aiohttp.ClientConnectionError:
                assert process.returncode is None
                await asyncio.sleep(0.1)
        assert status == 200
        assert await _status(port, "not-a-key") == 401
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        assert key.encode() not in cmdline
    finally:
        await reap(process)


async def test_the_sandbox_refuses_keys_on_the_command_line() -> None:
    code, _, err = await outbox_command("sandbox", "--port", "0", "--keys", "k=label")
    assert code == 2
    assert "unrecognized arguments: --keys" in err


async def test_set_webhook_refuses_plain_http_off_loopback(tmp_path: Path) -> None:
    config = tmp_path / "outbox.toml"
    config.write_text(config_toml("postgresql://unused@127.0.0.1:9/x", "http://127.0.0.1:9"))
    url = "http://hooks.example.com/webhooks/cloud"
    code, _, err = await outbox_command("set-webhook", "cloud", url, "--config", str(config))
    assert code == 2, err
    assert "the webhook URL must be an https URL" in err
    assert "OUTBOX_ALLOW_INSECURE_HTTP" in err
