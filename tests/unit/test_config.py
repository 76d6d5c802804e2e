from __future__ import annotations

from dataclasses import fields, replace
from datetime import timedelta
from pathlib import Path

import pytest

from outbox.config import (
    ChannelConfig,
    HttpConfig,
    Secret,
    SenderConfig,
    Settings,
    WebhookAuth,
    WebhookOrigin,
)
from outbox.config_loader import load_settings
from outbox.config_reload import credentials_diff
from outbox.domain.models import Dialect
from outbox.errors import ConfigError

SHOP_KEY = "shop-key-6f1d9a7e"
LEGACY_KEY = "legacy-key-0b3c5e21"
HOOK_USER = "hook-user-5a5a"
HOOK_PASS = "hook-pass-9c9c77"

ENV = {
    "D360_KEY_SHOP_DE": SHOP_KEY,
    "D360_KEY_LEGACY": LEGACY_KEY,
    "SHOP_DE_HOOK_USER": HOOK_USER,
    "SHOP_DE_HOOK_PASS": HOOK_PASS,
}
SECRETS = (SHOP_KEY, LEGACY_KEY, HOOK_USER, HOOK_PASS)

DB = 'database_url = "postgresql://outbox@db.internal/outbox"\n'

# The example of contract.md §4.
CONTRACT_TOML = (
    DB
    + """
[http]
host = "0.0.0.0"
port = 8080

[[channels]]
id = "shop-de"
dialect = "cloud"
base_url = "https://waba-v2.360dialog.io"
api_key_env = "D360_KEY_SHOP_DE"
rate_per_second = 80
webhook_username_env = "SHOP_DE_HOOK_USER"
webhook_password_env = "SHOP_DE_HOOK_PASS"

[[channels]]
id = "legacy"
dialect = "onprem"
base_url = "https://waba.360dialog.io"
api_key_env = "D360_KEY_LEGACY"
namespace = "d8bcb6bd_2ab2_439c_9d9e_947501266c77"
rate_per_second = 50
"""
)


def channel(**keys: object) -> str:
    """One [[channels]] table; a value of None leaves the key out."""
    values: dict[str, object] = {
        "id": "shop-de",
        "dialect": "cloud",
        "base_url": "https://waba-v2.360dialog.io",
        "api_key_env": "D360_KEY_SHOP_DE",
    }
    values.update(keys)
    lines = ["[[channels]]"]
    for key, value in values.items():
        if value is None:
            continue
        rendered = f'"{value}"' if isinstance(value, str) else str(value).lower()
        lines.append(f"{key} = {rendered}")
    return "\n".join(lines) + "\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "outbox.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    return load_settings(write(tmp_path, text), ENV if env is None else env)


# --- valid files --------------------------------------------------------------------------------


def test_contract_example_loads(tmp_path: Path) -> None:
    settings = load(tmp_path, CONTRACT_TOML)
    assert settings.database_url == "postgresql://outbox@db.internal/outbox"
    assert settings.http.host == "0.0.0.0"
    assert settings.http.port == 8080
    assert [c.id for c in settings.channels] == ["shop-de", "legacy"]

    shop = settings.channel("shop-de")
    assert shop is not None
    assert shop.dialect is Dialect.CLOUD
    assert shop.base_url == "https://waba-v2.360dialog.io"
    assert shop.api_key.reveal() == SHOP_KEY
    assert shop.rate_per_second == 80.0
    assert shop.namespace is None
    assert shop.webhook_username == Secret(HOOK_USER)
    assert shop.webhook_password == Secret(HOOK_PASS)

    legacy = settings.channel("legacy")
    assert legacy is not None
    assert legacy.dialect is Dialect.ONPREM
    assert legacy.base_url == "https://waba.360dialog.io"
    assert legacy.api_key.reveal() == LEGACY_KEY
    assert legacy.rate_per_second == 50.0
    assert legacy.namespace == "d8bcb6bd_2ab2_439c_9d9e_947501266c77"
    assert legacy.webhook_username is None
    assert legacy.webhook_password is None

    assert settings.channel("nope") is None


def test_defaults(tmp_path: Path) -> None:
    settings = load(tmp_path, DB + channel())
    assert settings.http.port == 8080
    assert settings.sender.batch_size == 200
    assert settings.sender.poll_interval == timedelta(seconds=5)
    assert settings.log_level == "info"
    assert settings.log_format == "auto"
    (only,) = settings.channels
    assert only.rate_per_second == 20.0


