"""`[http]`'s edge settings and the webhook credential floor (issue 19 section 2)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from outbox.db.registry_rows import checked
from outbox.errors import ConfigError
from tests.unit.test_config import DB, ENV, channel, expect_error, load

HOOKS = {"webhook_username_env": "SHOP_DE_HOOK_USER", "webhook_password_env": "SHOP_DE_HOOK_PASS"}


@pytest.mark.parametrize(
    ("user", "password", "fragments"),
    [
        pytest.param("hooks", "short-pass-15ch", ["shop-de", "at least 16"], id="15-characters"),
        pytest.param("hooks", "x", ["shop-de", "at least 16"], id="one-character"),
        pytest.param("a:b", "long-enough-password", ["shop-de", "':'"], id="colon-in-user"),
    ],
)
def test_weak_webhook_credentials_are_refused_naming_the_channel(
    tmp_path: Path, user: str, password: str, fragments: list[str]
) -> None:
    env = {**ENV, "SHOP_DE_HOOK_USER": user, "SHOP_DE_HOOK_PASS": password}
    message = expect_error(tmp_path, DB + channel(**HOOKS), env, *fragments)
    assert password not in message


def test_a_16_character_password_is_taken(tmp_path: Path) -> None:
    env = {**ENV, "SHOP_DE_HOOK_PASS": "0123456789abcdef"}
    (shop,) = load(tmp_path, DB + channel(**HOOKS), env).channels
    assert shop.webhook_password is not None


def test_channels_add_refuses_a_weak_sealed_password() -> None:
    from outbox.config import Secret

    plain = {"dialect": "cloud", "base_url": "https://waba-v2.360dialog.io"}
    held = {"api_key": ("sealed", Secret("k")), "webhook_username": ("sealed", Secret("u"))}
    with pytest.raises(ConfigError, match="at least 16"):
        checked("reg", plain, {**held, "webhook_password": ("sealed", Secret("weak"))})
    strong = ("sealed", Secret("a-strong-password-123"))
    assert checked("reg", plain, {**held, "webhook_password": strong}).webhook_password == strong[1]
    # A referenced password is checked where a replica reads it, not here.
    assert checked("reg", plain, {**held, "webhook_password": ("env", "HOOK_PASS")})


def test_edge_defaults_and_overrides(tmp_path: Path) -> None:
    http = load(tmp_path, DB + channel(), ENV).http
    assert (http.keepalive_timeout, http.header_timeout, http.body_timeout) == (
        timedelta(seconds=15), timedelta(seconds=10), timedelta(seconds=10)
    )  # fmt: skip
    assert http.admin_listen == ""
    text = (
        DB + '[http]\nadmin_listen = "127.0.0.1:9102"\nbody_timeout = 2.5\n'
        'trusted_proxies = "10.0.0.0/8, 192.0.2.1"\n' + channel()
    )
    http = load(tmp_path, text, ENV).http
    assert (http.admin_listen, http.body_timeout) == ("127.0.0.1:9102", timedelta(seconds=2.5))


@pytest.mark.parametrize(
    ("section", "fragment"),
    [
        ('admin_listen = "9102"', "http.admin_listen"),
        ('admin_listen = "127.0.0.1:99999"', "http.admin_listen"),
        ('trusted_proxies = "10.0.0.1, ingress"', "http.trusted_proxies"),
        ("max_webhook_handlers = 0", "http.max_webhook_handlers"),
        ("body_timeout = -1", "http.body_timeout"),
    ],
)
def test_bad_edge_settings_are_refused(tmp_path: Path, section: str, fragment: str) -> None:
    expect_error(tmp_path, DB + f"[http]\n{section}\n" + channel(), ENV, fragment)
