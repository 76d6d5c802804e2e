"""`outbox replay`, `cancel` and `purge` as an operator runs them, on a real database."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db.housekeeping import HousekeepingStore
from outbox.db.messages import MessageStore
from outbox.db.operator_store import OperatorStore
from outbox.domain.models import State
from outbox.domain.ratelimit import Limits
from outbox.ports import Selector
from outbox.sandbox import Sandbox
from tests.support import (
    SUBPROCESS_ENV,
    config_toml,
    drain,
    fetch,
    insert,
    row,
    run_process,
    settings_for,
)
from tests.support import outbox_command as _outbox

pytestmark = pytest.mark.slow

_TEXT = '{"type":"text","text":{"body":"hi"}}'
_TEMPLATE = '{"type":"template","template":{"name":"t","language":{"code":"en"}}}'
TEMPLATE = {"type": "template", "template": {"name": "t", "language": {"code": "en"}}}
TEXT = {"type": "text", "text": {"body": "hi"}}
R1 = "4915100000001"
REFUSED = "it was {} per its status history (--force sends it)"
LIMITS = Limits(rate=1000, burst=1000)


async def _seed(db_url: str, state: str, *, payload: str = _TEMPLATE, **columns: str) -> int:
    names = ", ".join(["channel", "recipient", "payload", "state", *columns])
    values = ", ".join(
        ["'cloud'", "'4915100000009'", f"'{payload}'", f"'{state}'", *columns.values()]
    )
    [record] = await fetch(
        db_url, f"INSERT INTO outbox.messages ({names}) VALUES ({values}) RETURNING id"
    )
    return int(record["id"])


async def _put(db_url: str, state: str = "failed", **columns: str) -> int:
    """One row; column values are SQL expressions. A failed cloud row to R1 with a template
    unless told otherwise."""
    values = {
        "channel": "'cloud'",
        "recipient": f"'{R1}'",
        "payload": f"'{_TEMPLATE}'",
        "state": f"'{state}'",
        "error_code": "'131026'" if state == "failed" else "NULL",
        "attempts": "1",
        **columns,
    }
    [record] = await fetch(
        db_url,
        f"INSERT INTO outbox.messages ({', '.join(values)}) "
        f"VALUES ({', '.join(values.values())}) RETURNING id",
    )
    return int(record["id"])


async def _history(db_url: str, message_id: int, status: str) -> None:
    await fetch(
        db_url,
        "INSERT INTO outbox.status_history (message_id, wamid, status, at, verdict)"
        " VALUES ($1, $2, $3, now(), 'applied')",
        message_id,
        f"wamid.H{message_id}",
        status,
    )


async def _cli(config: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`outbox ARGS --config CONFIG` in a subprocess, its stdin not a terminal (so never a
    confirmation prompt, whatever terminal runs the tests)."""
    return await run_process(
        sys.executable, "-m", "outbox", *args, "--config", str(config),
        env={**os.environ, **SUBPROCESS_ENV, "COLUMNS": "200", **(env or {})},
    )  # fmt: skip


@pytest.fixture
def config(db_url: str, tmp_path: Path) -> Path:
    path = tmp_path / "outbox.toml"
    path.write_text(config_toml(db_url, "http://127.0.0.1:9"))
    return path


_LINE = re.compile(r"^\s*(\d+)  (\S+)\s+(\S+)\s+(\S+)\s+(\d+)  (\S+)\s+(.*)$")


def _listed(out: str) -> dict[int, tuple[str, str]]:
    """The rows of a replay/cancel table: id -> (action, why)."""
    rows = {}
    for line in out.splitlines():
        if match := _LINE.match(line):
            rows[int(match[1])] = (match[6], match[7])
    return rows


async def _dump(db_url: str) -> list[list[dict[str, Any]]]:
    tables = ("messages", "operator_actions", "status_history", "webhook_events", "parked_statuses")
    return [
        [dict(r) for r in await fetch(db_url, f"SELECT * FROM outbox.{table} ORDER BY id")]
        for table in tables
    ]


async def _states(db_url: str, *ids: int) -> list[str]:
    return [str((await row(db_url, i))["state"]) for i in ids]