def test_base_url_loses_its_trailing_slash(tmp_path: Path) -> None:
    settings = load(tmp_path, DB + channel(base_url="https://waba-v2.360dialog.io/"))
    assert settings.channels[0].base_url == "https://waba-v2.360dialog.io"


def test_api_key_from_a_file(tmp_path: Path) -> None:
    key_file = tmp_path / "d360-shop-de"
    key_file.write_text(f"{SHOP_KEY}\n", encoding="utf-8")
    settings = load(tmp_path, DB + channel(api_key_env=None, api_key_file=str(key_file)), env={})
    assert settings.channels[0].api_key.reveal() == SHOP_KEY


def test_webhook_credentials_from_files(tmp_path: Path) -> None:
    (tmp_path / "user").write_text(HOOK_USER, encoding="utf-8")
    # A file's one final line ending is not part of the value (issue 19: spaces around are refused,
    # see test_config_checks.py).
    (tmp_path / "pass").write_text(f"{HOOK_PASS}\n", encoding="utf-8")
    text = DB + channel(
        webhook_username_file=str(tmp_path / "user"),
        webhook_password_file=str(tmp_path / "pass"),
    )
    (only,) = load(tmp_path, text).channels
    assert only.webhook_username == Secret(HOOK_USER)
    assert only.webhook_password == Secret(HOOK_PASS)


def test_database_url_from_the_environment_wins(tmp_path: Path) -> None:
    env = {**ENV, "OUTBOX_DATABASE_URL": "postgresql://other@db2/outbox2"}
    assert load(tmp_path, CONTRACT_TOML, env).database_url == "postgresql://other@db2/outbox2"


def test_database_url_from_the_environment_alone(tmp_path: Path) -> None:
    env = {**ENV, "OUTBOX_DATABASE_URL": "postgres://outbox@localhost/outbox"}
    assert load(tmp_path, channel(), env).database_url == "postgres://outbox@localhost/outbox"


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("postgresql://user@/db?host=/socket/dir", id="unix-socket"),
        pytest.param("postgresql:///outbox?host=/var/run/postgresql", id="unix-socket-no-user"),
        pytest.param("postgresql://u:p@h:5433/db?sslmode=require", id="tcp-with-options"),
        pytest.param("postgres://h/db", id="postgres-scheme"),
    ],
)
def test_libpq_urls_are_accepted(tmp_path: Path, url: str) -> None:
    from_env = load(tmp_path, channel(), {**ENV, "OUTBOX_DATABASE_URL": url})
    assert from_env.database_url == url
    from_file = load(tmp_path, f'database_url = "{url}"\n' + channel())
    assert from_file.database_url == url


def test_environment_overrides_http_and_sender(tmp_path: Path) -> None:
    text = DB + "[http]\nport = 8080\n[sender]\nbatch_size = 10\npoll_interval = 3\n" + channel()
    env = {
        **ENV,
        "OUTBOX_HTTP_PORT": "9090",
        "OUTBOX_HTTP_HOST": "127.0.0.1",
        "OUTBOX_SENDER_BATCH_SIZE": "50",
        "OUTBOX_SENDER_POLL_INTERVAL": "0.25",
    }
    settings = load(tmp_path, text, env)
    assert settings.http.port == 9090
    assert settings.http.host == "127.0.0.1"
    assert settings.sender.batch_size == 50
    assert settings.sender.poll_interval == timedelta(milliseconds=250)


@pytest.mark.parametrize(
    ("text", "env"),
    [
        pytest.param(DB + "[http]\nport = 0\n" + channel(), ENV, id="file"),
        pytest.param(DB + channel(), {**ENV, "OUTBOX_HTTP_PORT": "0"}, id="environment"),
    ],
)
def test_port_zero_means_any_free_port(tmp_path: Path, text: str, env: dict[str, str]) -> None:
    assert load(tmp_path, text, env).http.port == 0


def test_zero_is_not_a_valid_batch_size(tmp_path: Path) -> None:
    expect_error(tmp_path, DB + "[sender]\nbatch_size = 0\n" + channel(), ENV, "sender.batch_size")


