"""Reading values out of untrusted JSON: error codes, non-empty strings, phone numbers.

The API's answers and its webhook bodies are parsed by different modules with different
tolerances; the tolerances are parameters here, so each reading is written once.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

_CODE = re.compile(r"[0-9]{1,9}")
# Integer codes are held to what a string may spell (nine digits): no API code is negative or
# longer, and a bounded one can never hit Python's int-to-str digit limit downstream.
CODE_LIMIT = 10**9
_WHITESPACE = re.compile(r"\s")
_UNIX_DIGITS = re.compile(r"[0-9]{1,20}")
_MAX_TIMESTAMP = 253402300799  # 9999-12-31T23:59:59Z, the last second `datetime` can hold
# A lone surrogate: Python strings may hold one (from `\\ud800` in JSON), UTF-8 cannot.
_SURROGATE = re.compile("[\ud800-\udfff]")


def error_code(value: object, *, below: int = CODE_LIMIT) -> int | None:
    """An API error code: an integer in [0, below), or one to nine digits in a string (spaces
    around them allowed). A bool is not a number; anything else is no code at all."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and _CODE.fullmatch(value.strip()):
        return int(value)
    if isinstance(value, int) and 0 <= value < below:
        return value
    return None


def text(value: object, limit: int | None = None, *, strip: bool = True) -> str | None:
    """A non-empty string (after stripping, unless `strip` is off), cut to `limit` characters."""
    if not isinstance(value, str):
        return None
    if strip:
        value = value.strip()
    return (value if limit is None else value[:limit]) or None


def storable(value: str, limit: int) -> str:
    """`value` as a PostgreSQL `text` column takes it, cut to `limit` characters: NUL removed
    (no text value may hold one, and one refused value fails its whole statement) and lone
    surrogates replaced by U+FFFD (they cannot be encoded to send)."""
    return _SURROGATE.sub("\ufffd", value.replace("\x00", ""))[:limit]


def phone_number(
    raw: str, digits: re.Pattern[str], noise: re.Pattern[str] = _WHITESPACE
) -> str | None:
    """`raw` as digits only, `noise` characters anywhere and one leading '+' dropped; None
    unless the rest matches `digits` in full."""
    compact = noise.sub("", raw).removeprefix("+")
    return compact if digits.fullmatch(compact) else None


def unix_time(value: object) -> datetime | None:
    """Unix seconds as an integer or a string of digits (webhooks use both), as UTC time."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and _UNIX_DIGITS.fullmatch(value.strip()):
        value = int(value)
    if not isinstance(value, int) or not 0 <= value <= _MAX_TIMESTAMP:
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):  # platform limits narrower than the bound above
        return None
