"""`head` after bulk inserts (revision 0012): whatever shape an INSERT has, each open row is a
head exactly when no older open row shares its line (channel, wa_id, ordering_key).

The row trigger only shortcuts runs of one line within a statement; the statement trigger
settles everything else. Each case is one or more statements, then the invariant is checked
against its definition, evaluated by a query over the whole table.
"""

from __future__ import annotations

import asyncpg
import pytest

from tests.support import fetch

_PAYLOAD = '{"type": "text", "text": {"body": "x"}}'
_WRONG_HEADS = """
SELECT m.id, m.head FROM outbox.messages AS m
WHERE m.state IN ('queued', 'sending', 'unknown')
  AND m.head = EXISTS (
      SELECT 1 FROM outbox.messages AS e
      WHERE e.channel = m.channel AND e.wa_id = m.wa_id AND e.ordering_key = m.ordering_key
        AND e.id < m.id AND e.state IN ('queued', 'sending', 'unknown'))
ORDER BY m.id
"""


def _rows(values: str) -> str:
    return (
        f"INSERT INTO outbox.messages (channel, recipient, payload, ordering_key, state) {values}"
    )


CASES: dict[str, list[str]] = {
    "a backlog to one recipient in one statement": [
        _rows(
            f"SELECT 'c', '4917000000001', '{_PAYLOAD}', '', 'queued' FROM generate_series(1, 500)"
        )
    ],
    "a campaign, one row per recipient": [
        _rows(
            f"SELECT 'c', '49151' || g, '{_PAYLOAD}', '', 'queued' FROM generate_series(1, 500) AS g"
        )
    ],
    "a backlog behind an open row inserted earlier": [
        _rows(f"VALUES ('c', '4917000000001', '{_PAYLOAD}'::jsonb, '', 'queued')"),
        _rows(
            f"SELECT 'c', '4917000000001', '{_PAYLOAD}', '', 'queued' FROM generate_series(1, 50)"
        ),
    ],
    "a backlog behind a finished row": [
        _rows(f"VALUES ('c', '4917000000001', '{_PAYLOAD}'::jsonb, '', 'accepted')"),
        _rows(
            f"SELECT 'c', '4917000000001', '{_PAYLOAD}', '', 'queued' FROM generate_series(1, 50)"
        ),
    ],
    "interleaved recipients, keys and channels": [
        _rows(
            f"SELECT CASE WHEN g % 5 = 0 THEN 'd' ELSE 'c' END, '4917' || (g % 3), '{_PAYLOAD}',"
            " CASE WHEN g % 7 = 0 THEN 'otp' ELSE '' END, 'queued' FROM generate_series(1, 300) AS g"
        )
    ],
    "runs broken by rows inserted finished or unknown": [
        _rows(
            f"SELECT 'c', '4917000000001', '{_PAYLOAD}', '',"
            " CASE WHEN g % 4 = 0 THEN 'failed' WHEN g % 9 = 0 THEN 'unknown' ELSE 'queued' END"
            " FROM generate_series(1, 100) AS g"
        )
    ],
    "the first rows finished, then a run": [
        _rows(
            f"SELECT 'c', '4917000000001', '{_PAYLOAD}', '',"
            " CASE WHEN g <= 3 THEN 'cancelled' ELSE 'queued' END FROM generate_series(1, 20) AS g"
        )
    ],
    "two spellings of one number alternating": [
        _rows(
            f"SELECT 'c', CASE WHEN g % 2 = 0 THEN '+49 170 0000001' ELSE '491700000001' END,"
            f" '{_PAYLOAD}', '', 'queued' FROM generate_series(1, 40) AS g"
        )
    ],
    "explicit ids out of order": [
        # Since 0020 an explicit id needs OVERRIDING SYSTEM VALUE (GENERATED ALWAYS).
        "INSERT INTO outbox.messages (id, channel, recipient, payload) OVERRIDING SYSTEM VALUE"
        f" SELECT 100000 - g, 'c', '4917000000001', '{_PAYLOAD}' FROM generate_series(1, 30) AS g"
    ],
    "a NULL ordering key is the recipient's own line": [
        _rows(f"VALUES ('c', '4917000000001', '{_PAYLOAD}'::jsonb, '', 'queued')"),
        _rows(
            f"SELECT 'c', '4917000000001', '{_PAYLOAD}', NULL, 'queued' FROM generate_series(1, 5)"
        ),
    ],
    # The first row of the run hits an existing idempotency key and is never inserted: the
    # rows after it were judged by a predecessor that does not exist.
    "the run's first row skipped by ON CONFLICT DO NOTHING": [
        "INSERT INTO outbox.messages (channel, recipient, payload, idempotency_key, state)"
        f" VALUES ('c', '4917000000009', '{_PAYLOAD}', 'k1', 'accepted')",
        "INSERT INTO outbox.messages (channel, recipient, payload, idempotency_key)"
        f" SELECT 'c', '4917000000001', '{_PAYLOAD}', 'k' || g FROM generate_series(1, 10) AS g"
        " ON CONFLICT (channel, idempotency_key) DO NOTHING",
    ],
    "two statements in one transaction": [
        "BEGIN",
        _rows(
            f"SELECT 'c', '4917000000001', '{_PAYLOAD}', '', 'queued' FROM generate_series(1, 5)"
        ),
        "UPDATE outbox.messages SET state = 'cancelled'",
        _rows(
            f"SELECT 'c', '4917000000001', '{_PAYLOAD}', '', 'queued' FROM generate_series(1, 5)"
        ),
        "COMMIT",
    ],
}


@pytest.mark.parametrize("case", CASES)
async def test_each_open_row_is_a_head_exactly_when_no_older_open_row_shares_its_line(
    db_url: str, case: str
) -> None:
    connection = await asyncpg.connect(db_url)
    try:
        for statement in CASES[case]:
            await connection.execute(statement)
    finally:
        await connection.close()
    assert await fetch(db_url, _WRONG_HEADS) == []
    [[opened]] = await fetch(
        db_url, "SELECT count(*) FROM outbox.messages WHERE state IN ('queued', 'unknown')"
    )
    assert opened > 0
