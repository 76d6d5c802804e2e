"""The guarded jsonb decoder: what PostgreSQL prints, read exactly or refused with a reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

from outbox.db.jsonb import MAX_DEPTH, Unreadable, decode, reason

# jsonb prints numbers without exponents: '1e400'::jsonb::text is a 1 and 400 zeros.
READ: dict[str, tuple[str, Any]] = {
    "object": ('{"type": "text", "text": {"body": "x"}}', {"type": "text", "text": {"body": "x"}}),
    "largest-unsigned-64": ("[18446744073709551615]", [2**64 - 1]),
    "smallest-signed-64": ("[-9223372036854775808]", [-(2**63)]),
    "long-digits-in-a-string": (
        '{"a": "123456789012345678901234"}',
        {"a": "123456789012345678901234"},
    ),
    "float": ("[1.5, -0.25]", [1.5, -0.25]),
    "zero": ("[0.000]", [0.0]),
    "nesting-at-the-limit": (
        "[" * MAX_DEPTH + "]" * MAX_DEPTH,
        json.loads("[" * MAX_DEPTH + "]" * MAX_DEPTH),
    ),
    "brackets-in-strings": (json.dumps({"a": "[" * 500}), {"a": "[" * 500}),
}

REFUSED: dict[str, tuple[str, str]] = {
    "1e400": ("[1" + "0" * 400 + "]", "64-bit"),
    "2^64": ("[18446744073709551616]", "64-bit"),
    "below-signed-64": ("[-9223372036854775809]", "64-bit"),
    "5000-digits": ("[" + "9" * 5000 + "]", "5000 characters"),
    "1e-400": ("[0." + "0" * 399 + "1]", "does not fit a double"),
    "big-fraction": ("[1" + "0" * 400 + ".5]", "does not fit a double"),
    "one-level-too-deep": ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nested deeper"),
    "deeper-than-orjson": ("[" * 1100 + "]" * 1100, "nested deeper"),
    # The exact path's own recursion limit: a long number sends the document there.
    "deeper-than-the-stdlib": (
        '{"d": ' + "[" * 5000 + "]" * 5000 + ', "n": 1' + "0" * 30 + "}",
        "nested deeper",
    ),
}


@pytest.mark.parametrize("case", READ)
def test_read_exactly(case: str) -> None:
    document, expected = READ[case]
    value = decode(document)
    assert reason(value) is None
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize("case", REFUSED)
def test_refused_with_a_reason_and_the_text_kept(case: str) -> None:
    document, why = REFUSED[case]
    value = decode(document)
    assert isinstance(value, Unreadable)
    assert value == document
    assert why in (reason(value) or "")
    assert len(value.reason) < 200