async def test_replay_dry_run_then_replay_keeps_lineage(db_url: str, tmp_path: Path) -> None:
    config = tmp_path / "outbox.toml"
    config.write_text(config_toml(db_url, "http://127.0.0.1:9"))
    failed = await _seed(
        db_url, "failed", error_code="'131026'", attempts="1", failed_at="now()", wamid="'wamid.F1'"
    )
    delivered_then_failed = await _seed(db_url, "failed", error_code="'131026'", attempts="1")
    await fetch(
        db_url,
        "INSERT INTO outbox.status_history (message_id, wamid, status, at, verdict)"
        " VALUES ($1, 'wamid.D1', 'delivered', now(), 'applied')",
        delivered_then_failed,
    )
    code, out, err = await _outbox(
        "replay", "--error-code", "131026", "--dry-run", "--config", str(config)
    )
    assert code == 0, err
    assert "would replay: 1" in out
    assert "skipped, it was delivered per its status history" in out
    [before] = await fetch(db_url, "SELECT state FROM outbox.messages WHERE id = $1", failed)
    assert before["state"] == "failed"

    code, out, err = await _outbox(
        "replay",
        "--error-code",
        "131026",
        "--reason",
        "outage",
        "--actor",
        "ops",
        "--config",
        str(config),
    )
    assert code == 0, err
    assert "replayed: 1" in out
    [after] = await fetch(
        db_url,
        "SELECT state, attempts, error_code, replays, replayed_at FROM outbox.messages"
        " WHERE id = $1",
        failed,
    )
    assert (after["state"], after["attempts"], after["error_code"], after["replays"]) == (
        "queued",
        0,
        None,
        1,
    )
    assert after["replayed_at"] is not None
    code, out, err = await _outbox("show", str(failed), "--config", str(config))
    assert code == 0, err
    assert "replay by ops; was failed after 1 attempts, error 131026, wamid wamid.F1: outage" in out


# Dry runs


async def test_dry_runs_change_nothing_and_list_each_row_with_its_action(
    db_url: str, config: Path
) -> None:
    plain = await _put(db_url, wamid="'wamid.A'", failed_at="now()")
    delivered = await _put(db_url)
    await _history(db_url, delivered, "delivered")
    unknown = await _put(db_url, "unknown", error_code="'lease_expired'")
    expired = await _put(db_url, "expired", expires_at="now() - interval '1 hour'")
    queued = await _put(db_url, "queued")
    # An earlier action on record must survive a dry run too.
    await fetch(
        db_url,
        "INSERT INTO outbox.operator_actions (message_id, action, actor, from_state, attempts)"
        " VALUES ($1, 'replay', 'earlier', 'failed', 3)",
        plain,
    )
    before = await _dump(db_url)

    every = ["--state", "failed", "--state", "unknown", "--state", "expired"]
    (rc, out, err), (crc, cout, cerr) = await asyncio.gather(
        _cli(config, "replay", "--all", *every, "--dry-run"),
        _cli(config, "cancel", "--all", "--state", "queued", "--state", "unknown", "--dry-run"),
    )
    assert rc == 0, err
    assert _listed(out) == {
        plain: ("replay", "sends as template"),
        delivered: ("skip", REFUSED.format("delivered")),
        unknown: (
            "replay",
            "the first request may have reached the API: may arrive twice; sends as template",
        ),
        expired: ("skip", "expires_at has passed (--expires-in gives it a new one)"),
    }
    assert "would replay: 2" in out
    assert crc == 0, cerr
    assert _listed(cout) == {
        unknown: ("cancel", "cancelled; the request already made may still be delivered"),
        queued: ("cancel", "cancelled"),
    }
    assert "would cancel: 2" in cout
    assert await _dump(db_url) == before


# Selectors


async def test_selectors_each_narrow_and_all_must_match(db_url: str, config: Path) -> None:
    hour_ago = "now() - interval '1 hour'"
    match = await _put(db_url, created_at=hour_ago)
    other_channel = await _put(db_url, channel="'onprem'", created_at=hour_ago)
    other_code = await _put(db_url, error_code="'http_500'", created_at=hour_ago)
    code_503 = await _put(db_url, error_code="'http_503'", created_at=hour_ago)
    too_old = await _put(db_url, created_at="now() - interval '3 hours'")
    too_new = await _put(db_url)  # created now: after --until
    other_recipient = await _put(db_url, recipient="'4915100000002'", created_at=hour_ago)
    unknown = await _put(db_url, "unknown", created_at=hour_ago)
    expired = await _put(db_url, "expired", created_at=hour_ago)
    failed = {match, other_channel, other_code, code_503, too_old, too_new, other_recipient}

    now = datetime.now(UTC)
    until = (now - timedelta(minutes=30)).replace(tzinfo=None).isoformat()  # no zone: UTC
    since_zoned = (now - timedelta(hours=2)).astimezone(timezone(timedelta(hours=2))).isoformat()
    spelled = "+49 (151) 000-000.01"  # R1 as a producer may write it
    cases: list[tuple[list[str], set[int]]] = [
        (["--id", str(match), "--id", str(too_old)], {match, too_old}),
        # Named, but the default state is failed: listed as skipped, with the reason.
        (["--id", str(unknown)], {unknown}),
        (["--channel", "onprem"], {other_channel}),
        (["--error-code", "http_500", "--error-code", "http_503"], {other_code, code_503}),
        (["--since", "2h"], failed - {too_old}),
        (["--since", since_zoned], failed - {too_old}),
        (["--until", until], failed - {too_new}),
        (["--until", "30m"], failed - {too_new}),
        (["--recipient", spelled], failed - {other_recipient}),
        (["--state", "unknown", "--all"], {unknown}),
        (["--state", "expired", "--state", "unknown", "--channel", "cloud"], {unknown, expired}),
        (["--all"], failed),
    ]
    # A few at a time: a dozen interpreters starting at once on a shared 2-core machine can
    # take longer than _cli's timeout.
    slots = asyncio.Semaphore(4)

    async def dry_run(args: list[str]) -> tuple[int, str, str]:
        async with slots:
            return await _cli(config, "replay", "--dry-run", *args)

    results = await asyncio.gather(*(dry_run(args) for args, _ in cases))
    for (args, expected), (code, out, err) in zip(cases, results, strict=True):
        assert code == 0, (args, err)
        assert set(_listed(out)) == expected, args
        if args == ["--id", str(unknown)]:
            assert _listed(out) == {
                unknown: ("skip", "state unknown is not selected (--state unknown selects it)")
            }
        if not expected:
            assert "no message matches; nothing to replay" in out

    before = {i: dict(await row(db_url, i)) for i in failed - {match}}
    code, out, err = await _cli(
        config,
        "replay",
        "--channel", "cloud",
        "--error-code", "131026",
        "--since", "2h",
        "--until", until,
        "--recipient", spelled,
    )  # fmt: skip
    assert code == 0, err
    assert "replayed: 1" in out
    assert await _states(db_url, match) == ["queued"]
    # Each of these misses exactly one of the selectors.
    assert {i: dict(await row(db_url, i)) for i in failed - {match}} == before


