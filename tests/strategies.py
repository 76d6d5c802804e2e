"""Hypothesis strategies for hostile outside data: producer rows, API answers, webhook bodies.

JSON is generated as *text*, so that it can hold what Python's `json` never writes but
PostgreSQL's jsonb stores and other parsers refuse: integers beyond 64 bits, exponents beyond a
double, nesting deeper than 1,024.
"""

from __future__ import annotations

import string
from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import strategies as st

# PostgreSQL stores neither NUL nor lone surrogates in `text`: a producer cannot write them.
STORABLE_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
# Webhook bodies and API answers come from outside: any code point JSON can escape.
ANY_TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
ASCII = st.text(string.printable.strip() + " ", max_size=30)

# Every Unicode space and separator a phone number may carry (item 9 of issue 14).
SPACES = [chr(c) for c in range(0x110000) if chr(c).isspace()] + ["\u200b", "\ufeff", "\u2060"]


def json_text(value: Any) -> str:
    """`value` as JSON; a `Raw` inside is written as its text, unquoted."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, list):
        return "[" + ",".join(json_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json_text(k)}:{json_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # any size: orjson refuses integers beyond 64 bits
    return orjson.dumps(value).decode()


class Raw:
    """A JSON token written verbatim (a number no double holds, a deep nest)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text!r})"


def numbers(*, beyond_doubles: bool) -> st.SearchStrategy[Any]:
    small = st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    if not beyond_doubles:
        return small
    huge = st.integers(2**64, 10**400).map(lambda n: Raw(str(n)))
    exponents = st.sampled_from(["1e400", "-1e400", "1e-400", "123456789e999"]).map(Raw)
    return small | huge | exponents


def json_values(
    text: st.SearchStrategy[str], *, beyond_doubles: bool, max_leaves: int = 12
) -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | numbers(beyond_doubles=beyond_doubles) | text
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
        max_leaves=max_leaves,
    )


def nested(depth: st.SearchStrategy[int]) -> st.SearchStrategy[Raw]:
    return depth.map(lambda d: Raw("[" * d + "]" * d))


def text_message(text: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"type": st.just("text"), "text": st.fixed_dictionaries({"body": text})}
    )


def template_message(text: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    name = st.sampled_from(["otp", "order_update"]) | text
    language = st.fixed_dictionaries({"code": st.sampled_from(["en", "de"]) | text})
    return st.fixed_dictionaries(
        {
            "type": st.just("template"),
            "template": st.fixed_dictionaries({"name": name, "language": language}),
        }
    )


def recipients() -> st.SearchStrategy[str]:
    """Phone numbers with any spacing, and any text at all."""
    digits = st.text("0123456789", min_size=5, max_size=17)
    noise = st.sampled_from(["+", "-", ".", "(", ")", " ", *SPACES])
    spaced = st.lists(digits | noise, min_size=1, max_size=6).map("".join)
    return spaced | STORABLE_TEXT


def times() -> st.SearchStrategy[datetime | None]:
    return st.none() | st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    )


def statuses(text: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    """One WhatsApp status notification, every field hostile."""
    error = st.fixed_dictionaries({"code": st.integers() | text, "title": text})
    return st.fixed_dictionaries(
        {
            "id": text,
            "status": st.sampled_from(["sent", "delivered", "read", "failed", "deleted"]) | text,
            "timestamp": text | st.integers(),
            "recipient_id": text,
        },
        optional={
            "biz_opaque_callback_data": st.integers(0, 2**70).map("outbox:{}".format) | text,
            "errors": st.lists(error, max_size=2),
        },
    )


def webhook_bodies(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """Status notifications in both dialects' shapes, in any number, and any JSON at all."""
    many = st.tuples(statuses(text), st.integers(0, 500)).map(lambda s: [s[0]] * s[1])
    listed = st.lists(statuses(text), max_size=20) | many
    cloud = listed.map(
        lambda ss: {
            "object": "whatsapp_business_account",
            "entry": [{"id": "1", "changes": [{"field": "messages", "value": {"statuses": ss}}]}],
        }
    )
    onprem = listed.map(lambda ss: {"statuses": ss})
    anything = json_values(text, beyond_doubles=True) | nested(st.integers(0, 3000))
    return cloud | onprem | anything
