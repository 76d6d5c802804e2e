"""Issue 19 §3: credentials, their files, the URLs they travel to and the database URL are
checked at load, and no message names a secret."""

from __future__ import annotations

import os
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing

from outbox.config_checks import check_database_url, masked_database_url
from outbox.config_loader import load_settings
from outbox.errors import ConfigError
from tests.unit.test_config import DB, ENV, channel

KEY = "k3y-9f8e7d6c5b4a"


def _load(tmp_path: Path, text: str, env: dict[str, str]) -> object:
    path = tmp_path / "outbox.toml"
    path.write_text(text, encoding="utf-8")
    return load_settings(path, env)


def _refused(tmp_path: Path, text: str, env: dict[str, str], *fragments: str) -> str:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text, env)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    assert KEY not in message
    return message


# --- 3. keys with whitespace or control characters -------------------------------------------


BAD_VALUES = [
    pytest.param(f"{KEY}\n", id="trailing-newline"),
    pytest.param(f"{KEY}\r\n", id="trailing-crlf"),
    pytest.param(f"{KEY} ", id="trailing-space"),
    pytest.param(f"\t{KEY}", id="leading-tab"),
    pytest.param(f"{KEY[:4]}\x00{KEY[4:]}", id="nul"),
    pytest.param(f"{KEY[:4]}\x1b{KEY[4:]}", id="escape"),
    pytest.param(f"{KEY[:4]}\r\n{KEY[4:]}", id="header-injection"),
    pytest.param(f"{KEY[:4]}\x7f{KEY[4:]}", id="delete"),
]


@pytest.mark.parametrize("value", BAD_VALUES)
def test_an_env_key_with_whitespace_or_control_characters_is_refused(
    tmp_path: Path, value: str
) -> None:
    env = {**ENV, "D360_KEY_SHOP_DE": value}
    _refused(tmp_path, DB + channel(), env, "shop-de", "D360_KEY_SHOP_DE", "refused")


@pytest.mark.parametrize("value", [*BAD_VALUES[2:], pytest.param(f"{KEY}\n\n", id="two-newlines")])
def test_a_key_file_with_whitespace_or_control_characters_is_refused(
    tmp_path: Path, value: str
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(value, encoding="utf-8", newline="")
    key_file.chmod(0o600)
    text = DB + channel(api_key_env=None, api_key_file=str(key_file))
    _refused(tmp_path, text, ENV, "shop-de", "api_key_file", str(key_file), "refused")


@pytest.mark.parametrize("ending", ["", "\n", "\r\n"])
def test_a_key_file_may_end_in_one_line_ending(tmp_path: Path, ending: str) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + ending, encoding="utf-8", newline="")
    key_file.chmod(0o600)
    settings = _load(tmp_path, DB + channel(api_key_env=None, api_key_file=str(key_file)), ENV)
    assert settings.channels[0].api_key.reveal() == KEY  # type: ignore[attr-defined]


def test_webhook_credentials_and_partner_keys_are_checked_alike(tmp_path: Path) -> None:
    env = {**ENV, "SHOP_DE_HOOK_PASS": "pass-word-long-enough\n"}
    text = DB + channel(
        webhook_username_env="SHOP_DE_HOOK_USER", webhook_password_env="SHOP_DE_HOOK_PASS"
    )
    _refused(tmp_path, text, env, "shop-de", "SHOP_DE_HOOK_PASS")
    partner = DB + channel() + '[partner]\npartner_id = "abcPA"\napi_key_env = "PARTNER_KEY"\n'
    _refused(tmp_path, partner, {**ENV, "PARTNER_KEY": f"{KEY}\n"}, "partner", "PARTNER_KEY")


