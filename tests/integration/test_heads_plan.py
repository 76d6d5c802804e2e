"""Settling `head` after a bulk INSERT costs one probe per inserted row, whatever plan the
planner picks (revision 0021).

0012 wrote the settle as an EXISTS / NOT EXISTS join between the inserted rows and the open
rows. With statistics from a quiet moment (every row finished: "one open row") the planner may
join them as a nested loop over the materialised open rows: every inserted row compared with
every open row. A benchmark's 1,000,000-row INSERT ran for over 25 minutes in that plan (a
backtrace showed ExecNestLoop over ExecMaterial inside settle_heads). Here the planner is
denied hash and merge joins, which forces that plan on a join, and auto_explain reports the
rows each plan node threw away: a probe per row throws away none.
"""

from __future__ import annotations

import re

import asyncpg

from tests.support import fetch

_ROWS = 3000
_PAYLOAD = '{"type": "text", "text": {"body": "x"}}'
_SHAPES = {
    "a campaign, one row per recipient": "'49151' || g",
    "a backlog to one recipient": "'4917000000001'",
}
# Every statement's plan, nested ones (the triggers') included, as log messages to the client.
_EXPLAIN = (
    "LOAD 'auto_explain'",
    "SET auto_explain.log_min_duration = 0",
    "SET auto_explain.log_nested_statements = on",
    "SET auto_explain.log_analyze = on",
    "SET client_min_messages = log",
)
_DISCARDED = re.compile(r"Rows Removed by (?:Join )?Filter: (\d+)")


async def test_settling_heads_stays_linear_when_the_planner_may_only_nest_loops(
    db_url: str,
) -> None:
    plans: list[str] = []
    connection = await asyncpg.connect(db_url)
    connection.add_log_listener(lambda _c, message: plans.append(str(message)))
    try:
        for setting in (*_EXPLAIN, "SET enable_hashjoin = off", "SET enable_mergejoin = off"):
            await connection.execute(setting)
        for recipient in _SHAPES.values():
            await connection.execute(
                "INSERT INTO outbox.messages (channel, recipient, payload)"
                f" SELECT 'c', {recipient}, '{_PAYLOAD}' FROM generate_series(1, {_ROWS}) AS g"
            )
    finally:
        await connection.close()
    settles = [plan for plan in plans if "SET head" in plan]
    assert len(settles) == 2 * len(_SHAPES), "auto_explain reported no settle statement"
    discarded = sum(int(n) for plan in settles for n in _DISCARDED.findall(plan))
    # A join over materialised rows discards ~rows² (9,000,000 here); probes discard none.
    assert discarded <= 10 * _ROWS, discarded
    [[heads]] = await fetch(db_url, "SELECT count(*) FROM outbox.messages WHERE head")
    assert heads == _ROWS + 1


async def test_the_head_triggers_probe_with_a_plan_cached_while_the_table_was_small(
    db_url: str,
) -> None:
    """PL/pgSQL keeps a trigger's plan for the session: one made when the table was small (a
    sequential scan is cheapest then) served a later bulk INSERT in the same session, which
    scanned the table once per inserted row (a 1,000,000-row INSERT of the scale benchmark ran
    for over 6 minutes, a backtrace showing the settle's subplan scanning and comparing text;
    here, before 0023: 1.9 s and 3,000 rows read per inserted row for 3,000 rows). The head
    triggers run with sequential scans priced out (revision 0023); the hand-over after an
    UPDATE that ends rows likewise."""
    plans: list[str] = []
    connection = await asyncpg.connect(db_url)
    connection.add_log_listener(lambda _c, message: plans.append(str(message)))
    try:
        await connection.execute("ANALYZE outbox.messages")  # statistics of an empty table
        for setting in _EXPLAIN:
            await connection.execute(setting)
        for count in (2, _ROWS):  # the first caches the plans; the second uses them
            plans.clear()  # the bulk statements' plans are the ones that matter
            await connection.execute(
                "INSERT INTO outbox.messages (channel, recipient, payload)"
                f" SELECT 'c', '49151' || g, '{_PAYLOAD}' FROM generate_series(1, {count}) AS g"
            )
            await connection.execute(
                "UPDATE outbox.messages SET state = 'expired' WHERE state = 'queued'"
            )
    finally:
        await connection.close()
    probes = [plan for plan in plans if "SET head" in plan]
    assert len(probes) == 3, "auto_explain reported no settle or hand-over statement"
    # Each probe of a line by the index of lines (a plan cached while the table was small
    # chose a sequential scan; with that priced out, a bitmap scan of the channel's rows).
    line_probe = re.compile(r"Index (?:Only )?Scan using ix_messages_line on messages e")
    strays = [plan for plan in probes if not line_probe.search(plan)]
    assert strays == [], strays[0]


async def test_bulk_statements_stay_linear_after_statistics_taken_mid_insert(db_url: str) -> None:
    """autovacuum's ANALYZE can run while another transaction's rows are being inserted: pages
    full, no row visible, `reltuples = 0`. The head triggers then joined `messages` as the outer
    side of a nested loop and probed every inserted row once per row of the table (before 0025:
    2,000 rows took 13.3 s, 4,000,000 probes). They now pick ids first and update by id."""
    rows = 2000
    insert = (
        "INSERT INTO outbox.messages (channel, recipient, payload)"
        f" SELECT 'c', $1 || g, '{_PAYLOAD}' FROM generate_series(1, {rows}) AS g"
    )
    pending = await asyncpg.connect(db_url)
    plans: list[str] = []
    connection = await asyncpg.connect(db_url)
    connection.add_log_listener(lambda _c, message: plans.append(str(message)))
    try:
        async with pending.transaction():
            await pending.execute(insert, "49152")  # in progress while ANALYZE runs
            await fetch(db_url, "ANALYZE outbox.messages")
            [[visible]] = await fetch(
                db_url, "SELECT reltuples FROM pg_class WHERE oid = 'outbox.messages'::regclass"
            )
            assert visible == 0  # what the planner now believes
            for setting in _EXPLAIN:
                await connection.execute(setting)
            await connection.execute(insert, "49151")
            await connection.execute("UPDATE outbox.messages SET state = 'expired'")
            raise _RolledBack
    except _RolledBack:
        pass
    finally:
        await connection.close()
        await pending.close()
    statements = [plan for plan in plans if "SET head" in plan]
    assert len(statements) == 3, "auto_explain reported no settle or hand-over statement"
    loops = [int(n) for plan in statements for n in re.findall(r"loops=(\d+)", plan)]
    assert max(loops) <= rows, max(loops)  # one probe per row at most, not rows²


class _RolledBack(Exception):
    """Ends the pending transaction without its rows."""