async def test_no_selector_is_refused(db_url: str, config: Path) -> None:
    await _put(db_url)
    before = await _dump(db_url)
    for verb in ("replay", "cancel"):
        code, out, err = await _cli(config, verb)
        assert code == 2, out
        assert "no selector given" in err
        assert "--all" in err
        assert "Traceback" not in err
        # A state alone does not narrow: it is what --all is for.
        code, _, err = await _cli(config, verb, "--state", "unknown")
        assert code == 2
        assert "no selector given" in err
    assert await _dump(db_url) == before


# Refusals and --force


async def test_rows_with_delivery_evidence_are_refused_unless_forced(
    db_url: str, config: Path
) -> None:
    evidence = {}
    for status in ("sent", "delivered", "read"):
        evidence[status] = await _put(db_url)
        await _history(db_url, evidence[status], status)
    evidence["sent_at"] = await _put(db_url, sent_at="now()")
    evidence["delivered_at"] = await _put(db_url, delivered_at="now()")
    evidence["read_at"] = await _put(db_url, read_at="now()")
    # A failed status in the history is no sign of delivery.
    failed_status = await _put(db_url)
    await _history(db_url, failed_status, "failed")
    plain = await _put(db_url)
    refused = set(evidence.values())
    before = {i: dict(await row(db_url, i)) for i in refused}

    code, out, err = await _cli(config, "replay", "--all")
    assert code == 0, err
    listed = _listed(out)
    reached = {"sent_at": "sent", "delivered_at": "delivered", "read_at": "read"}
    for name, message_id in evidence.items():
        assert listed[message_id] == ("skip", REFUSED.format(reached.get(name, name)))
    assert "replayed: 2" in out
    assert f"skipped, {REFUSED.format('sent')}: 2" in out
    assert f"skipped, {REFUSED.format('delivered')}: 2" in out
    assert f"skipped, {REFUSED.format('read')}: 2" in out
    assert await _states(db_url, failed_status, plain) == ["queued", "queued"]
    assert {i: dict(await row(db_url, i)) for i in refused} == before

    code, out, err = await _cli(config, "replay", "--all", "--force", "--actor", "ops")
    assert code == 0, err
    assert _listed(out)[evidence["delivered"]] == (
        "replay",
        "forced: it was delivered; sends as template",
    )
    assert "replayed: 6" in out
    for message_id in refused:
        replayed = await row(db_url, message_id)
        assert replayed["state"] == "queued"
        assert (replayed["sent_at"], replayed["delivered_at"], replayed["read_at"]) == (None,) * 3
    actions = await fetch(
        db_url, "SELECT message_id, forced FROM outbox.operator_actions ORDER BY message_id"
    )
    assert {a["message_id"]: a["forced"] for a in actions} == {
        failed_status: False,
        plain: False,
        **dict.fromkeys(refused, True),
    }
    code, out, err = await _cli(config, "show", str(evidence["read"]))
    assert code == 0, err
    assert "replay (forced) by ops; was failed after 1 attempts, error 131026" in out


# Expiry


