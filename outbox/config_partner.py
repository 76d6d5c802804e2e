"""The `[partner]` section: 360dialog's Partner API, for `outbox channels rotate-key` and
`import`. Optional: without it those two verbs refuse to run and nothing else changes."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from outbox.config import PARTNER_API_URL, PartnerConfig
from outbox.config_loader import ENV_PREFIX, _coerce, _secret, _section
from outbox.errors import ConfigError

_KEYS = frozenset(
    {"partner_id", "api_key_env", "api_key_file", "base_url", "webhook_url", "request_timeout"}
)


def load_partner(raw: Any, env: Mapping[str, str]) -> PartnerConfig | None:
    """`[partner]` from the file, each plain key overridable by OUTBOX_PARTNER_<KEY>."""

    def given(name: str) -> Any:
        return env.get(f"{ENV_PREFIX}PARTNER_{name.upper()}") or section.get(name)

    if raw is None and f"{ENV_PREFIX}PARTNER_PARTNER_ID" not in env:
        return None
    section = _section({} if raw is None else raw, "partner")
    unknown = sorted(section.keys() - _KEYS)
    if unknown:
        raise ConfigError(f"unknown configuration key: partner.{unknown[0]}")
    partner_id = given("partner_id")
    if not isinstance(partner_id, str) or not partner_id:
        raise ConfigError("partner.partner_id is required (your Partner Hub id, e.g. 'abcPA')")
    api_key = _secret(section, "api_key", "partner", env)
    if api_key is None:
        raise ConfigError("partner: api_key_env or api_key_file is required (the Partner API key)")
    base_url = given("base_url") or PARTNER_API_URL
    if not _http_url(base_url):
        raise ConfigError("partner.base_url must be an http(s) URL")
    webhook_url = given("webhook_url")
    if webhook_url is not None and not (_http_url(webhook_url) and "{channel}" in webhook_url):
        raise ConfigError(
            "partner.webhook_url must be an http(s) URL with {channel} in it, "
            "e.g. https://outbox.example.com/webhooks/{channel}"
        )
    timeout = given("request_timeout")
    return PartnerConfig(
        partner_id=partner_id,
        api_key=api_key,
        base_url=base_url.rstrip("/"),
        webhook_url=webhook_url,
        request_timeout=timedelta(seconds=30)
        if timeout is None
        else _coerce(timedelta(0), timeout, "partner.request_timeout", {}),
    )


def _http_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)
