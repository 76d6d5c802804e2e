"""Validation of the HTTP edge's settings and of webhook credentials (issue 19 section 2), used
by outbox.config_channels for the file's channels and the registry's alike."""

from __future__ import annotations

import ipaddress

from outbox.config import HttpConfig, Secret
from outbox.errors import ConfigError


def checked_http(http: HttpConfig) -> HttpConfig:
    admin_address(http)
    for proxy in filter(None, (p.strip() for p in http.trusted_proxies.split(","))):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(
                f"http.trusted_proxies: {proxy!r} is not an IP address or network"
            ) from None
    return http


def admin_address(http: HttpConfig) -> tuple[str, int] | None:
    """`admin_listen` as (host, port); None when not set."""
    if not http.admin_listen:
        return None
    host, sep, port = http.admin_listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError('http.admin_listen must be "host:port", e.g. "127.0.0.1:9102"')
    return host.strip("[]"), int(port)


MIN_WEBHOOK_PASSWORD = 16


def webhook_credentials_strong(
    username: Secret | None, password: Secret | None, where: str
) -> None:
    """Refuse credentials that could be guessed or could never match (named, never shown)."""
    if username is not None and ":" in username.reveal():
        raise ConfigError(f"{where}: the webhook username must not contain ':' (Basic auth)")
    if password is not None and len(password.reveal()) < MIN_WEBHOOK_PASSWORD:
        raise ConfigError(
            f"{where}: the webhook password must be at least {MIN_WEBHOOK_PASSWORD} characters"
            " (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`)"
        )
