"""Reading values out of untrusted JSON: error codes, non-empty strings, phone numbers.

The API's answers and its webhook bodies are parsed by different modules with different
tolerances; the tolerances are parameters here, so each reading is written once.
"""

from __future__ import annotations

import re

_CODE = re.compile(r"[0-9]{1,9}")
_WHITESPACE = re.compile(r"\s")
# A lone surrogate: Python strings may hold one (from `\\ud800` in JSON), UTF-8 cannot.
_SURROGATE = re.compile("[\ud800-\udfff]")


def error_code(value: object, *, below: int | None = None) -> int | None:
    """An API error code: an integer, or one to nine digits in a string (spaces around them
    allowed). A bool is not a number. With `below`, integers outside [0, below) are refused."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and _CODE.fullmatch(value.strip()):
        return int(value)
    if isinstance(value, int) and (below is None or 0 <= value < below):
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
