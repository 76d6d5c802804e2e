"""Settings: a TOML file plus `OUTBOX_*` environment overrides, validated at start-up.

Secrets are given by reference (an environment variable or a file) and held in `Secret`, whose
repr never shows the value, so a settings object can be logged or printed safely.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from outbox.domain.models import Dialect
from outbox.domain.ratelimit import Limits
from outbox.errors import ConfigError

ENV_PREFIX = "OUTBOX_"


class Secret:
    """A credential that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


SEND_SLACK = 0.05  # seconds from a claim to its requests' arrival that the limit allows for


class UnknownPolicy(StrEnum):
    """What happens to an `unknown` row once its quiet period passes with no evidence."""

    RESEND = "resend"  # send it once more (a duplicate is possible; the README says when)
    HOLD = "hold"  # leave it for an operator (`outbox replay`)


@dataclass(frozen=True)
class ChannelConfig:
    id: str
    dialect: Dialect
    base_url: str
    api_key: Secret
    rate_per_second: float = 20.0
    namespace: str | None = None
    webhook_username: Secret | None = None
    webhook_password: Secret | None = None
    unknown_policy: UnknownPolicy = UnknownPolicy.RESEND
    # Least time between two messages to one recipient (pair pacing); zero: no pacing.
    recipient_gap: timedelta = timedelta(0)
    burst: float | None = None  # tokens the shared bucket holds; default a tenth of the rate
    max_in_flight: int | None = None  # requests in flight per process; default: sender's
    replay_share: float = 0.2  # share of the rate replayed rows get while live rows wait

    def limits(self) -> Limits:
        """The bucket behind `rate_per_second` and `burst`.

        Tokens are taken at claim time; the requests reach the API a few milliseconds later and
        can bunch up on the way. The bucket holds back SEND_SLACK worth of tokens from the
        burst, so that any one second at the API stays within rate + burst.
        """
        burst = self.burst or max(1.0, self.rate_per_second / 10)
        return Limits(
            self.rate_per_second,
            max(1.0, burst - self.rate_per_second * SEND_SLACK),
            replay_share=self.replay_share,
        )


@dataclass(frozen=True)
class HttpConfig:
    host: str = "0.0.0.0"
    port: int = 8080


@dataclass(frozen=True)
class SenderConfig:
    batch_size: int = 200
    max_in_flight: int = 200
    poll_interval: timedelta = timedelta(seconds=5)
    lease: timedelta = timedelta(minutes=2)
    request_timeout: timedelta = timedelta(seconds=30)
    shutdown_grace: timedelta = timedelta(seconds=20)
    flush_interval: timedelta = timedelta(milliseconds=20)
    max_attempts: int = 8
    backoff_base: timedelta = timedelta(seconds=2)
    backoff_cap: timedelta = timedelta(minutes=5)
    # Free-form is sent only while now < last inbound + 24 h - window_margin.
    window_margin: timedelta = timedelta(minutes=5)
    # An `unknown` row waits this long for a status webhook before its channel's policy applies.
    unknown_quiet: timedelta = timedelta(minutes=5)
    # Server errors in a row that pause a channel; a paused channel waits breaker_cooldown
    # (doubling per failed probe, up to breaker_cooldown_max) before one probe request.
    breaker_threshold: int = 20
    breaker_cooldown: timedelta = timedelta(seconds=30)
    breaker_cooldown_max: timedelta = timedelta(minutes=10)
    # Rows naming a channel no replica is configured for fail after this long.
    unknown_channel_grace: timedelta = timedelta(seconds=5)
    maintenance_interval: timedelta = timedelta(seconds=1)


@dataclass(frozen=True)
class ReconcilerConfig:
    batch_size: int = 500  # webhook rows per transaction
    poll_interval: timedelta = timedelta(seconds=1)  # NOTIFY wakes it sooner
    # A status naming no known message is tried again for this long, then counted an orphan.
    orphan_horizon: timedelta = timedelta(minutes=15)


