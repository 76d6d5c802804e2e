"""Loading the settings: a TOML file plus `OUTBOX_*` environment overrides and secret files,
validated at start-up; and what a reload (SIGHUP) may take from fresh settings.

Each number's limits come from its field's metadata in outbox.config, so a new setting states
its own limits where it is declared.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, fields, replace
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from outbox.config import (
    ChannelConfig,
    DatabaseConfig,
    HttpConfig,
    MetricsConfig,
    ReconcilerConfig,
    RegistryConfig,
    Secret,
    SenderConfig,
    Settings,
    UnknownPolicy,
    WebhookAuth,
)
from outbox.config_checks import (
    check_database_url,
    checked_credential,
    database_url_from_file,
    insecure_http_allowed,
    read_secret_file,
    require_https,
)
from outbox.config_edge import checked_http, webhook_credentials_strong
from outbox.domain.models import Dialect
from outbox.errors import ConfigError

ENV_PREFIX = "OUTBOX_"
E = TypeVar("E", bound=StrEnum)

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")


def load_settings(
    path: Path | None, environ: Mapping[str, str] | None = None, *, need_channels: bool = True
) -> Settings:
    """Read `path` (may be None), apply overrides from `environ`, validate everything."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    top = dict(raw)
    http = _section(top.pop("http", {}), "http")
    sender = _section(top.pop("sender", {}), "sender")
    reconciler = _section(top.pop("reconciler", {}), "reconciler")
    metrics = _section(top.pop("metrics", {}), "metrics")
    database = _section(top.pop("database", {}), "database")
    registry = _section(top.pop("registry", {}), "registry")
    channels_raw = top.pop("channels", [])
    partner_raw = top.pop("partner", None)
    database_url = _top_level(top, env, "database_url", None)
    database_url_file = _top_level(top, env, "database_url_file", None)
    log_level = log_choice(top, env, "log_level", "info", LOG_LEVELS)
    log_format = log_choice(top, env, "log_format", "auto", LOG_FORMATS)
    listen_database_url = _top_level(top, env, "listen_database_url", None)
    if top:
        raise ConfigError(f"unknown configuration key: {sorted(top)[0]}")
    if database_url_file is not None:
        database_url = database_url_from_file(database_url_file, database_url)
    if not isinstance(database_url, str) or not database_url:
        raise ConfigError("database_url is required (or set OUTBOX_DATABASE_URL)")
    validate_database_url(database_url)
    if listen_database_url is not None:
        validate_database_url(listen_database_url, "listen_database_url")
    channels = _channels(channels_raw, env)
    if need_channels and not channels:
        raise ConfigError("channels: at least one [[channels]] entry is required")
    sender_config: SenderConfig = _dataclass_from(SenderConfig, sender, "sender", env)
    if sender_config.lease <= sender_config.request_timeout:
        # A lease that runs out while its request may still be answered is rescued as
        # `unknown` and sent again: a duplicate from the configuration alone.
        raise ConfigError(
            f"sender.lease ({sender_config.lease.total_seconds():g} s) must be longer than"
            f" sender.request_timeout ({sender_config.request_timeout.total_seconds():g} s)"
        )
    from outbox.config_partner import load_partner  # it reuses this module's helpers

    partner, partner_webhook_secret = load_partner(partner_raw, env)
    return Settings(
        partner=partner,
        partner_webhook_secret=partner_webhook_secret,
        database_url=database_url,
        channels=channels,
        http=checked_http(_dataclass_from(HttpConfig, http, "http", env)),
        sender=sender_config,
        reconciler=_dataclass_from(ReconcilerConfig, reconciler, "reconciler", env),
        metrics=_dataclass_from(MetricsConfig, metrics, "metrics", env),
        registry=_dataclass_from(RegistryConfig, registry, "registry", env),
        log_level=log_level,
        log_format=log_format,
        listen_database_url=listen_database_url,
        database=_dataclass_from(DatabaseConfig, database, "database", env),
    )


def _top_level(top: dict[str, Any], env: Mapping[str, str], key: str, default: Any) -> Any:
    """Take `key` out of the file's top level; OUTBOX_<KEY> wins over it."""
    in_file = top.pop(key, default)
    return env.get(f"{ENV_PREFIX}{key.upper()}") or in_file


def validate_database_url(url: Any, key: str = "database_url") -> None:
    scheme = urlsplit(url).scheme if isinstance(url, str) else None
    if scheme not in ("postgresql", "postgres"):
        raise ConfigError(
            f"{key} must be a libpq URL starting with postgresql:// "
            f"(got a {scheme or 'schemeless'} URL)"
        )
    check_database_url(url, key)