async def test_rows_past_their_expiry_need_a_new_one(db_url: str, config: Path) -> None:
    expired = await _put(
        db_url, "expired", error_code="'expired'", expires_at="now() - interval '1 hour'"
    )
    failed = await _put(db_url, expires_at="now() - interval '1 minute'")
    still_ahead = await _put(db_url, expires_at="now() + interval '1 hour'")

    code, out, err = await _cli(
        config, "replay", "--state", "expired", "--state", "failed", "--all"
    )
    assert code == 0, err
    passed = "expires_at has passed (--expires-in gives it a new one)"
    assert _listed(out) == {
        expired: ("skip", passed),
        failed: ("skip", passed),
        still_ahead: ("replay", "sends as template"),
    }
    assert f"skipped, {passed}: 2" in out
    assert await _states(db_url, expired, failed) == ["expired", "failed"]
    [kept] = await fetch(
        db_url, "SELECT expires_at FROM outbox.messages WHERE id = $1", still_ahead
    )

    # The option, and its environment fallback.
    started = datetime.now(UTC)
    code, out, err = await _cli(
        config, "replay", "--state", "expired", "--id", str(expired), "--expires-in", "2h"
    )
    assert code == 0, err
    assert "replayed: 1" in out
    code, out, err = await _cli(
        config, "replay", "--id", str(failed), env={"OUTBOX_REPLAY_EXPIRES_IN": "2h"}
    )
    assert code == 0, err
    assert "replayed: 1" in out
    ended = datetime.now(UTC)
    for message_id in (expired, failed):
        replayed = await row(db_url, message_id)
        assert replayed["state"] == "queued"
        assert started + timedelta(hours=2) <= replayed["expires_at"] <= ended + timedelta(hours=2)
    # A replay without --expires-in keeps the expiry the row had.
    [same] = await fetch(
        db_url, "SELECT expires_at FROM outbox.messages WHERE id = $1", still_ahead
    )
    assert same == kept


async def test_the_otp_recipe_warns_about_a_row_rescued_past_its_expiry(
    db_url: str, config: Path, engine: AsyncEngine
) -> None:
    """README, "Replaying failed sends": OTPs that expired while the channel was paused. A row
    whose sender died with its request on the wire after its expiry may have arrived: the replay
    says so, and the recipe's `--error-code expired` leaves it out."""
    rescued = await insert(db_url, "cloud", R1, TEXT, expires_at=datetime.now(UTC))
    claim = await MessageStore(engine).claim("cloud", 1, "died", timedelta(0), LIMITS)
    assert [m.id for m in claim.messages] == [rescued]
    assert [s.id for s in await HousekeepingStore(engine).rescue_expired_leases()] == [rescued]
    never_sent = await _put(
        db_url, "expired", error_code="'expired'", expires_at="now() - interval '1 minute'"
    )
    selected = ["--channel", "cloud", "--state", "expired", "--since", "1h", "--expires-in", "10m"]

    code, out, err = await _cli(config, "replay", *selected, "--dry-run")
    assert code == 0, err
    assert _listed(out) == {
        rescued: (
            "replay",
            "the first request may have reached the API: may arrive twice; sends as freeform",
        ),
        never_sent: ("replay", "sends as template"),
    }
    assert "would replay: 2" in out
    assert "of these, may arrive twice (a request may have reached the API): 1" in out

    code, out, err = await _cli(config, "replay", *selected, "--error-code", "expired")
    assert code == 0, err
    assert set(_listed(out)) == {never_sent}
    assert "replayed: 1" in out
    assert await _states(db_url, rescued, never_sent) == ["expired", "queued"]


# End to end: the daemon sends replayed rows again


async def test_replayed_rows_are_sent_again_and_show_their_lineage(
    db_url: str, config: Path, sandbox: tuple[Sandbox, str]
) -> None:
    api, base_url = sandbox
    failed_at = datetime.now(UTC) - timedelta(hours=1)
    ids = {
        "4915100000011": await insert(
            db_url, "cloud", "4915100000011", TEXT, state="failed", wamid="wamid.OLD1",
            error_code="http_500", attempts=8, failed_at=failed_at,
        ),
        "4915100000012": await insert(
            db_url, "onprem", "4915100000012", TEMPLATE, state="failed", wamid="wamid.OLD2",
            error_code="131026", attempts=1, failed_at=failed_at,
        ),
        "4915100000013": await insert(
            db_url, "cloud", "4915100000013", TEXT, state="unknown", wamid="wamid.OLD3",
            error_code="lease_expired", attempts=1,
        ),
    }  # fmt: skip
    code, out, err = await _cli(
        config, "replay", "--all", "--state", "failed", "--state", "unknown",
        "--actor", "ops", "--reason", "outage over",
    )  # fmt: skip
    assert code == 0, err
    assert "replayed: 3" in out

    await drain(settings_for(db_url, base_url))
    assert sorted(r.body["to"] for r in api.message_requests()) == sorted(ids)
    for recipient, message_id in ids.items():
        sent = await row(db_url, message_id)
        [request] = [r for r in api.message_requests() if r.body["to"] == recipient]
        assert sent["state"] == "accepted"
        assert sent["wamid"] == request.message_id
        assert not sent["wamid"].startswith("wamid.OLD")
        assert (sent["attempts"], sent["error_code"], sent["replays"]) == (1, None, 1)
        assert sent["replayed_at"] is not None

    message_id = ids["4915100000011"]
    new_wamid = (await row(db_url, message_id))["wamid"]
    code, out, err = await _cli(config, "show", str(message_id))
    assert code == 0, err
    assert re.search(rf"^\s+wamid\s+{re.escape(new_wamid)}$", out, re.M)
    assert re.search(r"^\s+state\s+accepted$", out, re.M)
    assert "operator actions" in out
    assert (
        "replay by ops; was failed after 8 attempts, error http_500, wamid wamid.OLD1: outage over"
        in out
    )


