"""The operator's workflow (replay, cancel, purge) in process, against PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db.operator_store import OperatorStore
from outbox.db.retention import RetentionStore
from outbox.domain.codes import Code, Title
from outbox.domain.models import State
from outbox.domain.operations import Purged
from outbox.ports import Selector
from outbox.services.operations import Cancel, Operations, Purge, Replay, Retention, Verb
from tests.support import fetch

TEMPLATE = '{"type":"template","template":{"name":"t","language":{"code":"en"}}}'
MARGIN = timedelta(minutes=5)


def _now() -> datetime:
    return datetime.now(UTC)


async def _put(db_url: str, state: str, recipient: str = "4915100000001", **columns: str) -> int:
    """One cloud row with a template payload; column values are SQL expressions."""
    values = {
        "channel": "'cloud'",
        "recipient": f"'{recipient}'",
        "payload": f"'{TEMPLATE}'",
        "state": f"'{state}'",
        **columns,
    }
    [record] = await fetch(
        db_url,
        f"INSERT INTO outbox.messages ({', '.join(values)}) "
        f"VALUES ({', '.join(values.values())}) RETURNING id",
    )
    return int(record["id"])


async def _states(db_url: str, *ids: int) -> list[str]:
    rows = await fetch(
        db_url, "SELECT id, state FROM outbox.messages WHERE id = ANY($1::bigint[])", list(ids)
    )
    by_id = {r["id"]: r["state"] for r in rows}
    return [by_id[i] for i in ids]


REPLAY = Replay(wanted=(State.FAILED,), actor="ops", window_margin=MARGIN)


async def test_replay_requeues_what_may_be_sent_again_and_refuses_what_was_delivered(
    db_url: str, engine: AsyncEngine
) -> None:
    fresh = await _put(db_url, "failed", error_code="'131026'")
    delivered = await _put(db_url, "failed", "4915100000002")
    await fetch(
        db_url,
        "INSERT INTO outbox.status_history (message_id, wamid, status, at, verdict)"
        " VALUES ($1, 'wamid.D', 'delivered', now(), 'applied')",
        delivered,
    )
    operations = Operations(OperatorStore(engine), clock=_now)
    command = replace(REPLAY, note="outage over")
    tally = await operations.select(
        command, Selector(states=(State.FAILED,), channel="cloud"), show=50
    )

    assert tally.verb is Verb.REPLAY
    assert tally.chosen == [fresh]
    assert tally.skipped == {"it was delivered per its status history (--force sends it)": 1}
    assert [(c.id, d.act) for c, d in tally.shown] == [(fresh, True), (delivered, False)]
    settled: list[int] = []
    await operations.apply(command, tally, settled.append)
    assert (settled, tally.changed) == ([1], 0)
    assert await _states(db_url, fresh, delivered) == ["queued", "failed"]
    [action] = await fetch(db_url, "SELECT * FROM outbox.operator_actions")
    assert (action["message_id"], action["action"], action["actor"], action["note"]) == (
        fresh,
        "replay",
        "ops",
        "outage over",
    )

    forced = replace(REPLAY, force=True)
    tally = await operations.select(
        forced, Selector(states=(State.FAILED,), ids=(delivered,)), show=50
    )
    await operations.apply(forced, tally, settled.append)
    assert await _states(db_url, delivered) == ["queued"]


async def test_a_dry_run_is_a_selection_and_changes_nothing(
    db_url: str, engine: AsyncEngine
) -> None:
    ids = [await _put(db_url, "queued", f"49151000000{i:02}") for i in range(3)]
    operations = Operations(OperatorStore(engine), clock=_now)
    tally = await operations.select(
        Cancel(wanted=(State.QUEUED,), actor="ops"), Selector(states=(State.QUEUED,)), show=1
    )
    assert (tally.acted, tally.chosen) == (3, ids)
    assert (len(tally.shown), tally.unshown) == (1, 2)
    assert await _states(db_url, *ids) == ["queued"] * 3
    assert await fetch(db_url, "SELECT * FROM outbox.operator_actions") == []


async def test_cancel_writes_our_code_and_title_and_refuses_rows_in_flight(
    db_url: str, engine: AsyncEngine
) -> None:
    queued = await _put(db_url, "queued")
    unknown = await _put(db_url, "unknown", "4915100000002")
    sending = await _put(db_url, "sending", "4915100000003", claimed_by="'w'")
    operations = Operations(OperatorStore(engine), clock=_now)
    command = Cancel(wanted=(State.QUEUED, State.UNKNOWN), actor="ops", note="wrong campaign")
    selector = Selector(states=tuple(State), ids=(queued, unknown, sending))
    tally = await operations.select(command, selector, show=50)
    reasons = {c.id: d.reason for c, d in tally.shown}
    assert reasons == {
        queued: "cancelled",
        unknown: "cancelled; the request already made may still be delivered",
        sending: "in flight: its outcome is about to be written",
    }
    await operations.apply(command, tally, lambda _: None)
    rows = await fetch(
        db_url,
        "SELECT id, state, error_code, error_title, error_detail FROM outbox.messages"
        " WHERE state = 'cancelled' ORDER BY id",
    )
    assert [tuple(r) for r in rows] == [
        (i, "cancelled", Code.CANCELLED.value, Title.CANCELLED.value, "wrong campaign")
        for i in (queued, unknown)
    ]
    assert await _states(db_url, sending) == ["sending"]


async def test_refusal_reasons_come_from_the_state_asked_for_and_the_clock(
    db_url: str, engine: AsyncEngine
) -> None:
    unknown = await _put(db_url, "unknown")
    expiring = await _put(db_url, "failed", "4915100000002", expires_at="now() + interval '1 hour'")
    later = datetime.now(UTC) + timedelta(hours=2)
    operations = Operations(OperatorStore(engine), clock=lambda: later)
    selector = Selector(states=tuple(State), ids=(unknown, expiring))
    tally = await operations.select(REPLAY, selector, show=50)
    assert tally.chosen == []
    assert tally.skipped == {
        "state unknown is not selected (--state unknown selects it)": 1,
        "expires_at has passed (--expires-in gives it a new one)": 1,
    }

    # A new expiry, reckoned from the same clock, lets it go; the write sets it.
    renewed = replace(REPLAY, expires_in=timedelta(hours=3))
    tally = await operations.select(
        renewed, Selector(states=(State.FAILED,), ids=(expiring,)), show=50
    )
    assert tally.chosen == [expiring]
    await operations.apply(renewed, tally, lambda _: None)
    [row] = await fetch(
        db_url, "SELECT state, expires_at FROM outbox.messages WHERE id = $1", expiring
    )
    assert (row["state"], row["expires_at"]) == ("queued", later + timedelta(hours=3))


async def test_rows_are_written_in_batches_with_progress_and_changes_counted(
    db_url: str, engine: AsyncEngine
) -> None:
    ids = [await _put(db_url, "failed", f"49151000000{i:02}") for i in range(5)]
    operations = Operations(OperatorStore(engine), clock=_now, batch=2)
    command = REPLAY
    tally = await operations.select(command, Selector(states=(State.FAILED,)), show=50)
    # A sender's late answer moves one row on after the selection: it is left alone.
    await fetch(db_url, "UPDATE outbox.messages SET state = 'accepted' WHERE id = $1", ids[3])
    settled: list[int] = []
    await operations.apply(command, tally, settled.append)
    assert settled == [2, 2, 1]
    assert tally.changed == 1
    assert await _states(db_url, *ids) == ["queued", "queued", "queued", "accepted", "queued"]


async def test_purge_counts_then_deletes_each_kind_in_batches(
    db_url: str, engine: AsyncEngine
) -> None:
    old, recent = "now() - interval '40 days'", "now() - interval '1 day'"
    gone = [
        await _put(db_url, s, f"4915100000{i:03}", updated_at=old)
        for i, s in enumerate(("read", "failed", "cancelled"))
    ]
    delivered = await _put(db_url, "delivered", "4915100000101", updated_at=old)
    kept = await _put(db_url, "failed", "4915100000102", updated_at=recent)
    for processed in (old, old, recent, "NULL"):
        await fetch(
            db_url,
            "INSERT INTO outbox.webhook_events (channel, payload, processed_at)"
            f" VALUES ('cloud', '{{}}', {processed})",
        )
    for orphaned in (old, "NULL"):
        await fetch(
            db_url,
            "INSERT INTO outbox.parked_statuses (channel, status, orphaned_at)"
            f" VALUES ('cloud', '{{}}', {orphaned})",
        )
    now = datetime.now(UTC)
    retention = Retention(RetentionStore(engine), clock=lambda: now)
    purge = Purge(timedelta(days=30), batch_size=1)

    cutoff, counts = await retention.count(purge)
    assert cutoff == now - timedelta(days=30)
    nothing_else = dict.fromkeys(Purged, 0)
    assert counts == {
        **nothing_else,
        Purged.MESSAGES: 3,
        Purged.WEBHOOK_EVENTS: 2,
        Purged.ORPHAN_STATUSES: 1,
    }
    labels = [
        "messages",
        "webhook_events",
        "orphan statuses",
        "account events",
        "contacts",
        "identity pairs",
        "idempotency keys",
    ]
    assert [t.label for t in counts] == labels

    deleted: list[tuple[Purged, int]] = []
    await retention.purge(purge, cutoff, lambda table, n: deleted.append((table, n)))
    assert deleted == [
        (
            table,
            {Purged.MESSAGES: 3, Purged.WEBHOOK_EVENTS: 2, Purged.ORPHAN_STATUSES: 1}.get(table, 0),
        )
        for table in Purged
    ]
    left = await fetch(db_url, "SELECT id FROM outbox.messages ORDER BY id")
    assert [r["id"] for r in left] == [delivered, kept]
    assert not set(gone) & {r["id"] for r in left}

    with_delivered = Purge(timedelta(days=30), batch_size=10, include_delivered=True)
    _, counts = await retention.count(with_delivered)
    assert counts == {**nothing_else, Purged.MESSAGES: 1}


async def test_purge_deletes_contacts_whose_last_message_is_past_retention_and_window(
    db_url: str, engine: AsyncEngine
) -> None:
    """`outbox.contacts` holds one row per user who ever wrote: purge takes those that wrote
    last before the retention period, and never one whose 24-hour window may still be open."""
    contacts = {
        ("cloud", "4915100000901"): ("40 days", "40 days"),  # gone
        ("onprem", "4915100000902"): ("40 days", "40 days"),  # gone
        ("cloud", "4915100000903"): (None, "40 days"),  # gone: never wrote, not touched since
        ("cloud", "4915100000904"): ("1 day", "1 day"),  # kept at 30 days, gone at 1 hour
        ("cloud", "4915100000905"): ("40 days", "1 day"),  # kept at 30 days: touched lately
        ("cloud", "4915100000906"): ("2 hours", "2 hours"),  # kept even at 1 hour: window open
        ("onprem", "4915100000907"): ("25 hours", "25 hours"),  # gone at 1 hour
    }
    for (channel, wa_id), (inbound, updated) in contacts.items():
        await fetch(
            db_url,
            "INSERT INTO outbox.contacts (channel, wa_id, last_inbound_at, updated_at)"
            " VALUES ($1, $2, now() - $3::text::interval, now() - $4::text::interval)",
            channel,
            wa_id,
            inbound,
            updated,
        )
    now = datetime.now(UTC)
    retention = Retention(RetentionStore(engine), clock=lambda: now)

    async def left() -> set[str]:
        return {r["wa_id"] for r in await fetch(db_url, "SELECT wa_id FROM outbox.contacts")}

    month = Purge(timedelta(days=30), batch_size=1)
    cutoff, counts = await retention.count(month)
    assert counts[Purged.CONTACTS] == 3
    deleted: list[tuple[Purged, int]] = []
    await retention.purge(month, cutoff, lambda table, n: deleted.append((table, n)))
    assert (Purged.CONTACTS, 3) in deleted
    assert await left() == {"4915100000904", "4915100000905", "4915100000906", "4915100000907"}

    # A short retention still keeps every contact that wrote within the last day.
    hour = Purge(timedelta(hours=1), batch_size=10)
    cutoff, counts = await retention.count(hour)
    assert counts[Purged.CONTACTS] == 3
    await retention.purge(hour, cutoff, lambda table, n: None)
    assert await left() == {"4915100000906"}


async def test_purge_deletes_old_account_events_and_the_pairs_nothing_uses_any_more(
    db_url: str, engine: AsyncEngine
) -> None:
    """The account-event log and the phone-BSUID pairs grew for ever. A pair goes once it is
    older than the retention and neither spelling has a contact (a window) or an open row (a
    line's order) left, including a contact the same purge deletes."""
    for recorded in ("40 days", "35 days", "1 day"):
        await fetch(
            db_url,
            "INSERT INTO outbox.account_events (channel, kind, event, effect, at, recorded_at)"
            " VALUES ('cloud', 'account', 'ACCOUNT_UPDATE', 'recorded', now(),"
            " now() - $1::text::interval)",
            recorded,
        )
    pairs = {  # bsuid: (phone, learned ago)
        "US.1001": ("4915100000911", "40 days"),  # gone: nothing uses it
        "US.1002": ("4915100000912", "40 days"),  # kept: the phone wrote yesterday
        "US.1003": ("4915100000913", "40 days"),  # kept: the BSUID wrote yesterday
        "US.1004": ("4915100000914", "40 days"),  # kept: a queued row to the phone
        "US.1005": ("4915100000915", "1 day"),  # kept: learned lately
        "US.1006": ("4915100000916", "40 days"),  # gone with its contact, old too
        "US.1007": ("4915100000917", "40 days"),  # gone: its only row is finished
        "US.1008": ("4915100000918", "40 days"),  # kept: a row written to the BSUID in flight
    }
    for bsuid, (phone, learned) in pairs.items():
        await fetch(
            db_url,
            "INSERT INTO outbox.identity_pairs (channel, bsuid, wa_id, learned_at, source)"
            " VALUES ('cloud', $1, $2, now() - $3::text::interval, 'inbound')",
            bsuid,
            phone,
            learned,
        )
    for wa_id, wrote in (
        ("4915100000912", "1 day"),
        ("US.1003", "1 day"),
        ("4915100000916", "40 days"),
    ):
        await fetch(
            db_url,
            "INSERT INTO outbox.contacts (channel, wa_id, last_inbound_at, updated_at)"
            " VALUES ('cloud', $1, now() - $2::text::interval, now() - $2::text::interval)",
            wa_id,
            wrote,
        )
    await _put(db_url, "queued", "4915100000914", send_after="now() + interval '1 day'")
    await _put(db_url, "read", "4915100000917", updated_at="now() - interval '1 day'")
    in_flight = await _put(db_url, "sending", "US.1008")
    [row] = await fetch(db_url, "SELECT wa_id FROM outbox.messages WHERE id = $1", in_flight)
    assert row["wa_id"] == "4915100000918"  # keyed on the paired phone at insert

    now = datetime.now(UTC)
    retention = Retention(RetentionStore(engine), clock=lambda: now)
    month = Purge(timedelta(days=30), batch_size=1)
    cutoff, counts = await retention.count(month)
    assert counts[Purged.ACCOUNT_EVENTS] == 2
    # Counted before the contacts go: the pair that the contact's purge frees is not yet in.
    assert counts[Purged.IDENTITY_PAIRS] == 2
    deleted: dict[Purged, int] = {}
    await retention.purge(month, cutoff, deleted.__setitem__)
    assert deleted[Purged.ACCOUNT_EVENTS] == 2
    assert deleted[Purged.CONTACTS] == 1
    assert deleted[Purged.IDENTITY_PAIRS] == 3

    left = await fetch(db_url, "SELECT bsuid FROM outbox.identity_pairs ORDER BY bsuid")
    assert [r["bsuid"] for r in left] == ["US.1002", "US.1003", "US.1004", "US.1005", "US.1008"]
    events = await fetch(db_url, "SELECT count(*) AS n FROM outbox.account_events")
    assert events[0]["n"] == 1
