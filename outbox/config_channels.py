"""The `[[channels]]` entries: one ChannelConfig per table, checked the same way for the file's
channels and the registry's rows (outbox.db.registry_rows), credentials given by reference."""

from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping
from dataclasses import Field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from outbox.config import WITHHELD_KEY, ChannelConfig, Secret, UnknownPolicy, WebhookAuth
from outbox.config_checks import (
    checked_credential,
    insecure_http_allowed,
    read_secret_file,
    require_https,
)
from outbox.config_edge import webhook_credentials_strong
from outbox.config_values import E, check_at_most, coerced, member_of, typed_in_file
from outbox.domain.models import Dialect
from outbox.errors import ConfigError

_CHANNEL_FIELDS = {f.name: f for f in fields(ChannelConfig)}
# A credential is given by reference: the environment variable or the file that holds it.
CHANNEL_KEYS = frozenset(
    key
    for name, f in _CHANNEL_FIELDS.items()
    for key in ((f"{name}_env", f"{name}_file") if f.metadata.get("secret") else (name,))
)


_V = TypeVar("_V", bound=Hashable)


@functools.lru_cache(maxsize=4096, typed=True)
def _kept(value: Hashable) -> Hashable:
    return value


def _shared(value: _V) -> _V:
    """One object for a value many channels hold: a partner's numbers mostly share a base URL,
    limits, a namespace, a WABA and a client, and every registry row (every TOML table) read
    makes its own copy of each (issue 16: 155 bytes a channel for the base URL, rates and gap
    alone, 1.55 MB at 10,000). `typed`: 1 and 1.0 stay what they are."""
    return cast(_V, _kept(value))


def channels_in_file(
    raw: Any, env: Mapping[str, str], *, api_keys: bool = True
) -> tuple[ChannelConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError("channels must be an array of tables ([[channels]])")
    channels: dict[str, ChannelConfig] = {}  # by id: a partner's 10,000 are checked in linear time
    for index, entry in enumerate(raw):
        where = f"channels[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table")
        channel = channel_from_entry(entry, where, env, api_keys=api_keys)
        if channel.id in channels:
            raise ConfigError(f"{where} (id {channel.id!r}).id is used by two channels")
        channels[channel.id] = channel
    return tuple(channels.values())


def channel_from_entry(
    entry: dict[str, Any], where: str, env: Mapping[str, str], *, api_keys: bool = True
) -> ChannelConfig:
    """One channel from a `[[channels]]` table, or a registry row under the same names.

    Without `api_keys` (a process that sends nothing) the key is neither required nor read:
    its variable or file need not exist there, and the channel holds `WITHHELD_KEY`."""
    unknown = sorted(entry.keys() - CHANNEL_KEYS)
    if unknown:
        raise ConfigError(f"unknown configuration key: {where}.{unknown[0]}")
    channel_id = entry.get("id")
    if not isinstance(channel_id, str) or not channel_id:
        raise ConfigError(f"{where}.id is required")
    return _channel(entry, f"{where} (id {channel_id!r})", env, api_keys)


def _channel(
    entry: dict[str, Any], where: str, env: Mapping[str, str], api_keys: bool
) -> ChannelConfig:
    try:
        dialect = Dialect(str(entry.get("dialect")))
    except ValueError:
        raise ConfigError(f"{where}.dialect must be 'cloud' or 'onprem'") from None
    base_url = entry.get("base_url")
    if (
        not isinstance(base_url, str)
        or urlsplit(base_url).scheme not in ("http", "https")
        or not urlsplit(base_url).hostname
    ):
        raise ConfigError(f"{where}.base_url must be an http(s) URL")
    # Issue 19 §3: the key travels to base_url; plain http only on loopback or by opt-out.
    require_https(base_url, f"{where}.base_url", allow_insecure=insecure_http_allowed(env))
    api_key = secret_entry(entry, "api_key", where, env) if api_keys else WITHHELD_KEY
    if api_key is None:
        raise ConfigError(f"{where}: api_key_env or api_key_file is required")
    namespace, waba_id, client_id = (
        _shared(_optional_text(entry, name, where))
        for name in ("namespace", "waba_id", "client_id")
    )
    phone_number_id, partner_channel_id = (  # one number's own: nothing to share
        _optional_text(entry, name, where) for name in ("phone_number_id", "partner_channel_id")
    )
    username = secret_entry(entry, "webhook_username", where, env)
    password = secret_entry(entry, "webhook_password", where, env)
    if (username is None) != (password is None):
        raise ConfigError(f"{where}: webhook_username_* and webhook_password_* go together")
    webhook_credentials_strong(username, password, where)
    webhook_auth = _choice(WebhookAuth, entry.get("webhook_auth", "basic"), where, "webhook_auth")
    if webhook_auth is WebhookAuth.NONE and username is not None:
        raise ConfigError(
            f'{where}: webhook_auth = "none" takes webhooks from anyone, but the channel has '
            "webhook credentials: remove one or the other"
        )
    return ChannelConfig(
        id=entry["id"],
        dialect=dialect,
        base_url=_shared(base_url.rstrip("/")),
        api_key=api_key,
        rate_per_second=_shared(_number(20.0, entry, "rate_per_second", where)),
        namespace=namespace,
        webhook_username=username,
        webhook_password=password,
        unknown_policy=_choice(
            UnknownPolicy, entry.get("unknown_policy", "resend"), where, "unknown_policy"
        ),
        webhook_auth=webhook_auth,
        recipient_gap=_shared(_number(timedelta(0), entry, "recipient_gap", where)),
        burst=_shared(_number(1.0, entry, "burst", where)),
        max_in_flight=_number(1, entry, "max_in_flight", where),
        replay_share=_shared(_number(0.2, entry, "replay_share", where)),
        phone_number_id=phone_number_id,
        waba_id=waba_id,
        partner_channel_id=partner_channel_id,
        client_id=client_id,
    )


def _optional_text(entry: dict[str, Any], name: str, where: str) -> str | None:
    value = entry.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{where}.{name} must be a non-empty string")
    return value


def _number(kind: Any, entry: dict[str, Any], name: str, where: str) -> Any:
    """The channel's `name` as the type of `kind` within its field's limits, or its default."""
    f: Field[Any] = _CHANNEL_FIELDS[name]
    if name not in entry:
        return f.default
    value = entry[name]
    typed_in_file(kind, value, f"{where}.{name}")
    number = coerced(kind, value, f"{where}.{name}", f.metadata)
    check_at_most(f.metadata, number, f"{where}.{name}", value)
    return number


def _choice(kind: type[E], value: Any, where: str, name: str) -> E:
    return member_of(kind, value, f"{where}.{name}")


def secret_entry(
    entry: dict[str, Any], name: str, where: str, env: Mapping[str, str]
) -> Secret | None:
    var, file = entry.get(f"{name}_env"), entry.get(f"{name}_file")
    if var is not None and file is not None:
        raise ConfigError(f"{where}: give {name}_env or {name}_file, not both")
    # Issue 19 §3: a value with whitespace around it or a control character is refused, the
    # channel and the variable or file named (`config_checks`).
    if var is not None:
        if not isinstance(var, str) or not var:
            raise ConfigError(f"{where}.{name}_env must name an environment variable")
        value = env.get(var, "")
        if not value:
            raise ConfigError(f"{where}: environment variable {var} ({name}_env) is not set")
        return Secret(checked_credential(value, f"{where}: environment variable {var}"))
    if file is not None:
        try:
            return Secret(read_secret_file(Path(str(file)), f"{where}: {name}_file {file}"))
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {name}_file {file}: {exc.strerror}") from exc
    return None