def test_file_values_for_http_and_sender(tmp_path: Path) -> None:
    text = (
        DB
        + "[http]\nport = 8181\n[sender]\nbatch_size = 10\npoll_interval = 3\nlease = 90.5\n"
        + channel()
    )
    settings = load(tmp_path, text)
    assert settings.http.port == 8181
    assert settings.sender.batch_size == 10
    assert settings.sender.poll_interval == timedelta(seconds=3)
    assert settings.sender.lease == timedelta(seconds=90.5)


def test_log_settings_from_file_and_environment(tmp_path: Path) -> None:
    text = 'log_level = "debug"\nlog_format = "json"\n' + DB + channel()
    settings = load(tmp_path, text)
    assert (settings.log_level, settings.log_format) == ("debug", "json")
    settings = load(tmp_path, text, {**ENV, "OUTBOX_LOG_LEVEL": "warning"})
    assert settings.log_level == "warning"


def test_no_file_and_no_channels_when_not_needed() -> None:
    settings = load_settings(
        None, {"OUTBOX_DATABASE_URL": "postgresql://h/db"}, need_channels=False
    )
    assert settings.channels == ()
    assert settings.database_url == "postgresql://h/db"


# --- secrets never print ------------------------------------------------------------------------


def test_settings_never_print_secrets(tmp_path: Path) -> None:
    settings = load(tmp_path, CONTRACT_TOML)
    for text in (repr(settings), str(settings), repr(settings.channels), str(settings.channels[0])):
        for secret in SECRETS:
            assert secret not in text
    assert "shop-de" in repr(settings)


def test_secret_hides_and_reveals() -> None:
    secret = Secret("s3cr3t-value")
    assert secret.reveal() == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(secret)
    assert "s3cr3t-value" not in str(secret)
    assert "s3cr3t-value" not in f"{secret}"
    assert secret == Secret("s3cr3t-value")
    assert secret != Secret("other")
    assert secret != "s3cr3t-value"
    assert hash(secret) == hash(Secret("s3cr3t-value"))


# --- errors name the bad key --------------------------------------------------------------------