@pytest.fixture
def warnings() -> Iterator[list[MutableMapping[str, Any]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


@pytest.mark.parametrize(
    ("mode", "group", "warned"),
    [
        (0o600, None, False),
        (0o400, None, False),
        (0o640, "own", False),  # a Kubernetes Secret volume with fsGroup, a systemd Group=
        (0o644, "own", True),
        (0o604, None, True),
        (0o640, "other", True),
    ],
)
def test_a_key_file_others_can_read_is_warned_about_by_name(
    tmp_path: Path,
    warnings: list[MutableMapping[str, Any]],
    mode: int,
    group: str | None,
    warned: bool,
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY, encoding="utf-8")
    if group == "other":
        others = [g for g in os.getgroups() if g != os.getegid()]
        if os.geteuid() != 0 and not others:
            pytest.skip("no second group to give the file to")
        os.chown(key_file, -1, others[0] if others else os.getegid() + 1)
    key_file.chmod(mode)
    _load(tmp_path, DB + channel(api_key_env=None, api_key_file=str(key_file)), ENV)
    found = [w for w in warnings if w["event"] == "outbox.config.secret_file_readable"]
    assert len(found) == (1 if warned else 0)
    if warned:
        assert found[0]["file"] == str(key_file)
        assert found[0]["log_level"] == "warning"
        assert KEY not in repr(found)


def test_the_master_key_file_is_checked_too(
    tmp_path: Path, warnings: list[MutableMapping[str, Any]]
) -> None:
    from outbox.sealing import generate_key, keyring_from

    key_file = tmp_path / "master.key"
    key_file.write_text(generate_key() + "\n", encoding="utf-8")
    key_file.chmod(0o644)
    keyring_from({"OUTBOX_SECRET_KEY_FILE": str(key_file)})
    [warning] = [w for w in warnings if w["event"] == "outbox.config.secret_file_readable"]
    assert warning["file"] == str(key_file)


# --- 2. https for non-loopback URLs ----------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "allowed"),
    [
        ("https://waba-v2.360dialog.io", True),
        ("http://127.0.0.1:8081", True),
        ("http://127.5.6.7", True),
        ("http://[::1]:8081", True),
        ("http://localhost:8081", True),
        ("http://waba-v2.360dialog.io", False),
        ("http://203.0.113.5", False),
        ("http://10.0.0.8:8081", False),
        ("http://localhost.evil.example", False),
    ],
)
def test_a_channel_base_url_must_be_https_off_loopback(
    tmp_path: Path, base_url: str, allowed: bool
) -> None:
    text = DB + channel(base_url=base_url)
    if allowed:
        _load(tmp_path, text, ENV)
    else:
        message = _refused(
            tmp_path, text, ENV, "shop-de", "base_url", "https", "OUTBOX_ALLOW_INSECURE_HTTP"
        )
        assert "channels[0]" in message
        # The opt-out for test rigs.
        _load(tmp_path, text, {**ENV, "OUTBOX_ALLOW_INSECURE_HTTP": "1"})


def test_partner_urls_must_be_https_off_loopback(tmp_path: Path) -> None:
    env = {**ENV, "PARTNER_KEY": KEY}
    head = DB + channel() + '[partner]\npartner_id = "abcPA"\napi_key_env = "PARTNER_KEY"\n'
    _refused(tmp_path, head + 'base_url = "http://hub.example.com"\n', env, "partner.base_url")
    hook = 'webhook_url = "http://outbox.example.com/webhooks/{channel}"\n'
    _refused(tmp_path, head + hook, env, "partner.webhook_url")
    _load(tmp_path, head + hook, {**env, "OUTBOX_ALLOW_INSECURE_HTTP": "true"})


# --- 4. a database URL with an unencoded character in its password ---------------------------

PASSWORD = "Pa55/w0rd#x?y@z"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://outbox:Pa55/w0rd@127.0.0.1/outbox",
        "postgresql://outbox:Pa55#w0rd@127.0.0.1/outbox",
        "postgresql://outbox:Pa55?w0rd@127.0.0.1/outbox",
        "postgresql://outbox:Pa55@w0rd@127.0.0.1/outbox",
        f"postgresql://outbox:{PASSWORD}@db.internal:5432/outbox?sslmode=verify-full",
    ],
)
def test_a_database_url_with_an_unencoded_password_is_refused_masked(
    tmp_path: Path, url: str
) -> None:
    password = url.split("outbox:", 1)[1].rsplit("@", 1)[0]
    env = {**ENV, "OUTBOX_DATABASE_URL": url}
    message = _refused(tmp_path, channel(), env, "database_url", "percent-encoded", "outbox:***@")
    for part in ("Pa55", "w0rd", password):
        assert part not in message


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://outbox:Pa55%2Fw0rd@127.0.0.1:5432/outbox",
        "postgresql://outbox@/outbox?host=/run/postgresql",
        "postgresql:///outbox?user=me&password=p@ss",
        "postgres://outbox@localhost/outbox",
    ],
)
def test_well_formed_database_urls_pass(url: str) -> None:
    check_database_url(url, "database_url")