@dataclass(frozen=True)
class MetricsConfig:
    # Gauges read from the database (backlog, lag, missing delivery reports) are refreshed this
    # often by every process serving /metrics, never per scrape.
    sample_interval: timedelta = timedelta(seconds=15)
    # An accepted row with no delivery report after this long counts as "DLR missing" ...
    dlr_missing_after: timedelta = timedelta(hours=24)
    # ... if it was accepted within this period (older ones have stopped being news).
    dlr_lookback: timedelta = timedelta(days=7)


@dataclass(frozen=True)
class Settings:
    database_url: str = field(repr=False)  # may hold a password
    channels: tuple[ChannelConfig, ...]
    http: HttpConfig = field(default_factory=HttpConfig)
    sender: SenderConfig = field(default_factory=SenderConfig)
    reconciler: ReconcilerConfig = field(default_factory=ReconcilerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log_level: str = "info"
    log_format: str = "auto"  # auto: JSON unless stderr is a terminal

    def channel(self, channel_id: str) -> ChannelConfig | None:
        return next((c for c in self.channels if c.id == channel_id), None)


_LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS = ("auto", "json", "console")


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
    channels_raw = top.pop("channels", [])
    database_url = _top_level(top, env, "database_url", None)
    log_level = _top_level(top, env, "log_level", "info")
    log_format = _top_level(top, env, "log_format", "auto")
    if top:
        raise ConfigError(f"unknown configuration key: {sorted(top)[0]}")
    if not isinstance(database_url, str) or not database_url:
        raise ConfigError("database_url is required (or set OUTBOX_DATABASE_URL)")
    validate_database_url(database_url)
    if log_level not in _LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(_LOG_LEVELS)}")
    if log_format not in _LOG_FORMATS:
        raise ConfigError(f"log_format must be one of {', '.join(_LOG_FORMATS)}")
    channels = _channels(channels_raw, env)
    if need_channels and not channels:
        raise ConfigError("channels: at least one [[channels]] entry is required")
    return Settings(
        database_url=database_url,
        channels=channels,
        http=_dataclass_from(HttpConfig, http, "http", env),
        sender=_dataclass_from(SenderConfig, sender, "sender", env),
        reconciler=_dataclass_from(ReconcilerConfig, reconciler, "reconciler", env),
        metrics=_dataclass_from(MetricsConfig, metrics, "metrics", env),
        log_level=log_level,
        log_format=log_format,
    )


def _top_level(top: dict[str, Any], env: Mapping[str, str], key: str, default: Any) -> Any:
    """Take `key` out of the file's top level; OUTBOX_<KEY> wins over it."""
    in_file = top.pop(key, default)
    return env.get(f"{ENV_PREFIX}{key.upper()}") or in_file


def validate_database_url(url: str) -> None:
    scheme = urlsplit(url).scheme
    if scheme not in ("postgresql", "postgres"):
        raise ConfigError(
            "database_url must be a libpq URL starting with postgresql:// "
            f"(got a {scheme or 'schemeless'} URL)"
        )


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
            kwargs[name] = _coerce(f.default, env[env_name], env_name)
        elif name in values:
            kwargs[name] = _coerce(f.default, values[name], f"{section}.{name}")
    if not 0 <= kwargs.get("port", 0) <= 65535:
        raise ConfigError(f"{section}.port must be between 0 (any free port) and 65535")
    return cls(**kwargs)


def _coerce(default: Any, value: Any, key: str) -> Any:
    """Convert `value` to the type of `default`; durations are given in seconds."""
    converters: dict[type, Callable[[Any], Any]] = {
        bool: _bool,
        int: _positive(int, allow_zero=key.lower().endswith("port")),
        float: _positive(float),
        timedelta: lambda v: timedelta(
            seconds=_positive(float, allow_zero=key.lower().endswith(("margin", "gap")))(v)
        ),
        str: _text,
    }
    try:
        return converters[type(default)](value)
    except OverflowError:
        raise ConfigError(f"{key}: {value!r} is too large") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}") from exc


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