# Rows that change between selection and write


async def test_rows_that_changed_after_selection_are_left_alone(
    db_url: str, engine: AsyncEngine
) -> None:
    store = OperatorStore(engine)
    accepted = await _put(db_url)
    delivered = await _put(db_url)
    expiring = await _put(db_url)
    untouched = await _put(db_url)
    selector = Selector(states=(State.FAILED,), channel="cloud")
    ids = [c.id async for page in store.candidates(selector) for c in page]
    assert ids == [accepted, delivered, expiring, untouched]

    # Meanwhile: a late answer, a late status, and the expiry passing.
    await fetch(
        db_url,
        "UPDATE outbox.messages SET state = 'accepted', wamid = 'w.L' WHERE id = $1",
        accepted,
    )
    await _history(db_url, delivered, "delivered")
    await fetch(
        db_url, "UPDATE outbox.messages SET expires_at = now() - interval '1 second' WHERE id = $1",
        expiring,
    )  # fmt: skip
    before = {i: dict(await row(db_url, i)) for i in (accepted, delivered, expiring)}

    applied = await store.replay(
        ids, selector.states, actor="t", forced=False, expires_at=None, note=None
    )
    assert (applied.done, applied.changed) == ([untouched], [accepted, delivered, expiring])
    assert {i: dict(await row(db_url, i)) for i in (accepted, delivered, expiring)} == before
    actions = await fetch(db_url, "SELECT message_id FROM outbox.operator_actions")
    assert [a["message_id"] for a in actions] == [untouched]

    # What the operator decides to override goes through: force for the evidence, a new expiry.
    ahead = datetime.now(UTC) + timedelta(hours=1)
    forced = await store.replay(
        [delivered, expiring], selector.states, actor="t", forced=True, expires_at=ahead, note=None
    )
    assert (forced.done, forced.changed) == ([delivered, expiring], [])

    # Cancel alike: a row a sender claimed in between is not cancelled under it.
    claimed = await _put(db_url, "queued", recipient="'4915100000031'")
    waiting = await _put(db_url, "queued", recipient="'4915100000032'")
    await fetch(
        db_url,
        "UPDATE outbox.messages SET state = 'sending', claimed_by = 'w',"
        " lease_until = now() + interval '1 minute' WHERE id = $1",
        claimed,
    )
    cancelled = await store.cancel([claimed, waiting], [State.QUEUED], actor="t", note="n")
    assert (cancelled.done, cancelled.changed) == ([waiting], [claimed])
    assert await _states(db_url, claimed, waiting) == ["sending", "cancelled"]


# Cancel