def expect_error(tmp_path: Path, text: str, env: dict[str, str], *fragments: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, env)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message
    for secret in SECRETS:
        assert secret not in message
    return message


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        pytest.param(DB + 'colour = "blue"\n' + channel(), ["colour"], id="unknown-top-level"),
        pytest.param(DB + "[http]\nprot = 8080\n" + channel(), ["http.prot"], id="unknown-http"),
        pytest.param(
            DB + "[sender]\nbatchsize = 5\n" + channel(), ["sender.batchsize"], id="unknown-sender"
        ),
        pytest.param(
            DB + channel(api_key="inline-key"), ["channels[0].api_key"], id="unknown-channel-key"
        ),
        pytest.param(DB + "http = 5\n" + channel(), ["http"], id="http-not-a-table"),
        pytest.param(DB + 'channels = "shop"\n', ["channels"], id="channels-not-an-array"),
        pytest.param(DB + channel(id=None), ["channels[0].id"], id="channel-without-id"),
        pytest.param(DB + channel(dialect="whatsapp"), ["dialect", "shop-de"], id="bad-dialect"),
        pytest.param(DB + channel(dialect=None), ["dialect"], id="missing-dialect"),
        pytest.param(DB + channel(base_url="ftp://x.example"), ["base_url"], id="ftp-base-url"),
        pytest.param(
            DB + channel(base_url="waba.360dialog.io"), ["base_url"], id="schemeless-base-url"
        ),
        pytest.param(DB + channel(base_url=42), ["base_url"], id="numeric-base-url"),
        pytest.param(
            DB + channel(base_url="https:/waba-v2.360dialog.io"),
            ["base_url"],
            id="hostless-base-url",
        ),
        pytest.param(DB + channel(rate_per_second=0), ["rate_per_second"], id="rate-zero"),
        pytest.param(DB + channel(rate_per_second=-5), ["rate_per_second"], id="rate-negative"),
        pytest.param(DB + channel(rate_per_second="fast"), ["rate_per_second"], id="rate-word"),
        pytest.param(DB + channel(rate_per_second=True), ["rate_per_second"], id="rate-bool"),
        pytest.param(DB + channel(rate_per_second="nan"), ["rate_per_second"], id="rate-nan"),
        pytest.param(
            DB + "[[channels]]\nid = 'shop-de'\ndialect = 'cloud'\n"
            "base_url = 'https://waba-v2.360dialog.io'\napi_key_env = 'D360_KEY_SHOP_DE'\n"
            "rate_per_second = nan\n",
            ["rate_per_second"],
            id="rate-toml-nan",
        ),
        pytest.param(
            DB + "[[channels]]\nid = 'shop-de'\ndialect = 'cloud'\n"
            "base_url = 'https://waba-v2.360dialog.io'\napi_key_env = 'D360_KEY_SHOP_DE'\n"
            "rate_per_second = inf\n",
            ["rate_per_second"],
            id="rate-toml-inf",
        ),
        pytest.param(
            DB + channel(api_key_env=None), ["api_key_env", "api_key_file"], id="no-api-key"
        ),
        pytest.param(
            DB + channel(api_key_file="/run/secrets/k"),
            ["api_key_env", "api_key_file"],
            id="both-api-key-env-and-file",
        ),
        pytest.param(
            DB + channel(api_key_env=None, api_key_file="/nonexistent/outbox-key"),
            ["api_key_file", "/nonexistent/outbox-key"],
            id="api-key-file-missing",
        ),
        pytest.param(DB + channel(api_key_env=""), ["api_key_env"], id="api-key-env-empty-name"),
        pytest.param(
            DB + channel() + channel(api_key_env="D360_KEY_LEGACY"),
            ["shop-de", "id"],
            id="duplicate-channel-id",
        ),
        pytest.param(
            DB + channel(webhook_username_env="SHOP_DE_HOOK_USER"),
            ["webhook_password", "shop-de"],
            id="webhook-username-without-password",
        ),
        pytest.param(
            DB + channel(webhook_password_env="SHOP_DE_HOOK_PASS"),
            ["webhook_username", "shop-de"],
            id="webhook-password-without-username",
        ),
        pytest.param(
            DB + channel(webhook_username_env="NOT_SET", webhook_password_env="SHOP_DE_HOOK_PASS"),
            ["NOT_SET", "webhook_username_env"],
            id="webhook-user-env-not-set",
        ),
        pytest.param(DB + channel(namespace=""), ["namespace"], id="empty-namespace"),
        pytest.param(DB + channel(waba_id=""), ["waba_id"], id="empty-waba-id"),
        pytest.param(DB + channel(phone_number_id=7), ["phone_number_id"], id="number-not-text"),
        pytest.param(
            'database_url = "mysql://u@h/db"\n' + channel(), ["database_url"], id="mysql-url"
        ),
        pytest.param(
            'database_url = "/var/lib/outbox.db"\n' + channel(),
            ["database_url"],
            id="schemeless-url",
        ),
        pytest.param(channel(), ["database_url"], id="missing-database-url"),
        pytest.param('database_url = ""\n' + channel(), ["database_url"], id="empty-database-url"),
        pytest.param(DB, ["channels"], id="no-channels"),
        pytest.param(DB + "[http]\nport = -1\n" + channel(), ["http.port"], id="port-negative"),
        pytest.param(DB + "[http]\nport = 65536\n" + channel(), ["http.port"], id="port-too-big"),
        pytest.param(DB + '[http]\nport = "x"\n' + channel(), ["http.port"], id="port-word"),
        pytest.param(DB + "[http]\nport = true\n" + channel(), ["http.port"], id="port-bool"),
        pytest.param(
            DB + "[sender]\npoll_interval = -1\n" + channel(),
            ["sender.poll_interval"],
            id="negative-duration",
        ),
        pytest.param(
            DB + "[sender]\npoll_interval = inf\n" + channel(),
            ["sender.poll_interval"],
            id="infinite-duration",
        ),
        pytest.param(
            DB + "[sender]\nlease = 1e20\n" + channel(),
            ["sender.lease"],
            id="huge-duration",
        ),
        pytest.param(DB + 'log_level = "verbose"\n' + channel(), ["log_level"], id="log-level"),
        pytest.param(DB + 'log_format = "xml"\n' + channel(), ["log_format"], id="log-format"),
    ],
)
def test_invalid_files_name_the_bad_key(tmp_path: Path, text: str, fragments: list[str]) -> None:
    expect_error(tmp_path, text, ENV, *fragments)


