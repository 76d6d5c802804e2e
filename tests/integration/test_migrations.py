from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db import migrate
from outbox.db.engine import create_engine
from outbox.db.tables import SCHEMA, inserted_channels, metadata


def _drift(connection: Connection) -> list[object]:
    context = MigrationContext.configure(
        connection,
        opts={
            "include_schemas": True,
            "include_name": lambda name, type_, _: type_ != "schema" or name == SCHEMA,
            "version_table_schema": SCHEMA,
        },
    )
    return list(compare_metadata(context, metadata))


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = 'outbox'")
        )
        return {row[0] for row in rows}


async def test_upgrade_downgrade_upgrade_round_trip(empty_db_url: str) -> None:
    engine = create_engine(empty_db_url, pool_size=1)
    try:
        await migrate.upgrade(engine)
        assert await migrate.current_revision(engine) == migrate.head_revision()
        assert {"messages", "contacts", "webhook_events"} <= await _tables(engine)

        await migrate.downgrade(engine, "base")
        assert await migrate.current_revision(engine) is None
        assert await _tables(engine) == {"alembic_version"}

        await migrate.upgrade(engine)
        assert await migrate.current_revision(engine) == migrate.head_revision()
        async with engine.connect() as connection:
            assert await connection.run_sync(_drift) == []
    finally:
        await engine.dispose()


async def test_tables_match_migrations(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        assert await connection.run_sync(_drift) == []


async def test_insert_notifies_once_per_statement(db_url: str) -> None:
    import asyncio

    import asyncpg

    listener = await asyncpg.connect(db_url)
    received: list[str] = []
    got = asyncio.Event()

    def on_notify(*args: object) -> None:
        received.append(str(args[2]))
        got.set()

    await listener.add_listener("outbox_messages", on_notify)
    producer = await asyncpg.connect(db_url)
    try:
        await producer.execute(
            """INSERT INTO outbox.messages (channel, recipient, payload)
               SELECT 'c', '4915100000' || g, '{"type":"text","text":{"body":"x"}}'
               FROM generate_series(1, 500) g"""
        )
        await asyncio.wait_for(got.wait(), 5)
        await asyncio.sleep(0.1)
        assert received == ["outbox_messages"]
    finally:
        await producer.close()
        await listener.close()


async def test_a_small_insert_names_its_channels_in_the_notification(db_url: str) -> None:
    """Migration 0027: a statement of at most 100 rows names its channels (the senders visit
    them first); a bigger one, or one whose names would exceed 2,000 bytes, names none."""
    import asyncio

    import asyncpg

    listener = await asyncpg.connect(db_url)
    payloads: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("outbox_messages", lambda *args: payloads.put_nowait(args[3]))
    producer = await asyncpg.connect(db_url)
    insert = """INSERT INTO outbox.messages (channel, recipient, payload)
                SELECT $1 || (g % $3), '4915100000' || g, '{"type":"text","text":{"body":"x"}}'
                FROM generate_series(1, $2) g"""
    try:
        for prefix, rows, channels, named in (
            ("otp", 1, 1, ["otp0"]),
            ("shop", 100, 3, ["shop0", "shop1", "shop2"]),
            ("bulk", 101, 3, []),
            ("x" * 100, 40, 40, []),  # 40 names of 102 bytes and more: over 2,000
        ):
            await producer.execute(insert, prefix, rows, channels)
            assert inserted_channels(await asyncio.wait_for(payloads.get(), 5)) == named
    finally:
        await producer.close()
        await listener.close()


async def test_the_registry_notifies_only_statements_that_changed_a_row(db_url: str) -> None:
    """Migration 0028: every replica re-reads the registry on its notification; a statement
    that changed nothing (a restart's upsert of an unchanged file) no longer sends one."""
    import asyncio

    import asyncpg

    listener = await asyncpg.connect(db_url)
    notified: asyncio.Queue[str] = asyncio.Queue()
    for channel in ("outbox_channels", "marker"):
        await listener.add_listener(channel, lambda *args: notified.put_nowait(args[2]))
    writer = await asyncpg.connect(db_url)
    add = """INSERT INTO outbox.channels (id, source, dialect, base_url)
             VALUES ($1, 'file', 'cloud', $2)
             ON CONFLICT (id) DO UPDATE SET base_url = excluded.base_url
             WHERE channels.base_url IS DISTINCT FROM excluded.base_url"""
    try:
        for statement, args, notifies in (
            (add, ("n1", "http://127.0.0.1:9"), True),
            (add, ("n1", "http://127.0.0.1:9"), False),  # the same again: no row written
            (add, ("n1", "http://127.0.0.1:8"), True),  # changed: the upsert updates it
            ("UPDATE outbox.channels SET burst = 5 WHERE id = $1", ("none",), False),
            ("UPDATE outbox.channels SET burst = 5 WHERE id = $1", ("n1",), True),
            ("DELETE FROM outbox.channels WHERE id = $1", ("none",), False),
            ("DELETE FROM outbox.channels WHERE id = $1", ("n1",), True),
            ("TRUNCATE outbox.channels", (), True),
        ):
            await writer.execute(statement, *args)
            # One session's notifications arrive in the order of its commits: all that the
            # statement sent is in before the marker.
            await writer.execute("SELECT pg_notify('marker', '')")
            got = []
            while (name := await asyncio.wait_for(notified.get(), 5)) != "marker":
                got.append(name)
            assert got == (["outbox_channels"] if notifies else []), (statement, args)
    finally:
        await writer.close()
        await listener.close()


async def test_schema_constraints(engine: AsyncEngine) -> None:
    import pytest
    from sqlalchemy.exc import IntegrityError

    insert = text(
        "INSERT INTO outbox.messages (channel, recipient, payload, idempotency_key) "
        "VALUES ('c', '491510000001', CAST(:payload AS jsonb), :key) "
        "ON CONFLICT (channel, idempotency_key) DO NOTHING RETURNING id"
    )
    async with engine.begin() as connection:
        first = (
            await connection.execute(insert, {"payload": '{"type":"text"}', "key": "k1"})
        ).all()
        again = (
            await connection.execute(insert, {"payload": '{"type":"text"}', "key": "k1"})
        ).all()
        row = (
            await connection.execute(
                text(
                    "SELECT state, priority, attempts, send_after <= now() AS due "
                    "FROM outbox.messages"
                )
            )
        ).one()
    assert len(first) == 1
    assert again == []
    assert (row.state, row.priority, row.attempts, row.due) == ("queued", 0, 0, True)
    for bad in ('"not an object"', "[1]"):
        with pytest.raises(IntegrityError):
            async with engine.begin() as connection:
                await connection.execute(insert, {"payload": bad, "key": None})
    with pytest.raises(IntegrityError):
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE outbox.messages SET state = 'bogus'"))