async def test_cancel_marks_queued_rows_with_the_reason_and_keeps_lineage(
    db_url: str, config: Path
) -> None:
    first = await _put(db_url, "queued", recipient="'4915100000021'")
    second = await _put(db_url, "queued", recipient="'4915100000022'")
    other_channel = await _put(db_url, "queued", channel="'onprem'")
    sending = await _put(
        db_url, "sending", claimed_by="'w'", lease_until="now() + interval '1 minute'"
    )
    unknown = await _put(db_url, "unknown", wamid="'wamid.U'")
    before = await _dump(db_url)

    code, out, err = await _cli(config, "cancel", "--channel", "cloud", "--dry-run")
    assert code == 0, err
    assert _listed(out) == {first: ("cancel", "cancelled"), second: ("cancel", "cancelled")}
    assert "would cancel: 2" in out
    assert await _dump(db_url) == before

    code, out, err = await _cli(
        config, "cancel", "--channel", "cloud", "--reason", "campaign stopped", "--actor", "ops"
    )
    assert code == 0, err
    assert "cancelled: 2" in out
    for message_id in (first, second):
        cancelled = await row(db_url, message_id)
        assert (cancelled["state"], cancelled["error_code"], cancelled["error_detail"]) == (
            "cancelled",
            "cancelled",
            "campaign stopped",
        )
        assert cancelled["error_title"] == "cancelled by an operator"
    actions = await fetch(
        db_url,
        "SELECT message_id, action, actor, from_state, note FROM outbox.operator_actions"
        " ORDER BY message_id",
    )
    assert [tuple(a) for a in actions] == [
        (first, "cancel", "ops", "queued", "campaign stopped"),
        (second, "cancel", "ops", "queued", "campaign stopped"),
    ]
    assert await _states(db_url, other_channel, sending, unknown) == [
        "queued",
        "sending",
        "unknown",
    ]

    # An unknown row is cancelled only when asked for by state, with the caveat shown.
    code, out, err = await _cli(config, "cancel", "--state", "unknown", "--id", str(unknown))
    assert code == 0, err
    assert _listed(out) == {
        unknown: ("cancel", "cancelled; the request already made may still be delivered")
    }
    assert await _states(db_url, unknown) == ["cancelled"]
    [action] = await fetch(
        db_url,
        "SELECT from_state, wamid FROM outbox.operator_actions WHERE message_id = $1",
        unknown,
    )
    assert tuple(action) == ("unknown", "wamid.U")

    # A row in flight is never cancelled; `sending` is not even a state one may ask for.
    code, out, err = await _cli(config, "cancel", "--state", "sending", "--all")
    assert code == 2
    assert "invalid choice" in err
    assert await _states(db_url, sending) == ["sending"]


async def test_cancelling_a_row_in_flight_says_why_not(db_url: str, config: Path) -> None:
    sending = await _put(
        db_url, "sending", claimed_by="'w'", lease_until="now() + interval '1 minute'"
    )
    code, out, err = await _cli(config, "cancel", "--id", str(sending))
    assert await _states(db_url, sending) == ["sending"]
    assert code == 0, err
    assert _listed(out) == {sending: ("skip", "in flight: its outcome is about to be written")}


async def test_cancelling_a_recipients_head_row_releases_the_next(
    db_url: str, config: Path, sandbox: tuple[Sandbox, str]
) -> None:
    api, base_url = sandbox
    recipient = "4915100000077"
    # The head waits for an hour; the row behind it may not overtake it.
    head = await insert(
        db_url, "cloud", recipient, TEMPLATE, send_after=datetime.now(UTC) + timedelta(hours=1)
    )
    behind = await insert(db_url, "cloud", recipient, TEMPLATE)
    settings = settings_for(db_url, base_url)
    await drain(settings)
    assert api.message_requests() == []
    assert await _states(db_url, head, behind) == ["queued", "queued"]

    code, out, err = await _cli(config, "cancel", "--id", str(head), "--reason", "obsolete")
    assert code == 0, err
    assert "cancelled: 1" in out
    await drain(settings)
    [request] = api.message_requests()
    assert request.body["to"] == recipient
    assert await _states(db_url, head, behind) == ["cancelled", "accepted"]


# Purge

_MESSAGES = """
INSERT INTO outbox.messages (channel, recipient, payload, state, updated_at, created_at)
SELECT 'cloud', '49151' || lpad(g::text, 8, '0'), '{"type":"text","text":{"body":"x"}}',
       (ARRAY['queued', 'sending', 'unknown', 'accepted', 'sent', 'delivered', 'read',
              'failed', 'expired', 'cancelled'])[g % 10 + 1],
       CASE WHEN g <= 30 THEN now() - interval '40 days' ELSE now() - interval '29 days' END,
       now() - interval '41 days'
FROM generate_series(1, 40) AS g
"""
# Every message with history and lineage rows, which go with it.
_HISTORY = """
INSERT INTO outbox.status_history (message_id, wamid, status, at, verdict)
SELECT id, 'wamid.' || id, 'sent', now() - interval '40 days', 'applied' FROM outbox.messages
"""
_ACTIONS = """
INSERT INTO outbox.operator_actions (message_id, action, actor, from_state, attempts, at)
SELECT id, 'replay', 'ops', 'failed', 1, now() - interval '40 days' FROM outbox.messages
"""
# Interleaved kinds, so that keyset batches step over rows they must keep:
# g % 5 = 0 unprocessed (4), g % 7 = 0 processed lately (3), the other 14 processed long ago.
_WEBHOOKS = """
INSERT INTO outbox.webhook_events (channel, payload, received_at, processed_at)
SELECT 'cloud', jsonb_build_object('g', g), now() - interval '41 days',
       CASE WHEN g % 5 = 0 THEN NULL
            WHEN g % 7 = 0 THEN now() - interval '1 day'
            ELSE now() - interval '40 days' END
FROM generate_series(1, 21) AS g
"""
# g % 4 = 0 never orphaned (5, parked long ago), g % 4 = 1 orphaned lately (5), the other 10
# orphaned long ago.
_PARKED = """
INSERT INTO outbox.parked_statuses (channel, status, parked_at, orphaned_at)
SELECT 'cloud', jsonb_build_object('g', g), now() - interval '41 days',
       CASE WHEN g % 4 = 0 THEN NULL
            WHEN g % 4 = 1 THEN now() - interval '1 day'
            ELSE now() - interval '40 days' END
FROM generate_series(1, 20) AS g
"""
_COUNTS = re.compile(r"^  (messages|webhook_events|orphan statuses|contacts)\s+(\d+)$", re.M)