@pytest.mark.parametrize(
    ("env", "fragments"),
    [
        pytest.param({"OUTBOX_HTTP_PORT": "eighty"}, ["OUTBOX_HTTP_PORT"], id="port-not-a-number"),
        pytest.param({"OUTBOX_HTTP_PORT": "-1"}, ["OUTBOX_HTTP_PORT"], id="port-negative"),
        pytest.param({"OUTBOX_HTTP_PORT": "70000"}, ["port", "65535"], id="port-too-big"),
        pytest.param(
            {"OUTBOX_SENDER_BATCH_SIZE": "-1"}, ["OUTBOX_SENDER_BATCH_SIZE"], id="batch-negative"
        ),
        pytest.param(
            {"OUTBOX_SENDER_POLL_INTERVAL": "soon"},
            ["OUTBOX_SENDER_POLL_INTERVAL"],
            id="interval-word",
        ),
        pytest.param(
            {"OUTBOX_SENDER_POLL_INTERVAL": "1e20"},
            ["OUTBOX_SENDER_POLL_INTERVAL"],
            id="interval-huge",
        ),
        pytest.param(
            {"OUTBOX_DATABASE_URL": "sqlite:///outbox.db"}, ["database_url"], id="sqlite-url"
        ),
        pytest.param({"OUTBOX_LOG_LEVEL": "loud"}, ["log_level"], id="log-level"),
    ],
)
def test_invalid_environment_names_the_variable(
    tmp_path: Path, env: dict[str, str], fragments: list[str]
) -> None:
    expect_error(tmp_path, CONTRACT_TOML, {**ENV, **env}, *fragments)


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({k: v for k, v in ENV.items() if k != "D360_KEY_LEGACY"}, id="unset"),
        pytest.param({**ENV, "D360_KEY_LEGACY": ""}, id="empty"),
    ],
)
def test_api_key_variable_not_set(tmp_path: Path, env: dict[str, str]) -> None:
    message = expect_error(tmp_path, CONTRACT_TOML, env, "legacy", "D360_KEY_LEGACY")
    assert "shop-de" not in message


def test_empty_api_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "empty-key"
    key_file.write_text("\n", encoding="utf-8")
    expect_error(
        tmp_path,
        DB + channel(api_key_env=None, api_key_file=str(key_file)),
        ENV,
        "api_key_file",
        "shop-de",
    )


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, DB + "[http\nport = 8080\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, ENV)
    assert "not valid TOML" in str(caught.value)
    assert str(path) in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        load_settings(path, ENV)
    assert "cannot read config file" in str(caught.value)
    assert str(path) in str(caught.value)


def test_a_fractional_port_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"http\.port"):
        load(tmp_path, DB + "[http]\nport = 80.7\n" + channel())


# --- limits declared on the fields -------------------------------------------------------------


