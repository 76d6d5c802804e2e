"""Who a user is: a phone number (`wa_id`), a business-scoped user id (BSUID), or both.

Since April 2026 WhatsApp names users by a BSUID as well (`US.13491208655302741918`: an ISO
country code, a dot, up to 128 letters and digits), and since mid-2026 a user with a username
may come with no phone number at all (waba-2026.md §1.9). A BSUID is kept exactly as written
(case matters). A parent id (`US.ENT.…`, shared across linked portfolios) names no one user to
send to and is never taken as one.

The key a row is ordered, paced and windowed by (`messages.wa_id`) is `recipient_key`; the SQL
function `outbox.recipient_key` (migration 0015) spells the same rule, and the test
tests/integration/test_recipient_spelling.py holds them together.
"""

from __future__ import annotations

import re

# Two letters and a dot mark a BSUID, whatever follows: such a recipient is never read as a
# phone number (whose digits would be the id's, and another user's).
BSUID_PREFIX = re.compile(r"[A-Za-z]{2}\.")
BSUID = re.compile(r"[A-Za-z]{2}\.[A-Za-z0-9]{1,128}")
# The same prefix test as BSUID_PREFIX, in PostgreSQL's regular expressions.
SQL_BSUID_PREFIX = r"^[A-Za-z]{2}\."
# The rest of a recipient's key in SQL: every character but the ASCII digits removed.
SQL_DIGITS = r"regexp_replace({}, '[^0-9]', '', 'g')"


def looks_like_bsuid(recipient: str) -> bool:
    """Whether `recipient` is spelt as a BSUID (valid or not): it is never a phone number."""
    return BSUID_PREFIX.match(recipient) is not None


def bsuid(value: object) -> str | None:
    """A BSUID from untrusted JSON, as written; None for anything else (parents included)."""
    return value if isinstance(value, str) and BSUID.fullmatch(value) else None