def _section(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a table ([{name}])")
    return dict(value)


def _dataclass_from(cls: Any, values: dict[str, Any], section: str, env: Mapping[str, str]) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(values.keys() - known.keys())
    if unknown:
        raise ConfigError(f"unknown configuration key: {section}.{unknown[0]}")
    kwargs: dict[str, Any] = {}
    for name, f in known.items():
        env_name = f"{ENV_PREFIX}{section.upper()}_{name.upper()}"
        if env_name in env:
            key, given = env_name, env[env_name]
        elif name in values:
            key, given = f"{section}.{name}", values[name]
        else:
            continue
        if key != env_name:
            typed_in_file(f.default, given, key)
        kwargs[name] = _coerce(f.default, given, key, f.metadata)
        _at_most(f.metadata, kwargs[name], f"{section}.{name}", given)
    return cls(**kwargs)


def _coerce(default: Any, value: Any, key: str, limits: Mapping[str, Any]) -> Any:
    """Convert `value` to the type of `default`; durations are given in seconds. Numbers must be
    greater than 0, or at least 0 where `limits` says `min: 0`."""
    allow_zero = limits.get("min") == 0
    converters: dict[type, Callable[[Any], Any]] = {
        bool: _bool,
        int: _positive(int, allow_zero=allow_zero),
        float: _positive(float, allow_zero=allow_zero),
        timedelta: lambda v: timedelta(seconds=_positive(float, allow_zero=allow_zero)(v)),
        str: _text,
    }
    if isinstance(default, StrEnum):
        return _member(type(default), value, key)
    try:
        return converters[type(default)](value)
    except OverflowError:
        raise ConfigError(f"{key}: {value!r} is too large") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}") from exc


def _at_most(limits: Mapping[str, Any], number: Any, key: str, given: Any) -> None:
    """Enforce the field's `max`; `key` is the file's name for the setting."""
    maximum = limits.get("max")
    if maximum is None or number <= maximum:
        return
    if "bounds" in limits:
        raise ConfigError(f"{key} must be {limits['bounds']}")
    raise ConfigError(f"{key}: must be at most {maximum:g}, got {given!r}")


def _positive(kind: type[int] | type[float], *, allow_zero: bool = False) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError(f"expected a number, got {value!r}")
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise TypeError(f"expected a whole number, got {value!r}")
        number = kind(value)
        if not math.isfinite(number):
            raise ValueError(f"must be a finite number, got {value!r}")
        if number < 0 or (number == 0 and not allow_zero):
            raise ValueError(f"must be greater than 0, got {value!r}")
        return number

    return convert


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
        return value.lower() in ("1", "true", "yes")
    raise TypeError(f"expected true or false, got {value!r}")


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"expected a non-empty string, got {value!r}")
    return value


_CHANNEL_FIELDS = {f.name: f for f in fields(ChannelConfig)}
# A credential is given by reference: the environment variable or the file that holds it.
CHANNEL_KEYS = frozenset(
    key
    for name, f in _CHANNEL_FIELDS.items()
    for key in ((f"{name}_env", f"{name}_file") if f.metadata.get("secret") else (name,))
)


def _channels(raw: Any, env: Mapping[str, str]) -> tuple[ChannelConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError("channels must be an array of tables ([[channels]])")
    channels: list[ChannelConfig] = []
    for index, entry in enumerate(raw):
        where = f"channels[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table")
        channel = channel_from_entry(entry, where, env)
        if any(c.id == channel.id for c in channels):
            raise ConfigError(f"{where} (id {channel.id!r}).id is used by two channels")
        channels.append(channel)
    return tuple(channels)


def channel_from_entry(entry: dict[str, Any], where: str, env: Mapping[str, str]) -> ChannelConfig:
    """One channel from a `[[channels]]` table, or a registry row under the same names."""
    unknown = sorted(entry.keys() - CHANNEL_KEYS)
    if unknown:
        raise ConfigError(f"unknown configuration key: {where}.{unknown[0]}")
    channel_id = entry.get("id")
    if not isinstance(channel_id, str) or not channel_id:
        raise ConfigError(f"{where}.id is required")
    return _channel(entry, f"{where} (id {channel_id!r})", env)