def test_limits_are_declared_on_the_fields() -> None:
    def limits(cls: type) -> dict[str, dict[str, object]]:
        return {
            f.name: dict(f.metadata)
            for f in fields(cls)
            if "min" in f.metadata or "max" in f.metadata
        }

    assert limits(HttpConfig) == {
        "port": {"min": 0, "max": 65535, "bounds": "between 0 (any free port) and 65535"},
        "readiness_interval": {"min": 0},
    }
    assert limits(SenderConfig) == {
        "prefetch": {"min": 0},
        "window_margin": {"min": 0},
        "max_attempts": {"max": 100},
    }
    assert limits(ChannelConfig) == {"recipient_gap": {"min": 0}, "replay_share": {"max": 1}}


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        (
            DB + "[sender]\nwindow_margin = -1\n" + channel(),
            ENV,
            "sender.window_margin: must be at least 0, got -1",
        ),
        (DB + channel(recipient_gap=-0.5), ENV, "recipient_gap: must be at least 0, got -0.5"),
        (DB + "[sender]\nprefetch = -1\n" + channel(), ENV, "sender.prefetch: must be at least 0"),
        (DB + channel(replay_share=2), ENV, "replay_share: must be at most 1, got 2"),
        # Issue 19: inside the table's CHECK on attempts (0..1000), so no claim is refused.
        (
            DB + "[sender]\nmax_attempts = 101\n" + channel(),
            ENV,
            "sender.max_attempts: must be at most 100, got 101",
        ),
        (
            DB + channel(),
            {**ENV, "OUTBOX_HTTP_PORT": "65536"},
            "http.port must be between 0 (any free port) and 65535",
        ),
        (
            DB + "[sender]\nlease = 0\n" + channel(),
            ENV,
            "sender.lease: must be greater than 0, got 0",
        ),
    ],
)
def test_field_limits_word_their_errors(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    assert message in expect_error(tmp_path, text, env)


@pytest.mark.parametrize(
    ("sender", "env"),
    [
        ("lease = 10\nrequest_timeout = 30\n", {}),
        ("lease = 30\nrequest_timeout = 30\n", {}),
        ("", {"OUTBOX_SENDER_LEASE": "20"}),  # against the default request_timeout, 30 s
    ],
)
def test_a_lease_must_outlast_the_request_timeout(
    tmp_path: Path, sender: str, env: dict[str, str]
) -> None:
    # A lease that runs out while its request may still be answered is rescued as `unknown`
    # and sent again: a duplicate from configuration alone.
    message = expect_error(tmp_path, DB + "[sender]\n" + sender + channel(), {**ENV, **env})
    assert "sender.lease" in message
    assert "must be longer than sender.request_timeout" in message


def test_a_lease_longer_than_the_request_timeout_loads(tmp_path: Path) -> None:
    settings = load(tmp_path, DB + "[sender]\nlease = 3\nrequest_timeout = 2\n" + channel())
    assert settings.sender.lease > settings.sender.request_timeout


def test_zero_is_allowed_where_the_field_says_so(tmp_path: Path) -> None:
    text = DB + "[sender]\nwindow_margin = 0\n" + channel(recipient_gap=0, replay_share=1)
    settings = load(tmp_path, text)
    assert settings.sender.window_margin == timedelta(0)
    assert (settings.channels[0].recipient_gap, settings.channels[0].replay_share) == (
        timedelta(0),
        1.0,
    )


# --- what a reload takes ------------------------------------------------------------------------


def _running(tmp_path: Path) -> dict[str, ChannelConfig]:
    return {c.id: c for c in load(tmp_path, CONTRACT_TOML).channels}


def test_a_reload_takes_new_credentials_only(tmp_path: Path) -> None:
    running = _running(tmp_path)
    shop, legacy = running["shop-de"], running["legacy"]
    rotated = replace(shop, api_key=Secret("rotated"), webhook_password=Secret("p"))
    fresh = load(tmp_path, CONTRACT_TOML)
    fresh = replace(fresh, channels=(rotated, replace(legacy, rate_per_second=1.0)))
    diff = credentials_diff(running, fresh)
    assert diff.updated == {"shop-de": rotated}
    assert diff.needs_restart == ["legacy"]
    assert running == _running(tmp_path)  # the running channels are not touched


def test_a_reload_names_added_and_removed_channels_as_needing_a_restart(tmp_path: Path) -> None:
    running = _running(tmp_path)
    added = replace(running["legacy"], id="new", api_key=Secret("n"))
    fresh = load(tmp_path, CONTRACT_TOML)
    fresh = replace(fresh, channels=(added, replace(running["shop-de"], api_key=Secret("k"))))
    diff = credentials_diff(running, fresh)
    assert list(diff.updated) == ["shop-de"]
    assert diff.needs_restart == ["new", "legacy"]


def test_a_reload_with_nothing_new_changes_nothing(tmp_path: Path) -> None:
    running = _running(tmp_path)
    diff = credentials_diff(running, load(tmp_path, CONTRACT_TOML))
    assert (diff.updated, diff.needs_restart) == ({}, [])


# --- webhook authentication ---------------------------------------------------------------------


def test_webhook_auth_is_basic_unless_none_is_chosen(tmp_path: Path) -> None:
    default, chosen = load(
        tmp_path,
        DB + channel() + channel(id="open", webhook_auth="none", api_key_env="D360_KEY_LEGACY"),
    ).channels
    assert default.webhook_auth is WebhookAuth.BASIC
    assert chosen.webhook_auth is WebhookAuth.NONE
    assert (chosen.webhook_username, chosen.webhook_password) == (None, None)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        pytest.param(
            DB
            + channel(
                webhook_auth="none",
                webhook_username_env="SHOP_DE_HOOK_USER",
                webhook_password_env="SHOP_DE_HOOK_PASS",
            ),
            ["shop-de", "webhook_auth", "none", "credentials"],
            id="none-with-credentials",
        ),
        pytest.param(
            DB + channel(webhook_auth="open"),
            ["shop-de", "webhook_auth", "'basic'", "'none'"],
            id="unknown-value",
        ),
    ],
)
def test_webhook_auth_contradictions_are_config_errors(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    for fragment in fragments:
        assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("auth", "user", "expected"),
    [
        (WebhookAuth.BASIC, "u", WebhookOrigin.CHECKED),
        (WebhookAuth.NONE, None, WebhookOrigin.ANYONE),
        (WebhookAuth.BASIC, None, WebhookOrigin.REFUSED),
    ],
)
def test_what_a_channel_does_with_webhooks(
    auth: WebhookAuth, user: str | None, expected: WebhookOrigin
) -> None:
    secret = None if user is None else Secret(user)
    configured = ChannelConfig(
        "c",
        Dialect.CLOUD,
        "https://x",
        Secret("k"),
        webhook_username=secret,
        webhook_password=secret,
        webhook_auth=auth,
    )
    assert configured.webhook_origin() is expected


