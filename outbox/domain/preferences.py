"""A user's marketing opt-out or opt-in, as recorded from a 131050 answer or status, or from a
`user_preferences` webhook: the record a later consent ledger builds on."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# As Meta names the category in `user_preferences` (the only kind of opt-out it reports): a
# 131050 answer records under the same name, so a later resume clears it.
MARKETING_MESSAGES = "marketing_messages"
SOURCE_131050 = "131050"
SOURCE_USER_PREFERENCES = "user_preferences"
EVIDENCE_LIMIT = 4000  # bytes of evidence JSON kept (the column allows 4096)


@dataclass(frozen=True, slots=True)
class Preference:
    channel: str
    identity: str  # a wa_id (digits) or a BSUID
    category: str
    opted_out: bool
    at: datetime
    source: str
    evidence: Any = None  # what told us: the error, the webhook's item; capped when stored


def capped(evidence: Any) -> Any:
    """`evidence` itself when its JSON fits the limit, else a note and the JSON's start."""
    # ASCII only, so characters are bytes; a third leaves room for the escapes PostgreSQL's
    # rendering of the string adds (each at most doubles a character).
    encoded = json.dumps(evidence, default=str)
    if len(encoded) <= EVIDENCE_LIMIT:
        return evidence
    return {"truncated": True, "start": encoded[: EVIDENCE_LIMIT // 3]}


def opt_out_from_failure(channel: str, identity: str, at: datetime, evidence: Any) -> Preference:
    """A 131050 ("the user stopped marketing messages"), answered or as a failed status."""
    return Preference(channel, identity, MARKETING_MESSAGES, True, at, SOURCE_131050, evidence)
