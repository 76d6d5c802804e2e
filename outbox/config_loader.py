"""Loading the settings: a TOML file plus `OUTBOX_*` environment overrides and secret files,
validated at start-up. The values' type checks are in outbox.config_values, the channel entries
in outbox.config_channels, what a reload may take in outbox.config_reload.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from outbox.config import (
    DatabaseConfig,
    HttpConfig,
    MetricsConfig,
    ReconcilerConfig,
    RegistryConfig,
    SenderConfig,
    Settings,
)
from outbox.config_channels import channels_in_file
from outbox.config_checks import check_database_url, database_url_from_file
from outbox.config_edge import checked_http
from outbox.config_values import check_at_most, coerced, typed_in_file
from outbox.errors import ConfigError

ENV_PREFIX = "OUTBOX_"

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")


def load_settings(
    path: Path | None,
    environ: Mapping[str, str] | None = None,
    *,
    need_channels: bool = True,
    api_keys: bool = True,
) -> Settings:
    """Read `path` (may be None), apply overrides from `environ`, validate everything.

    Without `api_keys` (a process with no sender role, issue 19) no API key is read: not the
    channels' (they hold `WITHHELD_KEY`) nor the Partner API's (`partner` is None)."""
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
    http = toml_table(top.pop("http", {}), "http")
    sender = toml_table(top.pop("sender", {}), "sender")
    reconciler = toml_table(top.pop("reconciler", {}), "reconciler")
    metrics = toml_table(top.pop("metrics", {}), "metrics")
    database = toml_table(top.pop("database", {}), "database")
    registry = toml_table(top.pop("registry", {}), "registry")
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
    channels = channels_in_file(channels_raw, env, api_keys=api_keys)
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

    partner, partner_webhook_secret = load_partner(partner_raw, env, api_key=api_keys)
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


def toml_table(value: Any, name: str) -> dict[str, Any]:
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
        kwargs[name] = coerced(f.default, given, key, f.metadata)
        check_at_most(f.metadata, kwargs[name], f"{section}.{name}", given)
    return cls(**kwargs)


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
