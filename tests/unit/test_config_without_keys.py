"""Issue 19: a process without the sender role (`--role web`) reads no API key: the channels'
`api_key_env`/`api_key_file` need not resolve where it runs, and the Partner API key is not read;
webhook credentials are read and checked as always."""

from __future__ import annotations

from pathlib import Path

import pytest

from outbox.config import WITHHELD_KEY, Secret
from outbox.config_loader import load_settings
from outbox.config_reload import credentials_diff
from outbox.errors import ConfigError

FILE = """
database_url = "postgresql://outbox@db.internal/outbox"

[partner]
partner_id = "abcPA"
api_key_env = "PARTNER_KEY"
webhook_secret_env = "PARTNER_HOOK_SECRET"

[[channels]]
id = "shop-de"
dialect = "cloud"
base_url = "https://waba-v2.360dialog.io"
api_key_file = "{key_file}"
webhook_username_env = "HOOK_USER"
webhook_password_env = "HOOK_PASS"
"""
ENV = {
    "HOOK_USER": "hook-user",
    "HOOK_PASS": "hook-password-0123456789",
    "PARTNER_HOOK_SECRET": "partner-hook-secret-0123",
}


def _path(tmp_path: Path) -> Path:
    path = tmp_path / "outbox.toml"
    path.write_text(FILE.format(key_file=tmp_path / "not-mounted.key"), encoding="utf-8")
    return path


def test_without_api_keys_none_is_read_and_webhook_credentials_are(tmp_path: Path) -> None:
    settings = load_settings(_path(tmp_path), ENV, api_keys=False)
    [channel] = settings.channels
    assert channel.api_key is WITHHELD_KEY
    assert channel.webhook_password == Secret("hook-password-0123456789")
    assert settings.partner is None  # its key (PARTNER_KEY) is not even set here
    assert settings.partner_webhook_secret == Secret("partner-hook-secret-0123")
    with pytest.raises(RuntimeError, match="without API keys"):
        channel.api_key.reveal()
    # A reload reads the same way: nothing to apply, nothing needing a restart.
    diff = credentials_diff(
        {channel.id: channel}, load_settings(_path(tmp_path), ENV, api_keys=False)
    )
    assert (diff.updated, diff.needs_restart) == ({}, [])


def test_a_sender_still_needs_its_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read api_key_file"):
        load_settings(_path(tmp_path), {**ENV, "PARTNER_KEY": "p"})


def test_webhook_credentials_are_still_checked_without_api_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="HOOK_PASS"):
        load_settings(_path(tmp_path), {**ENV, "HOOK_PASS": ""}, api_keys=False)
