"""The [partner] section: required keys, secrets by reference, URLs, environment overrides."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from outbox.config import PARTNER_API_URL, Settings
from outbox.config_loader import load_settings
from outbox.errors import ConfigError

BASE = 'database_url = "postgresql://u@h/db"\n'
ENV = {"PKEY": "partner-secret"}


def load(tmp_path: Path, section: str, env: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "c.toml"
    path.write_text(BASE + section)
    return load_settings(path, {**ENV, **(env or {})}, need_channels=False)


def test_no_section_no_partner(tmp_path: Path) -> None:
    assert load(tmp_path, "").partner is None


def test_defaults_and_the_key_by_reference(tmp_path: Path) -> None:
    partner = load(tmp_path, '[partner]\npartner_id = "abcPA"\napi_key_env = "PKEY"\n').partner
    assert partner is not None
    assert partner.partner_id == "abcPA"
    assert partner.api_key.reveal() == "partner-secret"
    assert "partner-secret" not in repr(partner)
    assert partner.base_url == PARTNER_API_URL
    assert partner.webhook_url is None
    assert partner.request_timeout == timedelta(seconds=30)


def test_everything_given_and_overridden_by_the_environment(tmp_path: Path) -> None:
    section = (
        '[partner]\npartner_id = "abcPA"\napi_key_env = "PKEY"\n'
        'base_url = "http://127.0.0.1:1/api/v2/"\nrequest_timeout = 5\n'
        'webhook_url = "https://o.example/webhooks/{channel}"\n'
    )
    partner = load(tmp_path, section, {"OUTBOX_PARTNER_PARTNER_ID": "envPA"}).partner
    assert partner is not None
    assert partner.partner_id == "envPA"
    assert partner.base_url == "http://127.0.0.1:1/api/v2"
    assert partner.request_timeout == timedelta(seconds=5)
    assert partner.webhook_url == "https://o.example/webhooks/{channel}"


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ('[partner]\napi_key_env = "PKEY"\n', "partner_id is required"),
        ('[partner]\npartner_id = "p"\n', "api_key_env or api_key_file is required"),
        ('[partner]\npartner_id = "p"\napi_key_env = "NOPE"\n', "NOPE"),
        ('[partner]\npartner_id = "p"\napi_key_env = "PKEY"\nbase_url = "ftp://x"\n', "base_url"),
        (
            '[partner]\npartner_id = "p"\napi_key_env = "PKEY"\nwebhook_url = "https://x/hooks"\n',
            "{channel}",
        ),
        ('[partner]\npartner_id = "p"\napi_key_env = "PKEY"\ncolour = 1\n', "partner.colour"),
        ('[partner]\npartner_id = "p"\napi_key_env = "PKEY"\nrequest_timeout = 0\n', "timeout"),
        ("partner = 3\n", "must be a table"),
    ],
)
def test_refused_with_the_key_named(tmp_path: Path, section: str, words: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, section)
    assert words in str(raised.value)
    assert "partner-secret" not in str(raised.value)


# --- the partner webhook secret shares the section (issue 18 §4) ---
SECRET_ENV = {"HOOK_SECRET": "hook-secret"}


@pytest.mark.parametrize(
    ("section", "has_api"),
    [
        pytest.param('[partner]\nwebhook_secret_env = "HOOK_SECRET"\n', False, id="secret-only"),
        pytest.param(
            '[partner]\npartner_id = "abcPA"\napi_key_env = "PKEY"\n'
            'webhook_secret_env = "HOOK_SECRET"\n',
            True,
            id="api-and-secret",
        ),
    ],
)
def test_the_webhook_secret_alone_or_beside_the_partner_api(
    tmp_path: Path, section: str, has_api: bool
) -> None:
    settings = load(tmp_path, section, SECRET_ENV)
    assert settings.partner_webhook_secret is not None
    assert settings.partner_webhook_secret.reveal() == "hook-secret"
    assert (settings.partner is not None) is has_api
    assert "hook-secret" not in repr(settings)


def test_the_webhook_secret_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    settings = load(tmp_path, f'[partner]\nwebhook_secret_file = "{secret}"\n')
    assert settings.partner is None
    assert settings.partner_webhook_secret is not None
    assert settings.partner_webhook_secret.reveal() == "from-file"


@pytest.mark.parametrize(
    ("section", "words"),
    [
        # Any Partner API key makes it a Partner API section: its required keys then apply.
        ('[partner]\nwebhook_secret_env = "HOOK_SECRET"\nbase_url = "http://x"\n', "partner_id"),
        ('[partner]\nwebhook_secret = "plain"\n', "partner.webhook_secret"),
        ('[partner]\nwebhook_secret_env = "NOPE"\n', "NOPE"),
        (
            '[partner]\nwebhook_secret_env = "HOOK_SECRET"\nwebhook_secret_file = "/x"\n',
            "not both",
        ),
    ],
)
def test_a_bad_webhook_secret_names_its_key(tmp_path: Path, section: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load(tmp_path, section, SECRET_ENV)