def _channel(entry: dict[str, Any], where: str, env: Mapping[str, str]) -> ChannelConfig:
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
    api_key = _secret(entry, "api_key", where, env)
    if api_key is None:
        raise ConfigError(f"{where}: api_key_env or api_key_file is required")
    namespace, phone_number_id, waba_id, partner_channel_id, client_id = (
        _optional_text(entry, name, where)
        for name in ("namespace", "phone_number_id", "waba_id", "partner_channel_id", "client_id")
    )
    username = _secret(entry, "webhook_username", where, env)
    password = _secret(entry, "webhook_password", where, env)
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
        base_url=base_url.rstrip("/"),
        api_key=api_key,
        rate_per_second=_number(20.0, entry, "rate_per_second", where),
        namespace=namespace,
        webhook_username=username,
        webhook_password=password,
        unknown_policy=_choice(
            UnknownPolicy, entry.get("unknown_policy", "resend"), where, "unknown_policy"
        ),
        webhook_auth=webhook_auth,
        recipient_gap=_number(timedelta(0), entry, "recipient_gap", where),
        burst=_number(1.0, entry, "burst", where),
        max_in_flight=_number(1, entry, "max_in_flight", where),
        replay_share=_number(0.2, entry, "replay_share", where),
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
    number = _coerce(kind, value, f"{where}.{name}", f.metadata)
    _at_most(f.metadata, number, f"{where}.{name}", value)
    return number


def _choice(kind: type[E], value: Any, where: str, name: str) -> E:
    return _member(kind, value, f"{where}.{name}")


def _member(kind: type[E], value: Any, key: str) -> E:
    try:
        return kind(value)
    except ValueError:
        allowed = " or ".join(repr(v.value) for v in kind)
        raise ConfigError(f"{key} must be {allowed}") from None


def _secret(entry: dict[str, Any], name: str, where: str, env: Mapping[str, str]) -> Secret | None:
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


# --- value types and log settings (issue 19 §4) ---
# TOML values have types: a number written as a string (`rate_per_second = "80"`), a bool as
# "true" or a list for a number is a slip in the file, refused with its key path rather than
# guessed at. The environment has only strings: its values are converted by `_coerce` instead.
_FILE_TYPES: dict[type, tuple[tuple[type, ...], str]] = {
    bool: ((bool,), "true or false"),
    int: ((int,), "a whole number"),
    float: ((int, float), "a number"),
    timedelta: ((int, float), "a number of seconds"),
    str: ((str,), "a string"),
}


def typed_in_file(default: Any, value: Any, key: str) -> None:
    """Refuse a file's `value` unless TOML gave it the type of the setting's `default`."""
    kind = str if isinstance(default, StrEnum) else type(default)
    if kind not in _FILE_TYPES:
        return
    allowed, words = _FILE_TYPES[kind]
    if isinstance(value, allowed) and (kind is bool or not isinstance(value, bool)):
        return
    shown = f'"{value}"' if isinstance(value, str) else repr(value)
    raise ConfigError(f"{key} must be {words}, got {type(value).__name__} {shown}")


def log_choice(
    top: dict[str, Any], env: Mapping[str, str], key: str, default: str, allowed: tuple[str, ...]
) -> str:
    """`log_level` or `log_format`, from OUTBOX_<KEY> or the file, in any case; a bad value is
    named with where it came from and what is allowed."""
    variable = f"{ENV_PREFIX}{key.upper()}"
    in_file = top.pop(key, default)
    given = env.get(variable) or in_file
    source = f"{variable} ({key})" if env.get(variable) else key
    if isinstance(given, str) and given.strip().lower() in allowed:
        return given.strip().lower()
    raise ConfigError(f"{source} must be one of {', '.join(allowed)}, got {given!r}")


@dataclass(frozen=True)
class CredentialsDiff:
    """What a reload takes from fresh settings: channels whose credentials changed, with them
    applied, and the ids of channels with other changes, which wait for a restart."""

    updated: dict[str, ChannelConfig]
    needs_restart: list[str]


def credentials_diff(running: Mapping[str, ChannelConfig], fresh: Settings) -> CredentialsDiff:
    """Only API keys and webhook credentials are taken on reload; a channel that changed in
    anything else, or was added or removed, is named as needing a restart."""
    updated: dict[str, ChannelConfig] = {}
    needs_restart: list[str] = []
    for new in fresh.channels:
        old = running.get(new.id)
        if old is None:
            needs_restart.append(new.id)
            continue
        taken = replace(
            old,
            api_key=new.api_key,
            webhook_username=new.webhook_username,
            webhook_password=new.webhook_password,
        )
        if taken != new:
            needs_restart.append(new.id)  # more than its credentials changed
        if taken != old:
            updated[new.id] = taken
    needs_restart += sorted(running.keys() - {c.id for c in fresh.channels})
    return CredentialsDiff(updated, needs_restart)
