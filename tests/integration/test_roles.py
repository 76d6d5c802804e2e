"""Issue 19 §1: the README's four database roles, created by its snippets run verbatim, and
every abuse the issue lists tried as each role and refused (real PostgreSQL)."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.roles import (
    CONTACTS_EXAMPLE,
    DAEMON,
    MIGRATOR,
    OPERATOR,
    PRODUCER,
    PRODUCERS,
    TEMPLATE_EXAMPLE,
    TEXT_EXAMPLE,
    WEB,
    Roles,
    execute,
    readme_sql,
    scoped_roles,
)
from tests.support import fetch, run_process

ALL = (DAEMON, WEB, OPERATOR, PRODUCERS, PRODUCER)
DENIED = "permission denied for table messages"
OTHER_CHANNEL = 'new row violates row-level security policy for table "messages"'


@pytest.fixture
async def roles(db_url: str) -> AsyncIterator[Roles]:
    """Every README role on the migrated test database, plus a second producer service,
    `billing_producer`, on channel 'billing' (the README's per-producer snippet, renamed)."""
    async with scoped_roles(db_url, "billing_producer") as made:
        await made.run(*ALL)
        billing = made.name("billing_producer")
        second = made.sql(PRODUCER).replace(made.name("shop_producer"), billing)
        await execute(db_url, second.replace("'shop-de'", "'billing'"))
        yield made


async def _refused(connection: asyncpg.Connection, sql: str, expected: str) -> None:
    with pytest.raises(asyncpg.PostgresError) as caught:
        await connection.execute(sql)
    assert expected in str(caught.value), sql


_ROW = "INSERT INTO outbox.messages (channel, recipient, payload{}) VALUES ('shop-de', '4915112345678', '{{\"type\": \"template\"}}'{})"  # fmt: skip


def _row_with(column: str, value: str) -> str:
    return _ROW.format(f", {column}", f", {value}")


async def test_the_readme_examples_run_as_the_producer(roles: Roles, db_url: str) -> None:
    """The contract's examples, verbatim, as `shop_producer`: the template, the text with
    ON CONFLICT ... RETURNING (twice: the second returns nothing), the contacts upsert
    (twice: the update path), reading its rows back. Failed before 0018: the insert trigger's
    UPDATE of `head` ran as the producer ("permission denied for table messages")."""
    producer = await roles.connect("shop_producer")
    try:
        await producer.execute(readme_sql(TEMPLATE_EXAMPLE))
        first = await producer.fetch(readme_sql(TEXT_EXAMPLE))
        again = await producer.fetch(readme_sql(TEXT_EXAMPLE))
        for _ in range(2):
            await producer.execute(readme_sql(CONTACTS_EXAMPLE))
        # A BSUID recipient: the key trigger reads identity_pairs, which producers cannot.
        await producer.execute(
            "INSERT INTO outbox.messages (channel, recipient, payload) "
            """VALUES ('shop-de', 'US.13491208655302741918', '{"type": "text"}')"""
        )
        mine = await producer.fetch("SELECT id, state, head FROM outbox.messages ORDER BY id")
        contacts = await producer.fetch("SELECT channel, wa_id FROM outbox.contacts")
    finally:
        await producer.close()
    assert len(first) == 1
    assert again == []
    assert [(r["state"], r["head"]) for r in mine] == [
        ("queued", True), ("queued", False), ("queued", True)
    ]  # fmt: skip
    assert [tuple(r) for r in contacts] == [("shop-de", "4915112345678")]


async def test_a_producer_is_refused_every_abuse(roles: Roles, db_url: str) -> None:
    billing = await asyncpg.connect(roles.url("billing_producer"))
    try:
        theirs = await billing.fetchval(
            "INSERT INTO outbox.messages (channel, recipient, payload, metadata) VALUES "
            """('billing', '4915100000001', '{"type": "text"}', '{"iban": "DE00"}') RETURNING id"""
        )
    finally:
        await billing.close()
    producer = await roles.connect("shop_producer")
    try:
        await producer.execute(readme_sql(TEMPLATE_EXAMPLE))
        for column, value in [
            ("attempts", "2147483647"),
            ("state", "'sending'"),
            ("state", "'read'"),
            ("wamid", "'wamid.forged'"),
            ("lease_until", "now()"),
            ("claimed_by", "'me'"),
            ("head", "true"),
            ("wa_id", "'1'"),
        ]:
            await _refused(producer, _row_with(column, value), DENIED)
        # 0020 made `id` GENERATED ALWAYS, which PostgreSQL checks before the column grant.
        await _refused(producer, _row_with("id", "100000"), 'non-DEFAULT value into column "id"')
        await _refused(producer, _ROW.format("", "").replace("shop-de", "billing"), OTHER_CHANNEL)
        await _refused(
            producer, _ROW.format("", "").replace("shop-de", "cust-jane@x"), OTHER_CHANNEL
        )
        await _refused(
            producer,
            "INSERT INTO outbox.contacts (channel, wa_id, last_inbound_at) "
            "VALUES ('billing', '4915100000001', now())",
            'new row violates row-level security policy for table "contacts"',
        )
        await _refused(producer, "UPDATE outbox.messages SET priority = 1", DENIED)
        await _refused(producer, "UPDATE outbox.messages SET state = 'sending'", DENIED)
        await _refused(producer, "DELETE FROM outbox.messages", DENIED)
        await _refused(producer, "TRUNCATE outbox.messages", DENIED)
        for table in ("identity_pairs", "channels", "webhook_events", "status_history"):
            await _refused(producer, f"SELECT * FROM outbox.{table}", "permission denied")
        await _refused(producer, "CREATE TABLE outbox.mine (a int)", "permission denied")
        await _refused(producer, "ALTER TABLE outbox.messages DISABLE ROW LEVEL SECURITY", "owner")
        # Another service's rows are not there, by any query.
        seen = await producer.fetch("SELECT channel FROM outbox.messages")
        by_id = await producer.fetch("SELECT * FROM outbox.messages WHERE id = $1", theirs)
        mapping = await producer.fetch("SELECT producer, channel FROM outbox.producer_channels")
    finally:
        await producer.close()
    assert [r["channel"] for r in seen] == ["shop-de"]
    assert by_id == []
    assert [tuple(r) for r in mapping] == [(roles.name("shop_producer"), "shop-de")]
    rows = await fetch(db_url, "SELECT channel, state, attempts FROM outbox.messages ORDER BY id")
    assert [tuple(r) for r in rows] == [("billing", "queued", 0), ("shop-de", "queued", 0)]


async def test_the_daemon_role_has_no_ddl_and_no_producer_or_operator_tables(
    roles: Roles,
) -> None:
    daemon = await roles.connect("outbox_daemon")
    try:
        for sql, expected in [
            ("CREATE TABLE outbox.mine (a int)", "permission denied for schema outbox"),
            ("ALTER TABLE outbox.messages ADD COLUMN x int", "must be owner"),
            ("DROP TABLE outbox.webhook_events", "must be owner"),
            ("CREATE INDEX ON outbox.messages (id)", "must be owner"),
            ("TRUNCATE outbox.messages", DENIED),
            ("DELETE FROM outbox.messages", DENIED),
            (
                "INSERT INTO outbox.messages (channel, recipient, payload) VALUES ('a', '1', '{}')",
                DENIED,
            ),
            ("SELECT * FROM outbox.producer_channels", "permission denied"),
            ("INSERT INTO outbox.operator_actions (message_id) VALUES (1)", "permission denied"),
            ("DELETE FROM outbox.alembic_version", "permission denied"),
            ("UPDATE outbox.schema_compat SET compatible_with = '0001'", "permission denied"),
        ]:
            await _refused(daemon, sql, expected)
        # It reads the registry whole: sealed keys are ciphertext it opens with the master key.
        assert await daemon.fetchval("SELECT count(*) FROM outbox.channels") == 0
        # Migration 0026: the statistics check runs as the owner; nothing to refresh here.
        assert await daemon.fetchval("SELECT outbox.refresh_statistics()") is None
    finally:
        await daemon.close()


async def test_only_the_daemon_may_refresh_the_statistics(roles: Roles) -> None:
    """EXECUTE on the SECURITY DEFINER function is the daemon's alone (revoked from PUBLIC)."""
    for role in ("shop_producer", "outbox_web", "outbox_operator"):
        connection = await roles.connect(role)
        try:
            await _refused(
                connection,
                "SELECT outbox.refresh_statistics()",
                "permission denied for function refresh_statistics",
            )
        finally:
            await connection.close()


async def test_the_operator_cannot_alter_or_create(roles: Roles) -> None:
    operator = await roles.connect("outbox_operator")
    try:
        for sql, expected in [
            ("ALTER TABLE outbox.messages ADD COLUMN x int", "must be owner"),
            ("ALTER TABLE outbox.messages DISABLE ROW LEVEL SECURITY", "must be owner"),
            ("CREATE TABLE outbox.mine (a int)", "permission denied for schema outbox"),
            ("DROP POLICY producer_rows ON outbox.messages", "must be owner"),
            ("INSERT INTO outbox.producer_channels VALUES ('me', 'x')", "permission denied"),
            ("TRUNCATE outbox.status_history", "permission denied"),
        ]:
            await _refused(operator, sql, expected)
    finally:
        await operator.close()


async def test_migrate_runs_as_the_migrator_and_says_what_another_role_lacks(
    empty_db_url: str,
) -> None:
    """Snippet 1 on an empty database; `outbox migrate` as a role without the privilege is one
    line naming it, exit 1, no traceback; as the migrator it builds a schema it owns, on which
    the other snippets run."""
    async with scoped_roles(empty_db_url) as roles:
        await roles.run(MIGRATOR)
        await fetch(empty_db_url, f"CREATE ROLE {roles.name('outbox_daemon')} LOGIN")
        code, out, err = await _migrate(roles.url("outbox_daemon"))
        assert code == 1, (out, err)
        assert err.strip().splitlines() == [
            "outbox: error: permission denied for schema outbox: run migrations as the migrator"
            ' role (the schema owner; README "Database roles")'
        ]
        code, out, err = await _migrate(roles.url("outbox_migrator"))
        assert code == 0, err
        assert "schema: empty -> " in out
        owners = await fetch(
            empty_db_url,
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'outbox'",
        )
        assert [r[0] for r in owners] == [roles.name("outbox_migrator")]
        await fetch(empty_db_url, f"DROP ROLE {roles.name('outbox_daemon')}")
        await roles.run(*ALL)
        code, out, err = await _migrate(roles.url("outbox_migrator"))  # again: nothing to do
        assert code == 0, err
        assert " -> " in out


async def test_a_role_without_the_runtime_grants_is_told_which_privilege(roles: Roles) -> None:
    """`outbox check` (the start-up check `outbox run` and the admin verbs share) as a producer:
    reachable, so not "database unreachable: ProgrammingError" as before, but the privilege."""
    code, out, err = await run_process(
        sys.executable, "-m", "outbox", "check",
        env={"OUTBOX_DATABASE_URL": roles.url("shop_producer"), "PATH": ""},
    )  # fmt: skip
    assert code == 1, (out, err)
    assert err.strip().splitlines() == [
        "outbox: error: permission denied for table alembic_version: grant this role what"
        ' README "Database roles" lists for it'
    ]


async def _migrate(url: str) -> tuple[int, str, str]:
    return await run_process(
        sys.executable, "-m", "outbox", "migrate", env={"OUTBOX_DATABASE_URL": url, "PATH": ""}
    )


def test_the_snippets_name_only_the_readme_roles() -> None:
    """A role name the test would not rename would leak into the cluster."""
    for marker in (MIGRATOR, *ALL):
        words = set(json.dumps(readme_sql(marker)).replace("\\n", " ").split())
        assert not [w for w in words if w.endswith("_producer") and "shop_producer" not in w
                    and "outbox_producer" not in w], marker  # fmt: skip
