"""The `[partner]` section: 360dialog's Partner API, for `outbox channels rotate-key` and
`import`, and the platform secret partner webhooks are signed with (POST /webhooks, issue 18).

Optional: without the Partner API keys those two verbs refuse to run; without the secret,
POST /webhooks takes no partner-signed bodies. A section that gives only `webhook_secret_*`
needs no Partner API keys; one that gives any other key is a Partner API section and needs
`partner_id` and the API key."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from outbox.config import PARTNER_API_URL, PartnerConfig, Secret
from outbox.config_channels import secret_entry
from outbox.config_checks import insecure_http_allowed, require_https
from outbox.config_loader import ENV_PREFIX, toml_table
from outbox.config_values import coerced, typed_in_file
from outbox.errors import ConfigError

_KEYS = frozenset(
    {"partner_id", "api_key_env", "api_key_file", "base_url", "webhook_url", "request_timeout"}
)
_SECRET_KEYS = ("webhook_secret_env", "webhook_secret_file")


def load_partner(
    raw: Any, env: Mapping[str, str], *, api_key: bool = True
) -> tuple[PartnerConfig | None, Secret | None]:
    """`[partner]` from the file: the Partner API settings (None when the section names none
    of them, or without `api_key`: a process that calls no API reads no key) and the partner
    webhook secret (None when not given)."""
    section = toml_table({} if raw is None else raw, "partner")
    given = {k: section.pop(k) for k in _SECRET_KEYS if k in section}
    secret = secret_entry(given, "webhook_secret", "partner", env)
    if not api_key or (not section and f"{ENV_PREFIX}PARTNER_PARTNER_ID" not in env):
        return None, secret  # no Partner API here (at most the webhook secret)
    return _partner_api(section, env), secret


def _partner_api(section: dict[str, Any], env: Mapping[str, str]) -> PartnerConfig:
    """The Partner API keys, each plain one overridable by OUTBOX_PARTNER_<KEY>."""

    def given(name: str) -> Any:
        return env.get(f"{ENV_PREFIX}PARTNER_{name.upper()}") or section.get(name)

    unknown = sorted(section.keys() - _KEYS)
    if unknown:
        raise ConfigError(f"unknown configuration key: partner.{unknown[0]}")
    partner_id = given("partner_id")
    if not isinstance(partner_id, str) or not partner_id:
        raise ConfigError("partner.partner_id is required (your Partner Hub id, e.g. 'abcPA')")
    api_key = secret_entry(section, "api_key", "partner", env)
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
    # Issue 19 §3: the Partner key and the webhook's Basic auth travel to these.
    insecure = insecure_http_allowed(env)
    require_https(base_url, "partner.base_url", allow_insecure=insecure)
    if webhook_url is not None:
        require_https(webhook_url, "partner.webhook_url", allow_insecure=insecure)
    timeout = given("request_timeout")
    if f"{ENV_PREFIX}PARTNER_REQUEST_TIMEOUT" not in env and timeout is not None:
        typed_in_file(timedelta(0), timeout, "partner.request_timeout")  # issue 19 §4
    return PartnerConfig(
        partner_id=partner_id,
        api_key=api_key,
        base_url=base_url.rstrip("/"),
        webhook_url=webhook_url,
        request_timeout=timedelta(seconds=30)
        if timeout is None
        else coerced(timedelta(0), timeout, "partner.request_timeout", {}),
    )


def _http_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)