async def _ids(db_url: str, sql: str) -> set[int]:
    return {r[0] for r in await fetch(db_url, sql)}


async def test_purge_deletes_old_finished_rows_in_batches_and_keeps_the_rest(
    db_url: str, config: Path
) -> None:
    for sql in (_MESSAGES, _HISTORY, _ACTIONS, _WEBHOOKS, _PARKED):
        await fetch(db_url, sql)
    messages = {r["id"]: (r["state"], r["old"]) for r in await fetch(
        db_url,
        "SELECT id, state, updated_at < now() - interval '30 days' AS old FROM outbox.messages",
    )}  # fmt: skip
    terminal = {"read", "failed", "expired", "cancelled"}
    delivery = {"accepted", "sent", "delivered"}
    old_terminal = {i for i, (state, old) in messages.items() if old and state in terminal}
    old_delivery = {i for i, (state, old) in messages.items() if old and state in delivery}
    assert (len(old_terminal), len(old_delivery)) == (12, 9)
    recent = "IS NULL OR {0} > now() - interval '2 days'"
    kept_webhooks = await _ids(
        db_url,
        f"SELECT id FROM outbox.webhook_events WHERE processed_at {recent.format('processed_at')}",
    )
    kept_parked = await _ids(
        db_url,
        f"SELECT id FROM outbox.parked_statuses WHERE orphaned_at {recent.format('orphaned_at')}",
    )
    assert (len(kept_webhooks), len(kept_parked)) == (7, 10)
    before = await _dump(db_url)

    # The retention period from the environment; a dry run counts and deletes nothing.
    code, out, err = await _cli(
        config, "purge", "--dry-run", env={"OUTBOX_PURGE_OLDER_THAN": "30d"}
    )
    assert code == 0, err
    assert dict(_COUNTS.findall(out)) == {
        "messages": "12",
        "webhook_events": "14",
        "orphan statuses": "10",
        "contacts": "0",
    }
    assert "dry run: nothing deleted" in out
    assert await _dump(db_url) == before

    code, out, err = await _cli(config, "purge", "--older-than", "30d", "--batch-size", "7")
    assert code == 0, err
    assert "deleted 12 messages" in out
    assert "deleted 14 webhook_events" in out
    assert "deleted 10 orphan statuses" in out
    remaining = set(messages) - old_terminal
    assert await _ids(db_url, "SELECT id FROM outbox.messages") == remaining
    assert await _ids(db_url, "SELECT message_id FROM outbox.status_history") == remaining
    assert await _ids(db_url, "SELECT message_id FROM outbox.operator_actions") == remaining
    assert await _ids(db_url, "SELECT id FROM outbox.webhook_events") == kept_webhooks
    assert await _ids(db_url, "SELECT id FROM outbox.parked_statuses") == kept_parked

    code, out, err = await _cli(
        config, "purge", "--older-than", "30d", "--include-delivered", "--dry-run"
    )
    assert code == 0, err
    assert dict(_COUNTS.findall(out)) == {
        "messages": "9",
        "webhook_events": "0",
        "orphan statuses": "0",
        "contacts": "0",
    }
    code, out, err = await _cli(
        config, "purge", "--older-than", "30d", "--include-delivered", "--batch-size", "7"
    )
    assert code == 0, err
    assert "deleted 9 messages" in out
    remaining -= old_delivery
    assert await _ids(db_url, "SELECT id FROM outbox.messages") == remaining
    assert await _ids(db_url, "SELECT message_id FROM outbox.status_history") == remaining
    # What is left: the old rows that may still change, and everything recent.
    assert {messages[i] for i in remaining} == {
        *((state, True) for state in ("queued", "sending", "unknown")),
        *((state, False) for state in terminal | delivery | {"queued", "sending", "unknown"}),
    }


async def test_purge_refuses_a_short_or_missing_retention(db_url: str, config: Path) -> None:
    await fetch(db_url, _MESSAGES)
    before = await _dump(db_url)
    for args in (["--older-than", "10m"], ["--older-than", "3599s"], ["--older-than", "soon"], []):
        code, out, err = await _cli(config, "purge", *args)
        assert code == 2, (args, out)
        assert "--older-than" in err
        assert "Traceback" not in err
    code, _, err = await _cli(config, "purge", "--older-than", "30d", "--batch-size", "0")
    assert code == 2
    assert "--batch-size must be at least 1" in err
    assert await _dump(db_url) == before


