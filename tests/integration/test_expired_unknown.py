"""A row whose request may have gone out is never labelled "expired before it was sent".

A lease that runs out after the row's `expires_at` (the sender died mid-request), and an
`unknown` row whose expiry passes before its resend, end `expired` with `expired_unknown`: the
user may have the message. `outbox replay` warns about them as it does for `unknown` rows.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db.housekeeping import HousekeepingStore
from outbox.db.messages import MessageStore
from outbox.domain.ratelimit import Limits
from tests.support import insert, row

RECIPIENT = "4915100000001"
TEXT = {"type": "text", "text": {"body": "your code is 123456"}}
LIMITS = Limits(rate=1000, burst=1000)


async def test_a_lease_rescued_after_expires_at_may_have_been_delivered(
    db_url: str, engine: AsyncEngine
) -> None:
    in_flight = await insert(db_url, "cloud", RECIPIENT, TEXT, expires_at=_soon())
    [claimed] = (
        await MessageStore(engine).claim("cloud", 1, "died", timedelta(0), LIMITS)
    ).messages
    assert claimed.id == in_flight  # its sender dies with the request on the wire
    never_sent = await insert(db_url, "cloud", "4915100000002", TEXT, expires_at=_soon())
    await asyncio.sleep(0.4)  # past expires_at, and past the lease

    housekeeping = HousekeepingStore(engine)
    assert {s.id for s in await housekeeping.rescue_expired_leases()} == {in_flight}
    assert {s.id for s in await housekeeping.expire_due()} == {never_sent}

    rescued, expired = await row(db_url, in_flight), await row(db_url, never_sent)
    assert (rescued["state"], rescued["error_code"]) == ("expired", "expired_unknown")
    assert rescued["error_title"].endswith("expires_at has passed: it may have arrived")
    assert rescued["error_detail"] == "lease held by died expired"
    assert (expired["state"], expired["error_code"]) == ("expired", "expired")


async def test_an_unknown_row_past_expires_at_may_have_been_delivered(
    db_url: str, engine: AsyncEngine
) -> None:
    message_id = await insert(
        db_url,
        "cloud",
        RECIPIENT,
        TEXT,
        state="unknown",
        error_code="no_response",
        expires_at=_soon(),
        updated_at=_soon(-60),
    )
    await asyncio.sleep(0.4)
    assert await HousekeepingStore(engine).resend_unknown(["cloud"], timedelta(seconds=1)) == 1
    stored = await row(db_url, message_id)
    assert (stored["state"], stored["error_code"], stored["error_title"]) == (
        "expired",
        "expired_unknown",
        "expires_at passed while the outcome was unknown: it may have arrived",
    )


def _soon(seconds: float = 0.2) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)
