"""Row integrity (issue 19 §1): whatever a producer's grants, a row it inserts starts as a new
message, and rows with impossible values already in the table are failed with a reason, never
crash a claim or hold their channel or recipient (migration 0020).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from outbox.db import migrate
from outbox.db.engine import create_engine
from outbox.sandbox import Sandbox
from tests.support import PRODUCER_SESSION, drain, fetch, insert, set_last_inbound, settings_for

TEXT = '{"type": "text", "text": {"body": "hi"}}'

# What a producer with INSERT on the table tried (the security review's H1), and the column
# the refusal must name.
ABUSES: dict[str, tuple[str, str, str]] = {
    "state read": ("state", "'read'", "state"),
    "state sending, no lease": ("state", "'sending'", "state"),
    "attempts 2^31-1": ("attempts", "2147483647", "attempts"),
    "a wamid": ("wamid", "'wamid.forged'", "wamid"),
    "a lease": ("lease_until", "now() + interval '1 day'", "lease_until"),
    "claimed": ("claimed_by", "'me'", "claimed_by"),
    "an outcome": ("error_code", "'x'", "error_code"),
    "delivered": ("delivered_at", "now()", "delivered_at"),
    "a retry time": ("next_attempt_at", "now()", "next_attempt_at"),
    "resends": ("unknown_resends", "1", "unknown_resends"),
    "expires_at infinity": ("expires_at", "'infinity'", "ck_messages_finite_times"),
    "send_after infinity": ("send_after", "'infinity'", "ck_messages_finite_times"),
    "priority 32767": ("priority", "32767", "ck_messages_counters"),
    "an explicit id": ("id", "1000000", '"id"'),
}


def _insert(column: str, value: str) -> str:
    return (
        f"INSERT INTO outbox.messages (channel, recipient, payload, {column}) "
        f"VALUES ('cloud', '4915112345678', '{TEXT}', {value})"
    )


@pytest.mark.parametrize("abuse", ABUSES)
async def test_a_producer_cannot_write_what_the_daemon_owns(db_url: str, abuse: str) -> None:
    column, value, named = ABUSES[abuse]
    connection = await asyncpg.connect(db_url)
    try:
        await connection.execute(PRODUCER_SESSION)
        with pytest.raises(asyncpg.PostgresError) as refused:
            await connection.execute(_insert(column, value))
        assert named in str(refused.value)
        # Refused, not half-done: the next producer's ordinary insert goes through.
        await connection.execute(
            "INSERT INTO outbox.messages (channel, recipient, payload) "
            f"VALUES ('cloud', '4915112345678', '{TEXT}')"
        )
        assert await connection.fetchval("SELECT count(*) FROM outbox.messages") == 1
    finally:
        await connection.close()


async def test_refusal_names_every_column_and_is_a_check_violation(db_url: str) -> None:
    connection = await asyncpg.connect(db_url)
    try:
        await connection.execute(PRODUCER_SESSION)
        with pytest.raises(asyncpg.CheckViolationError) as refused:
            await connection.execute(
                "INSERT INTO outbox.messages (channel, recipient, payload, state, wamid, "
                f"attempts) VALUES ('cloud', '4915112345678', '{TEXT}', 'read', 'w', 3)"
            )
        assert refused.value.args[0] == (
            "outbox.messages: state, attempts, wamid cannot be set by an INSERT "
            "(the daemon owns it)"
        )
        assert refused.value.column_name == "state"
    finally:
        await connection.close()


async def test_timestamps_are_the_databases_whatever_a_producer_writes(db_url: str) -> None:
    connection = await asyncpg.connect(db_url)
    try:
        await connection.execute(PRODUCER_SESSION)
        now = await connection.fetchval(
            "INSERT INTO outbox.messages (channel, recipient, payload, created_at, updated_at) "
            f"VALUES ('cloud', '4915112345678', '{TEXT}', '2001-01-01', '2001-01-01') "
            "RETURNING created_at = now() AND updated_at = now()"
        )
        assert now is True
    finally:
        await connection.close()


async def test_the_fixture_path_is_the_owners_only(db_url: str) -> None:
    """`outbox.trusted_insert` lets the table's owner write rows in any state (fixtures,
    repairs); a producer role that sets it is refused as before."""
    role = f"producer_{uuid.uuid4().hex[:8]}"
    await fetch(db_url, f"CREATE ROLE {role}")
    try:
        await fetch(db_url, f"GRANT USAGE ON SCHEMA outbox TO {role}")
        await fetch(db_url, f"GRANT SELECT, INSERT ON outbox.messages TO {role}")
        connection = await asyncpg.connect(db_url)
        try:
            await connection.execute(f"SET ROLE {role}; SET outbox.trusted_insert = 'on'")
            with pytest.raises(asyncpg.CheckViolationError, match="state cannot be set"):
                await connection.execute(_insert("state", "'read'"))
            await connection.execute("RESET ROLE")
            await connection.execute(_insert("state", "'read'"))  # the owner (the suite's role)
        finally:
            await connection.close()
    finally:
        await fetch(db_url, f"DROP OWNED BY {role}")
        await fetch(db_url, f"DROP ROLE {role}")


async def test_an_explicit_id_ahead_of_the_sequence_no_longer_breaks_others(db_url: str) -> None:
    connection = await asyncpg.connect(db_url)
    try:
        await connection.execute(PRODUCER_SESSION)
        with pytest.raises(asyncpg.GeneratedAlwaysError):
            await connection.execute(_insert("id", "1"))
        ids = [
            await connection.fetchval(
                "INSERT INTO outbox.messages (channel, recipient, payload) "
                f"VALUES ('cloud', '4915112345678', '{TEXT}') RETURNING id"
            )
            for _ in range(3)
        ]
        assert len(set(ids)) == 3
    finally:
        await connection.close()


_BODY = {"type": "text", "text": {"body": "hi"}}
_MINUTE = timedelta(minutes=1)

# Rows a producer could write before 0020, as the review found them; the migration must fail
# each with a reason naming the column, and the channel and its recipients must go on.
POISON: dict[str, tuple[str, dict[str, Any]]] = {
    "attempts": ("4915100000001", {"attempts": 2147483647, "priority": 32767}),
    "expires_at": ("4915100000002", {"expires_at": "infinity"}),
    "lease_until": ("4915100000003", {"state": "sending"}),
    "send_after": ("4915100000004", {"send_after": "infinity"}),
}


async def _poison(db_url: str, recipient: str, columns: dict[str, Any]) -> int:
    names = "".join(f", {c}" for c in columns)
    values = "".join(f", '{v}'" for v in columns.values())
    rows = await fetch(
        db_url,
        f"INSERT INTO outbox.messages (channel, recipient, payload{names}) "
        f"VALUES ('cloud', '{recipient}', '{TEXT}'{values}) RETURNING id",
    )
    return int(rows[0]["id"])


async def test_impossible_rows_already_there_fail_with_a_reason_and_hold_nobody(
    empty_db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    api, base_url = sandbox
    engine = create_engine(empty_db_url, pool_size=1)
    try:
        await migrate.upgrade(engine, "0017")
        poisoned = {}
        for column, (recipient, values) in POISON.items():
            await set_last_inbound(empty_db_url, "cloud", recipient, _MINUTE)
            poisoned[column] = await _poison(empty_db_url, recipient, values)
        # Each poisoned recipient has a later row waiting behind it; the channel has others.
        behind = [
            await insert(empty_db_url, "cloud", recipient, _BODY)
            for recipient, _ in POISON.values()
        ]
        others = [await insert(empty_db_url, "cloud", f"49151200000{i:02d}", _BODY) for i in (1, 2)]
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    await drain(settings_for(empty_db_url, base_url))
    rows = {
        r["id"]: r
        for r in await fetch(
            empty_db_url,
            "SELECT id, state, error_code, error_detail, attempts, expires_at, send_after"
            " FROM outbox.messages",
        )
    }
    for column, message_id in poisoned.items():
        failed = rows[message_id]
        assert (failed["state"], failed["error_code"]) == ("failed", "invalid_row")
        assert column in failed["error_detail"]
    assert rows[poisoned["attempts"]]["attempts"] == 1000
    assert rows[poisoned["expires_at"]]["expires_at"] is None
    assert {rows[i]["state"] for i in [*behind, *others]} == {"accepted"}
    assert len(api.message_requests()) == len(behind) + len(others)


async def test_ids_taken_ahead_of_the_sequence_before_0020_are_skipped_after_it(
    empty_db_url: str,
) -> None:
    engine = create_engine(empty_db_url, pool_size=1)
    try:
        await migrate.upgrade(engine, "0017")
        ahead = f"INSERT INTO outbox.messages (id, channel, recipient, payload) VALUES ($1, 'cloud', '4915112345678', '{TEXT}')"  # fmt: skip
        for message_id in (1, 2, 3):
            await fetch(empty_db_url, ahead, message_id)
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    ordinary = await fetch(
        empty_db_url,
        "INSERT INTO outbox.messages (channel, recipient, payload) "
        f"VALUES ('cloud', '4915112345678', '{TEXT}') RETURNING id",
    )
    assert ordinary[0]["id"] == 4
