"""x-360dialog-signature: both spellings of the digest, and every way a header can be wrong."""

from __future__ import annotations

import hashlib
import hmac
from unittest import mock

import pytest

from outbox.domain import signature
from outbox.domain.signature import Verdict

SECRET = b"platform-secret"
BODY = b'{"object":"whatsapp_business_account","entry":[]}'
DIGEST = hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("header", "verdict"),
    [
        (DIGEST, Verdict.VALID),
        (f"sha256={DIGEST}", Verdict.VALID),
        (DIGEST.upper(), Verdict.VALID),
        (f"SHA256={DIGEST}", Verdict.VALID),
        (f"  {DIGEST} ", Verdict.VALID),
        (None, Verdict.MISSING),
        ("", Verdict.MISSING),
        ("   ", Verdict.MISSING),
        ("sha256=", Verdict.MALFORMED),
        (DIGEST[:-1], Verdict.MALFORMED),
        (DIGEST + "0", Verdict.MALFORMED),
        ("z" * 64, Verdict.MALFORMED),
        (f"sha1={DIGEST}", Verdict.MALFORMED),
        ("ü" * 64, Verdict.MALFORMED),
        ("0" * 64, Verdict.WRONG),
        (hmac.new(b"other", BODY, hashlib.sha256).hexdigest(), Verdict.WRONG),
        (hmac.new(SECRET, BODY + b" ", hashlib.sha256).hexdigest(), Verdict.WRONG),
    ],
)
def test_verify(header: str | None, verdict: Verdict) -> None:
    assert signature.verify(SECRET, BODY, header) is verdict


def test_sign_is_bare_lower_hex_of_the_raw_body() -> None:
    assert signature.sign(SECRET, BODY) == DIGEST


def test_the_comparison_is_constant_time() -> None:
    with mock.patch(
        "outbox.domain.signature.hmac.compare_digest", wraps=hmac.compare_digest
    ) as spy:
        assert signature.verify(SECRET, BODY, "f" * 64) is Verdict.WRONG
        assert signature.verify(SECRET, BODY, DIGEST) is Verdict.VALID
    assert spy.call_count == 2
