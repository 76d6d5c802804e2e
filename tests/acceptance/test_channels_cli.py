"""`outbox channels ...` and `outbox keys ...` as an operator runs them: exit codes, messages,
JSON for scripts, options from the environment, and no credential in any output."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from outbox.sealing import generate_key
from tests.support import fetch, insert, run_process

pytestmark = pytest.mark.slow

KEY = "cli-plain-api-key-42"
HOOK_PASSWORD = "cli-hook-password-17"


class Cli:
    def __init__(self, db_url: str, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.key_file = tmp_path / "master.key"
        self.key_file.write_text(generate_key() + "\n")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")},
            "OUTBOX_DATABASE_URL": db_url,
            "OUTBOX_SECRET_KEY_FILE": str(self.key_file),
        }
        self.outputs: list[str] = []

    async def __call__(
        self, *args: str, stdin: str = "", env: dict[str, str] | None = None
    ) -> tuple[int, str, str]:
        given = self.tmp / "stdin.txt"
        given.write_text(stdin)
        with given.open("rb") as handle:
            code, out, err = await run_process(
                sys.executable, "-m", "outbox", *args, stdin=handle, env={**self.env, **(env or {})}
            )
        self.outputs.append(out + err)
        return code, out, err


async def test_the_channel_lifecycle_from_the_command_line(db_url: str, tmp_path: Path) -> None:
    cli = Cli(db_url, tmp_path)
    secrets = f"api_key={KEY}\nwebhook_username=hooks\nwebhook_password={HOOK_PASSWORD}\n"
    code, out, err = await cli(
        "channels", "add", "shop", "--dialect", "cloud", "--base-url", "http://127.0.0.1:9/",
        "--secrets-stdin", "--json", stdin=secrets,
        env={"OUTBOX_CHANNEL_RATE_PER_SECOND": "12.5", "OUTBOX_CHANNEL_CLIENT_ID": "acme"},
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out) == {"id": "shop", "action": "added", "enabled": True}

    code, out, _ = await cli("channels", "list", "--json")
    [listed] = json.loads(out)
    assert listed["rate_per_second"] == 12.5  # from OUTBOX_CHANNEL_RATE_PER_SECOND
    assert listed["client_id"] == "acme"
    assert listed["base_url"] == "http://127.0.0.1:9"
    assert listed["credentials"]["api_key"].startswith("sealed (key id ")
    assert set(listed["credentials"]) == {"api_key", "webhook_username", "webhook_password"}

    code, _, err = await cli(
        "channels", "add", "shop", "--dialect", "cloud", "--base-url", "http://x",
        "--api-key-env", "K",
    )  # fmt: skip
    assert code == 1
    assert "channel 'shop' exists already" in err
    code, _, err = await cli("channels", "add", "bad", "--dialect", "fax", "--base-url", "x",
                             "--api-key-env", "K")  # fmt: skip
    assert code == 2
    assert "dialect must be 'cloud' or 'onprem'" in err
    code, _, err = await cli(
        "channels", "add", "nokey", "--dialect", "cloud", "--base-url", "http://x"
    )
    assert code == 2
    assert "an API key is needed: --api-key-env, --api-key-file or --secrets-stdin" in err

    code, out, err = await cli("channels", "update", "shop", "--api-key-env", "SHOP_KEY",
                               "--rate-per-second", "3")  # fmt: skip
    assert code == 0, err
    code, out, _ = await cli("channels", "show", "shop")
    assert "api_key: env:SHOP_KEY" in out
    assert "rate_per_second      3" in out

    code, out, _ = await cli("channels", "disable", "shop")
    assert (code, out.strip()) == (0, "channel 'shop' disabled")
    rows = await fetch(db_url, "SELECT enabled FROM outbox.channels WHERE id = 'shop'")
    assert rows[0]["enabled"] is False

    message = await insert(db_url, "shop", "4915100000001", {"type": "text", "text": {"body": "x"}})
    code, _, err = await cli("channels", "remove", "shop")
    assert code == 1
    assert "has open rows (1 queued): give --cancel-open" in err
    code, out, err = await cli("channels", "remove", "shop", "--cancel-open", "--json")
    assert code == 0, err
    assert json.loads(out) == {"id": "shop", "action": "removed", "cancelled": 1}
    rows = await fetch(db_url, "SELECT state FROM outbox.messages WHERE id = $1", message)
    assert rows[0]["state"] == "cancelled"
    code, _, err = await cli("channels", "show", "shop")
    assert code == 1
    assert "no channel 'shop' in the registry" in err
    everything = "\n".join(cli.outputs)
    assert KEY not in everything
    assert HOOK_PASSWORD not in everything


async def test_keys_rotate_reseals_under_the_new_key(db_url: str, tmp_path: Path) -> None:
    cli = Cli(db_url, tmp_path)
    old = cli.key_file.read_text().strip()
    code, _, err = await cli("channels", "add", "a", "--dialect", "cloud", "--base-url",
                             "http://127.0.0.1:9", "--secrets-stdin", stdin=f"api_key={KEY}")  # fmt: skip
    assert code == 0, err
    code, new, _ = await cli("keys", "generate")
    cli.key_file.write_text(f"{new.strip()}\n{old}\n")  # the new key first, the old one kept
    code, out, err = await cli("keys", "rotate")
    assert (code, out.strip()) == (
        0,
        "resealed 1 channels under the first master key; old keys may now go",
    )
    cli.key_file.write_text(new)  # the old key is gone
    code, out, err = await cli("keys", "check")
    assert (code, out.strip()) == (0, "master keys open all 1 sealed credentials")
    cli.key_file.write_text(old)
    code, _, err = await cli("keys", "check")
    assert code == 2
    assert "do not include: is this the right master key?" in err
    assert KEY not in "\n".join(cli.outputs)


async def test_a_file_channel_is_read_only_in_the_registry(db_url: str, tmp_path: Path) -> None:
    cli = Cli(db_url, tmp_path)
    await fetch(
        db_url,
        "INSERT INTO outbox.channels (id, source, dialect, base_url)"
        " VALUES ('filed', 'file', 'cloud', 'http://x')",
    )
    code, out, _ = await cli("channels", "list")
    assert "(in the config file)" in out
    for verb in ("disable", "enable"):
        code, _, err = await cli("channels", verb, "filed")
        assert code == 1
        assert "is defined in a config file ([[channels]]): change it there" in err
    code, _, err = await cli("channels", "update", "filed", "--rate-per-second", "3")
    assert code == 1
    assert "change it there" in err
    code, _, err = await cli("channels", "remove", "filed")  # a stale mirror may go
    assert code == 0, err