def test_masked_database_url() -> None:
    assert masked_database_url("postgresql://u:p/w@h:5/d") == "postgresql://u:***@h:5/d"
    assert masked_database_url("postgresql://u@h/d") == "postgresql://u@h/d"
    assert masked_database_url("postgresql://h/d") == "postgresql://h/d"


def test_the_database_url_from_a_file(tmp_path: Path) -> None:
    url_file = tmp_path / "database-url"
    url_file.write_text("postgresql://outbox:s3cret@db.internal/outbox\n", encoding="utf-8")
    url_file.chmod(0o600)
    env = {**ENV, "OUTBOX_DATABASE_URL_FILE": str(url_file)}
    settings = _load(tmp_path, channel(), env)
    assert settings.database_url == "postgresql://outbox:s3cret@db.internal/outbox"  # type: ignore[attr-defined]
    message = _refused(tmp_path, DB + channel(), env, "database_url_file", "not both")
    assert "s3cret" not in message


def test_a_registry_add_with_a_bad_key_is_refused_before_it_is_stored() -> None:
    from outbox.config import Secret
    from outbox.db.registry_rows import checked

    plain = {"dialect": "cloud", "base_url": "https://waba-v2.360dialog.io"}
    with pytest.raises(ConfigError, match=r"'shop'.*api_key.*trailing newline") as caught:
        checked("shop", plain, {"api_key": ("sealed", Secret(f"{KEY}\n"))})
    assert KEY not in str(caught.value)
    assert checked("shop", plain, {"api_key": ("sealed", Secret(KEY))}).id == "shop"
    with pytest.raises(ConfigError, match="https"):
        checked("shop", {**plain, "base_url": "http://api.example"}, {"api_key": None})


# --- 3. a rotated-out key is not kept -------------------------------------------------------


async def test_a_rotated_key_is_dropped_by_the_api_client() -> None:
    import gc
    import weakref
    from dataclasses import replace
    from datetime import timedelta

    from outbox.config import ChannelConfig, Secret
    from outbox.domain.models import Dialect, SentAs
    from outbox.domain.request import ApiRequest
    from outbox.http.api_client import ApiClient, create_session
    from tests.support import key_recording_api, loopback_site

    class Tracked(Secret):  # a Secret that can be watched (Secret has __slots__)
        pass

    seen: list[str] = []
    app = key_recording_api(seen)
    runner, base = await loopback_site(app)
    old_key = Tracked("old-key-" + "x" * 20)
    watch = weakref.ref(old_key)
    channel = ChannelConfig("cloud", Dialect.CLOUD, base, old_key)
    request = ApiRequest("/messages", {"to": "1"}, SentAs.FREEFORM)
    try:
        async with create_session(2, timedelta(seconds=5)) as session:
            client = ApiClient(session)
            await client.send(channel, request)
            rotated = replace(channel, api_key=Secret("new-key-" + "y" * 20))
            del channel, old_key
            await client.send(rotated, request)
            gc.collect()
            assert watch() is None, gc.get_referrers(watch())
            held = [h["D360-API-KEY"] for _, h in (client._target(rotated, "/messages"),)]
            assert held == [rotated.api_key.reveal()]
    finally:
        await runner.cleanup()
    assert seen == ["old-key-" + "x" * 20, "new-key-" + "y" * 20]


async def test_a_partner_issued_key_with_a_newline_is_refused_at_import() -> None:
    from datetime import timedelta

    from aiohttp import web

    from outbox.config import PartnerConfig, Secret
    from outbox.http.partner_client import PartnerClient, create_session
    from outbox.ports.partner import PartnerApiError
    from tests.support import loopback_site

    async def new_key(_: web.Request) -> web.Response:
        return web.json_response({"api_key": f"{KEY}\n", "address": "https://waba-v2.x"})

    app = web.Application()
    app.router.add_post("/partners/abcPA/channels/ch1/api_keys", new_key)
    runner, base = await loopback_site(app)
    try:
        async with create_session(timedelta(seconds=5)) as session:
            client = PartnerClient(session, PartnerConfig("abcPA", Secret("p"), base_url=base))
            with pytest.raises(PartnerApiError, match="trailing newline") as caught:
                await client.create_api_key("ch1")
    finally:
        await runner.cleanup()
    assert KEY not in str(caught.value)