async def test_out_of_range_durations_are_clear_errors(config: Path) -> None:
    for args in (["purge", "--older-than", "1e10d"], ["replay", "--since", "999999d"]):
        code, _, err = await _cli(config, *args)
        assert "Traceback" not in err, args
        assert code == 2, args


# Help, summaries and progress


async def test_help_names_every_environment_fallback(config: Path) -> None:
    expected = {
        "replay": ["OUTBOX_ACTOR", "OUTBOX_SHOW_ROWS", "OUTBOX_REPLAY_EXPIRES_IN", "OUTBOX_CONFIG"],
        "cancel": ["OUTBOX_ACTOR", "OUTBOX_SHOW_ROWS", "OUTBOX_CONFIG"],
        "purge": ["OUTBOX_PURGE_OLDER_THAN", "OUTBOX_PURGE_BATCH_SIZE", "OUTBOX_CONFIG"],
    }
    results = await asyncio.gather(*(_cli(config, verb, "--help") for verb in expected))
    for (verb, names), (code, out, err) in zip(expected.items(), results, strict=True):
        assert code == 0, err
        assert f"usage: outbox {verb}" in out
        for name in names:
            assert name in out, (verb, name)
    replay_help = results[0][1]
    for option in ("--id", "--channel", "--error-code", "--since", "--until", "--recipient",
                   "--state", "--all", "--dry-run", "--force", "--expires-in", "--reason"):  # fmt: skip
        assert option in replay_help


_FAILED_ROWS = """
INSERT INTO outbox.messages (channel, recipient, payload, state, error_code, attempts)
SELECT 'cloud', '49152' || lpad(g::text, 8, '0'), $1::jsonb, 'failed', 'http_500', 8
FROM generate_series(1, $2) AS g
"""


async def test_a_large_replay_reports_progress_and_counts(db_url: str, config: Path) -> None:
    refused = [await _put(db_url, recipient=f"'491510000009{n}'") for n in range(2)]
    for message_id in refused:
        await _history(db_url, message_id, "delivered")
    await fetch(db_url, _FAILED_ROWS, _TEMPLATE, 1200)

    code, out, err = await _cli(config, "replay", "--all", "--dry-run")
    assert code == 0, err
    assert "would replay: 1200" in out
    assert "... and 1152 more" in out  # 50 rows listed of 1,202
    assert re.findall(r"^replay: \d+/\d+$", err, re.M) == []

    code, out, err = await _cli(config, "replay", "--all", "--actor", "bulk")
    assert code == 0, err
    listed = _listed(out)
    assert len(listed) == 50
    assert listed[refused[0]] == ("skip", REFUSED.format("delivered"))
    summary = out[out.index("... and 1152 more") :].splitlines()[1:]
    assert summary == ["replayed: 1200", f"skipped, {REFUSED.format('delivered')}: 2"]
    # Not a terminal: a plain line per tenth or so, in order, ending at the total.
    progress = [int(n) for n in re.findall(r"^replay: (\d+)/1200$", err, re.M)]
    assert len(progress) >= 2
    assert progress == sorted(progress)
    assert progress[-1] == 1200
    assert "\r" not in err
    [counts] = await fetch(
        db_url,
        "SELECT count(*) FILTER (WHERE state = 'queued' AND replayed_at IS NOT NULL) AS queued,"
        " (SELECT count(*) FROM outbox.operator_actions WHERE actor = 'bulk') AS actions"
        " FROM outbox.messages",
    )
    assert tuple(counts) == (1200, 1200)


async def test_a_terminal_is_asked_for_confirmation(db_url: str, config: Path) -> None:
    message_id = await _put(db_url)

    async def answer(text: bytes) -> tuple[int, str]:
        leader, follower = pty.openpty()
        try:
            os.write(leader, text)
            code, out, _ = await run_process(
                sys.executable, "-m", "outbox", "replay", "--id", str(message_id),
                "--config", str(config), stdin=follower, env={**os.environ, **SUBPROCESS_ENV},
            )  # fmt: skip
        finally:
            os.close(follower)
            os.close(leader)
        return code, out

    code, out = await answer(b"n\n")
    assert code == 1
    assert "replay 1 messages? [y/N]" in out
    assert "nothing changed" in out
    assert await _states(db_url, message_id) == ["failed"]
    code, out = await answer(b"y\n")
    assert code == 0, out
    assert "replayed: 1" in out
    assert await _states(db_url, message_id) == ["queued"]


async def test_listing_no_rows_still_acts_on_all_of_them(db_url: str, config: Path) -> None:
    message_id = await _put(db_url)
    code, out, err = await _cli(config, "replay", "--all", "--show", "0")
    assert code == 0, err
    assert "no message matches" not in out
    assert "replayed: 1" in out
    assert await _states(db_url, message_id) == ["queued"]
