"""The type checks and conversions a setting's value goes through, from the file or the
environment: TOML types refused rather than guessed at, numbers within their field's limits,
members of an enum.

Each number's limits come from its field's metadata in outbox.config, so a new setting states
its own limits where it is declared.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import timedelta
from enum import StrEnum
from typing import Any, TypeVar

from outbox.errors import ConfigError

E = TypeVar("E", bound=StrEnum)


def coerced(default: Any, value: Any, key: str, limits: Mapping[str, Any]) -> Any:
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
        return member_of(type(default), value, key)
    try:
        return converters[type(default)](value)
    except OverflowError:
        raise ConfigError(f"{key}: {value!r} is too large") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}") from exc


def check_at_most(limits: Mapping[str, Any], number: Any, key: str, given: Any) -> None:
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
            least = "at least 0" if allow_zero else "greater than 0"
            raise ValueError(f"must be {least}, got {value!r}")
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


def member_of(kind: type[E], value: Any, key: str) -> E:
    try:
        return kind(value)
    except ValueError:
        allowed = " or ".join(repr(v.value) for v in kind)
        raise ConfigError(f"{key} must be {allowed}") from None


# --- value types and log settings (issue 19 §4) ---
# TOML values have types: a number written as a string (`rate_per_second = "80"`), a bool as
# "true" or a list for a number is a slip in the file, refused with its key path rather than
# guessed at. The environment has only strings: its values are converted by `coerced` instead.
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
