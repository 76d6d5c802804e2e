"""Every jsonb value the daemon reads, decoded by one guarded decoder.

`jsonb` accepts what producers write in SQL: numbers of any size, nesting of any depth. orjson
refuses numbers beyond a double and nesting deeper than 1,024, and silently turns integers
beyond 64 bits into floats. A decoder that raises inside the driver fails the whole statement,
so one producer row would stop every claim (and `outbox show`) for good. Here a document that
cannot be read faithfully decodes to `Unreadable`: its text as PostgreSQL printed it, with the
reason, and the row that holds it fails on its own.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

# The range orjson both reads as an integer and writes back: a wider integer would be rounded
# to a float on the way in, or refused by the request's serialiser on the way out.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
# 19 digits or more in a row: a number that may be out of that range (or a long string of
# digits, which the exact path reads just as well). jsonb prints numbers without exponents.
_LONG_DIGITS = re.compile(r"[0-9]{19,}")
# No WhatsApp message nests more than a few levels; the request's serialiser stops at 254.
MAX_DEPTH = 128
_TOO_DEEP = f"it is nested deeper than {MAX_DEPTH} levels"
_SHOWN = 24  # characters of an offending number quoted in a reason


class Unreadable(str):
    """A jsonb document that cannot be decoded faithfully: its text, and why."""

    reason: str

    def __new__(cls, document: str, reason: str) -> Unreadable:
        value = super().__new__(cls, document)
        value.reason = reason
        return value


class _Refused(ValueError):
    pass


def _quoted(number: str) -> str:
    return number if len(number) <= _SHOWN else f"{number[:_SHOWN]}… ({len(number)} characters)"


def _integer(number: str) -> int:
    digits = number.lstrip("-")
    # Checked on length first: int() refuses strings over 4,300 digits with its own error.
    value = int(number) if len(digits) <= 20 else None
    if value is None or not _INT_MIN <= value <= _INT_MAX:
        raise _Refused(
            f"the number {_quoted(number)} is beyond the 64-bit integers a request can carry "
            "exactly (write it as a string)"
        )
    return value


def _float(number: str) -> float:
    value = float(number)
    underflow = value == 0.0 and any(c in "123456789" for c in number)
    if not math.isfinite(value) or underflow:
        raise _Refused(f"the number {_quoted(number)} does not fit a double (write it as a string)")
    return value


def _exact(document: str) -> Any:
    try:
        return json.loads(document, parse_int=_integer, parse_float=_float)
    except _Refused as exc:
        return Unreadable(document, str(exc))
    except RecursionError:
        return Unreadable(document, _TOO_DEEP)
    except ValueError as exc:  # not expected from PostgreSQL's own output, but never fatal
        return Unreadable(document, f"it is not JSON the decoder reads ({exc})")


def decode(document: str) -> Any:
    """The value of a jsonb document as text, or `Unreadable`; never raises."""
    try:
        value = orjson.loads(document)
    except orjson.JSONDecodeError:
        value = _exact(document)
    else:
        # orjson read it, but a long number may have become a float on the way.
        if _LONG_DIGITS.search(document):
            value = _exact(document)
    # Counting brackets is cheap and bounds the depth from above (some may be in strings).
    brackets = document.count("[") + document.count("{")
    if not isinstance(value, Unreadable) and brackets > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        return Unreadable(document, _TOO_DEEP)
    return value


def _depth(value: Any) -> int:
    """How deep arrays and objects nest in `value`, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in children)
    return deepest


def reason(value: object) -> str | None:
    """Why `value` could not be decoded, or None when it was."""
    return value.reason if isinstance(value, Unreadable) else None
