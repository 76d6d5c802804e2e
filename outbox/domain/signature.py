"""360dialog's partner-webhook signature: `x-360dialog-signature`, the hex HMAC-SHA256 of the raw
body keyed with the partner's platform secret (waba-2026.md §1.8).

Public code disagrees on the spelling (bare hex in most clients, `sha256=<hex>` in one), so both
spellings of the same digest are accepted; hex case does not matter. The comparison is constant
time (`hmac.compare_digest`) whatever the header holds, so timing tells an attacker nothing.
"""

from __future__ import annotations

import hashlib
import hmac
from enum import StrEnum

HEADER = "x-360dialog-signature"
_PREFIX = "sha256="
_HEX = frozenset("0123456789abcdef")
_DIGEST_HEX = hashlib.sha256().digest_size * 2


class Verdict(StrEnum):
    """What a signature check found; everything but VALID is refused (401) and counted."""

    VALID = "valid"
    MISSING = "missing"  # no header, or an empty one
    MALFORMED = "malformed"  # not 64 hex digits, with or without the prefix
    WRONG = "wrong"  # well formed, but not this body's digest under our secret


def sign(secret: bytes, body: bytes) -> str:
    """The header value 360dialog sends for `body`: bare lower-case hex."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str | None) -> Verdict:
    """Check `header` against the digest of `body` exactly as received (never re-serialised)."""
    if header is None or not header.strip():
        return Verdict.MISSING
    given = header.strip().lower()
    given = given.removeprefix(_PREFIX)
    if len(given) != _DIGEST_HEX or not _HEX.issuperset(given):
        return Verdict.MALFORMED
    expected = sign(secret, body)
    if hmac.compare_digest(given.encode("ascii"), expected.encode("ascii")):
        return Verdict.VALID
    return Verdict.WRONG
