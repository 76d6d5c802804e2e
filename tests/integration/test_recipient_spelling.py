"""One normalisation of recipients: the generated `wa_id` column agrees with Python's digits.

Order per recipient, pacing and the 24-hour window are keyed by `wa_id`; the request goes to
`normalise_recipient`'s digits. For every valid recipient the two must be the same string,
whatever Unicode space separates its digits (numbers copied from spreadsheets and web pages
carry non-breaking and thin spaces).
"""

from __future__ import annotations

import random
import sys
import unicodedata
from datetime import timedelta

from outbox.domain.identity import BSUID
from outbox.domain.request import InvalidMessage, normalise_recipient
from outbox.sandbox import Sandbox
from tests.support import drain, fetch, insert, row, set_last_inbound, settings_for

SPACES = sorted(
    c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace() or unicodedata.category(c) == "Zs"
)
NOISE = [*SPACES, "-", "(", ")", "."]


async def test_wa_id_is_the_digits_python_sends_to_for_every_space_character(db_url: str) -> None:
    assert len(SPACES) >= 29  # the str.isspace set and the Zs category
    spellings = [f"+49{c}151{c}(1234){c}5678" for c in NOISE] + [
        f"{c}4915112345678{c}" for c in NOISE
    ]
    rows = await fetch(
        db_url,
        "INSERT INTO outbox.messages (channel, recipient, payload) "
        "SELECT 'c', r, '{}'::jsonb FROM unnest($1::text[]) AS r RETURNING recipient, wa_id",
        spellings,
    )
    disagree = {
        f"U+{ord(r['recipient'][3]):04X}": (r["wa_id"], normalise_recipient(r["recipient"]))
        for r in rows
        if r["wa_id"] != normalise_recipient(r["recipient"])
    }
    assert disagree == {}
    assert {r["wa_id"] for r in rows} == {"4915112345678"}


async def test_a_reply_to_a_number_written_with_non_breaking_spaces_finds_its_window(
    db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    api, base_url = sandbox
    await set_last_inbound(db_url, "cloud", "4915112345678", timedelta(minutes=1))
    nbsp = await insert(
        db_url,
        "cloud",
        "+49\u00a0151\u00a012345678",
        {"type": "text", "text": {"body": "hi"}},
        inbound_ago=None,
    )
    await drain(settings_for(db_url, base_url))
    done = await row(db_url, nbsp)
    assert (done["state"], done["error_code"]) == ("accepted", None)
    assert [r.body["to"] for r in api.message_requests()] == ["4915112345678"]


async def test_wa_id_is_the_key_python_uses_for_bsuid_spellings(db_url: str) -> None:
    spellings = [
        "US.13491208655302741918",
        "us.abcDEF123",
        "DE.X",
        "US." + "9" * 128,
        "US.ENT.5068",
        "US.12-34",
    ]
    rows = await fetch(
        db_url,
        "INSERT INTO outbox.messages (channel, recipient, payload) "
        "SELECT 'c', r, '{}'::jsonb FROM unnest($1::text[]) AS r RETURNING recipient, wa_id",
        spellings,
    )
    valid = {r["recipient"]: r["wa_id"] for r in rows if BSUID.fullmatch(r["recipient"])}
    # Case kept, nothing removed: the BSUID is its own key, exactly as Python reads it.
    assert valid == {s: normalise_recipient(s) for s in spellings[:4]}
    assert len(valid) == 4


# Issue 19 §4: the international prefix. One table for both rules: every spelling Python takes
# must get its digits as the row's key, and the key must never keep the `00`.
INTERNATIONAL = [
    "0049 151 12345678",
    "+0049 151 12345678",
    "0 0 49 151 12345678",
    "00-49-151-1234-5678",
    "(00) 49 151 12345678",
    "0049\u00a0151\u00a012345678",
    "00123456789012345",
    "0001234567",
    "+49 151 12345678",
    "4915112345678",
    "1234567",
]


async def test_wa_id_drops_the_00_prefix_as_python_does(db_url: str) -> None:
    rows = await fetch(
        db_url,
        "SELECT r, outbox.recipient_key('c', r) AS key FROM unnest($1::text[]) AS r",
        INTERNATIONAL,
    )
    assert {r["r"]: r["key"] for r in rows} == {s: normalise_recipient(s) for s in INTERNATIONAL}
    inserted = await fetch(
        db_url,
        "INSERT INTO outbox.messages (channel, recipient, payload) "
        "SELECT 'c', r, '{}'::jsonb FROM unnest($1::text[]) AS r RETURNING recipient, wa_id",
        INTERNATIONAL,
    )
    assert {r["recipient"]: r["wa_id"] for r in inserted} == {
        s: normalise_recipient(s) for s in INTERNATIONAL
    }


async def test_a_number_written_with_00_is_sent_without_it_in_both_dialects(
    db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    api, base_url = sandbox
    text = {"type": "text", "text": {"body": "hi"}}
    ids = {}
    for channel in ("cloud", "onprem"):
        # The user wrote: webhooks name them by their digits, with no prefix.
        await set_last_inbound(db_url, channel, "4915112345678", timedelta(minutes=1))
        ids[channel] = await insert(db_url, channel, "0049 151 12345678", text, inbound_ago=None)
    await drain(settings_for(db_url, base_url))
    for message_id in ids.values():
        done = await row(db_url, message_id)
        # The window was found under the digits webhooks use: the key and the request agree.
        assert (done["state"], done["wa_id"]) == ("accepted", "4915112345678")
    assert sorted(r.body["to"] for r in api.message_requests()) == ["4915112345678"] * 2


async def test_python_and_sql_agree_on_random_spellings_around_the_prefix(db_url: str) -> None:
    """Seeded random spellings of zeros, digits and noise: wherever Python accepts one, the SQL
    key is the number Python sends to."""
    chance = random.Random(19)
    alphabet = "00000123456789+ -().\u00a0"
    spellings = sorted(
        {"".join(chance.choices(alphabet, k=chance.randint(7, 20))) for _ in range(20000)}
    )
    rows = await fetch(
        db_url,
        "SELECT r, outbox.recipient_key('c', r) AS key FROM unnest($1::text[]) AS r",
        spellings,
    )
    accepted = 0
    for r in rows:
        try:
            number = normalise_recipient(r["r"])
        except InvalidMessage:
            continue
        accepted += 1
        assert (r["r"], r["key"]) == (r["r"], number)
    assert accepted > 1000  # the table above holds enough accepted spellings to mean something