def test_where_the_number_lives_is_read_when_given(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        DB
        + channel(
            phone_number_id="106540352242922",
            waba_id="102290129340398",
            partner_channel_id="Z5ZvNvCH",
            client_id="acme",
        ),
    )
    shop = settings.channel("shop-de")
    assert shop is not None
    assert (shop.phone_number_id, shop.waba_id, shop.partner_channel_id, shop.client_id) == (
        "106540352242922",
        "102290129340398",
        "Z5ZvNvCH",
        "acme",
    )
    bare = load(tmp_path, DB + channel()).channel("shop-de")
    assert bare is not None
    assert (bare.phone_number_id, bare.client_id) == (None, None)


def test_channels_with_the_same_limits_share_one_limits_object() -> None:
    """Issue 16: 10,000 channels held 10,000 equal `Limits` (2 MB); the same terms now give
    the same object, and other terms another."""
    one = ChannelConfig("a", Dialect.CLOUD, "http://127.0.0.1:9", Secret("k"), rate_per_second=5)
    same = replace(one, id="b", api_key=Secret("other"))
    assert same.limits() is one.limits()
    assert replace(one, burst=30.0).limits() is not one.limits()
    assert replace(one, recipient_gap=timedelta(seconds=6)).limits().paced
    assert one.limits().burst == 1.0
    assert replace(one, burst=30.0).limits().burst == 29.75


def test_channels_share_the_values_they_have_in_common() -> None:
    """Issue 16: every TOML table and registry row makes its own copy of each value, so 10,000
    channels held 10,000 equal base URLs, rates and gaps (and namespaces, WABA and client ids
    for a partner). Equal values now come out as one object; a number's own stay its own."""
    from outbox.config_channels import channel_from_entry

    def entry(n: int) -> dict[str, object]:
        text = "".join  # a new string object each time, as a parser makes them
        return {
            "id": f"c{n}",
            "dialect": "cloud",
            "base_url": text(["http://127.0.0.1:9", "/"]),
            "api_key_env": "KEY",
            "rate_per_second": float(text(["8", "0"])),
            "recipient_gap": float(text(["0.", "5"])),
            "replay_share": float(text(["0.", "3"])),
            "namespace": text(["ns", "-1"]),
            "waba_id": text(["waba", "-1"]),
            "client_id": text(["client", "-1"]),
            "phone_number_id": text(["pn-", "1"]),
        }

    one, two = (channel_from_entry(entry(n), f"c[{n}]", {"KEY": "k"}) for n in (1, 2))
    for name in ("base_url", "rate_per_second", "recipient_gap", "replay_share", "namespace",
                 "waba_id", "client_id"):  # fmt: skip
        assert getattr(one, name) is getattr(two, name), name
    assert (one.base_url, one.rate_per_second, one.replay_share) == ("http://127.0.0.1:9", 80, 0.3)
    assert (one.recipient_gap, one.namespace, one.client_id) == (timedelta(seconds=0.5), "ns-1",
                                                                  "client-1")  # fmt: skip
    assert one.phone_number_id == two.phone_number_id == "pn-1"
    assert one.phone_number_id is not two.phone_number_id  # a number's own: not kept