_CHANNEL_KEYS = frozenset(
    {
        "id",
        "dialect",
        "base_url",
        "api_key_env",
        "api_key_file",
        "rate_per_second",
        "namespace",
        "webhook_username_env",
        "webhook_username_file",
        "webhook_password_env",
        "webhook_password_file",
        "unknown_policy",
        "recipient_gap",
        "burst",
        "max_in_flight",
        "replay_share",
    }
)


def _channels(raw: Any, env: Mapping[str, str]) -> tuple[ChannelConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError("channels must be an array of tables ([[channels]])")
    channels: list[ChannelConfig] = []
    for index, entry in enumerate(raw):
        where = f"channels[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table")
        unknown = sorted(entry.keys() - _CHANNEL_KEYS)
        if unknown:
            raise ConfigError(f"unknown configuration key: {where}.{unknown[0]}")
        channel_id = entry.get("id")
        if not isinstance(channel_id, str) or not channel_id:
            raise ConfigError(f"{where}.id is required")
        where = f"channels[{index}] (id {channel_id!r})"
        if any(c.id == channel_id for c in channels):
            raise ConfigError(f"{where}.id is used by two channels")
        channels.append(_channel(entry, where, env))
    return tuple(channels)


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
    api_key = _secret(entry, "api_key", where, env)
    if api_key is None:
        raise ConfigError(f"{where}: api_key_env or api_key_file is required")
    namespace = entry.get("namespace")
    if namespace is not None and (not isinstance(namespace, str) or not namespace):
        raise ConfigError(f"{where}.namespace must be a non-empty string")
    username = _secret(entry, "webhook_username", where, env)
    password = _secret(entry, "webhook_password", where, env)
    if (username is None) != (password is None):
        raise ConfigError(f"{where}: webhook_username_* and webhook_password_* go together")
    return ChannelConfig(
        id=entry["id"],
        dialect=dialect,
        base_url=base_url.rstrip("/"),
        api_key=api_key,
        rate_per_second=_coerce(
            20.0, entry.get("rate_per_second", 20.0), f"{where}.rate_per_second"
        ),
        namespace=namespace,
        webhook_username=username,
        webhook_password=password,
        unknown_policy=_choice(UnknownPolicy, entry.get("unknown_policy", "resend"), where),
        recipient_gap=_coerce(
            timedelta(0), entry.get("recipient_gap", 0), f"{where}.recipient_gap"
        ),
        burst=_optional(1.0, entry.get("burst"), f"{where}.burst"),
        max_in_flight=_optional(1, entry.get("max_in_flight"), f"{where}.max_in_flight"),
        replay_share=_share(entry.get("replay_share", 0.2), f"{where}.replay_share"),
    )


def _share(value: Any, key: str) -> float:
    share: float = _coerce(0.2, value, key)
    if share > 1:
        raise ConfigError(f"{key}: must be at most 1, got {value!r}")
    return share


def _optional(kind: Any, value: Any, key: str) -> Any:
    return None if value is None else _coerce(kind, value, key)


def _choice(kind: type[UnknownPolicy], value: Any, where: str) -> UnknownPolicy:
    try:
        return kind(value)
    except ValueError:
        allowed = " or ".join(repr(v.value) for v in kind)
        raise ConfigError(f"{where}.unknown_policy must be {allowed}") from None


def _secret(entry: dict[str, Any], name: str, where: str, env: Mapping[str, str]) -> Secret | None:
    var, file = entry.get(f"{name}_env"), entry.get(f"{name}_file")
    if var is not None and file is not None:
        raise ConfigError(f"{where}: give {name}_env or {name}_file, not both")
    if var is not None:
        if not isinstance(var, str) or not var:
            raise ConfigError(f"{where}.{name}_env must name an environment variable")
        value = env.get(var, "")
        if not value:
            raise ConfigError(f"{where}: environment variable {var} ({name}_env) is not set")
        return Secret(value)
    if file is not None:
        try:
            value = Path(str(file)).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {name}_file {file}: {exc.strerror}") from exc
        if not value:
            raise ConfigError(f"{where}: {name}_file {file} is empty")
        return Secret(value)
    return None
