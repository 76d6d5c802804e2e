"""What the result statement writes for issue 18's answers, against PostgreSQL and the sandbox:
a 131050 records the opt-out, a 131056 grows the pair's pause until a success resets it, a held
answer's `message_status` is kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.cli.render import format_message
from outbox.db.inspection import InspectionStore
from outbox.db.messages import MessageStore
from outbox.db.templates import TemplateStore
from outbox.domain.models import SendResult, State
from outbox.domain.ratelimit import Limits
from outbox.domain.templates import TemplateKey
from outbox.ports import ClaimRequest
from outbox.sandbox.faults import Fault
from outbox.sandbox.server import Sandbox
from tests.support import fetch, insert, running, settings_for, wait_until

PROMO: dict[str, Any] = {
    "type": "template",
    "template": {"name": "promo", "language": {"code": "en_US"}},
}
LIMITS = Limits(1000.0, 100.0)


async def one(db_url: str, sql: str, *args: Any) -> Any:
    [[value]] = await fetch(db_url, sql, *args)
    return value


async def test_a_131050_fails_the_row_and_records_the_opt_out(
    db_url: str, engine: AsyncEngine, sandbox: tuple[Sandbox, str]
) -> None:
    api, base_url = sandbox
    api.faults.add(Fault("error_code", code=131050, times=1))
    failed = await insert(db_url, "cloud", "+49 151 0000 0001", PROMO, inbound_ago=None)
    async with running(settings_for(db_url, base_url)):
        await wait_until(lambda: _settled(db_url, failed))
    row = (await fetch(db_url, "SELECT * FROM outbox.messages WHERE id = $1", failed))[0]
    assert (row["state"], row["error_code"], row["attempts"]) == ("failed", "131050", 1)
    [opt_out] = await fetch(db_url, "SELECT * FROM outbox.marketing_preferences")
    assert (opt_out["channel"], opt_out["identity"], opt_out["category"]) == (
        "cloud",
        "4915100000001",
        "marketing_messages",
    )
    assert (opt_out["opted_out"], opt_out["source"]) == (True, "131050")
    assert '"error_code": "131050"' in opt_out["evidence"]
    store = InspectionStore(engine)
    shown = format_message(
        await store.message(failed) or {}, [], [], None, await store.opt_outs(failed)
    )
    assert "marketing       opted out (marketing_messages) at" in shown
    assert "from 131050" in shown


async def _settled(db_url: str, message_id: int) -> bool:
    state = await one(db_url, "SELECT state FROM outbox.messages WHERE id = $1", message_id)
    return bool(state == "failed")


async def _claim_and_answer(
    store: MessageStore, db_url: str, message_id: int, result: dict[str, Any]
) -> None:
    await fetch(
        db_url,
        "UPDATE outbox.messages SET next_attempt_at = NULL WHERE id = $1",
        message_id,
    )
    await fetch(
        db_url, "DELETE FROM outbox.recipient_pace WHERE not_before <= now() AND strikes = 0"
    )
    claim = await store.claim("c", 1, "w", timedelta(minutes=1), LIMITS)
    assert [m.id for m in claim.messages] == [message_id]
    now = datetime.now(UTC)
    await store.complete([SendResult(message_id, at=now, **result)], "w")


async def pause(db_url: str) -> tuple[int, float]:
    row = (
        await fetch(
            db_url,
            "SELECT strikes, extract(epoch FROM not_before - now()) AS left"
            " FROM outbox.recipient_pace WHERE channel = 'c'",
        )
    )[0]
    return row["strikes"], float(row["left"])


async def test_131056_grows_the_pair_pause_and_a_success_resets_it(
    db_url: str, engine: AsyncEngine
) -> None:
    store = MessageStore(engine)
    message_id = await insert(db_url, "c", "4915100000001", PROMO)
    strike = {"state": State.QUEUED, "pace_strike": True, "attempts_delta": -1}
    expected = [(1, 6.0), (2, 24.0), (3, 96.0), (4, 384.0), (5, 600.0), (6, 600.0)]
    for strikes, seconds in expected:
        # The claim skips a paused recipient: lift the pause, keep the strikes.
        await fetch(db_url, "UPDATE outbox.recipient_pace SET not_before = now()")
        await _claim_and_answer(store, db_url, message_id, strike)
        got_strikes, left = await pause(db_url)
        assert got_strikes == strikes
        assert seconds - 2 < left <= seconds
    await fetch(db_url, "UPDATE outbox.recipient_pace SET not_before = now()")
    await _claim_and_answer(
        store,
        db_url,
        message_id,
        {
            "state": State.ACCEPTED,
            "wamid": "wamid.A",
            "message_status": "held_for_quality_assessment",
        },
    )
    assert (await pause(db_url))[0] == 0
    status = await one(
        db_url, "SELECT message_status FROM outbox.messages WHERE id = $1", message_id
    )
    assert status == "held_for_quality_assessment"


async def test_the_claim_holds_marketing_without_spending_tokens_or_attempts(
    db_url: str, engine: AsyncEngine
) -> None:
    otp = {"type": "template", "template": {"name": "otp", "language": {"code": "en_US"}}}
    await TemplateStore(engine).record(
        TemplateKey("c", "otp", "en_US"), source="webhook", category="AUTHENTICATION"
    )
    marketing = [await insert(db_url, "c", f"49151{n:08}", PROMO) for n in range(30)]
    code = await insert(db_url, "c", "4915200000001", otp)
    store, limits = MessageStore(engine), Limits(1.0, 10.0)  # ten tokens, one a second
    # A full bucket of ten, and the channel's marketing held.
    await fetch(
        db_url,
        "INSERT INTO outbox.channel_state (channel, tokens, refilled_at, marketing_hold_until)"
        " VALUES ('c', 10, now(), now() + interval '1 hour')",
    )
    claims = []
    for _ in range(5):
        claim = await store.claim("c", 10, "w", timedelta(minutes=1), limits, template_scope="c")
        claims.append(claim)
        if any(m.id == code for m in claim.messages):
            break
    # Every marketing row is held in the claim, and the OTP is claimed although only ten
    # tokens were ever there (held rows give theirs back).
    assert [m.id for m in claims[-1].messages] == [code]
    held = [m.id for c in claims for m, _ in c.held]
    assert sorted(held) == marketing
    assert all(c.wait == 0.0 for c in claims[:-1])
    rows = await fetch(
        db_url,
        "SELECT state, attempts, error_code FROM outbox.messages WHERE id = ANY($1::bigint[])",
        held,
    )
    assert {(r["state"], r["attempts"], r["error_code"]) for r in rows} == {
        ("queued", 0, "marketing_held")
    }


async def test_one_claim_over_many_channels_holds_each_by_its_own_scope_and_hold(
    db_url: str, engine: AsyncEngine
) -> None:
    """claim_many: each channel's rows meet its own template scope (its WABA) and its own
    marketing hold, read from its locked bucket row; held rows give their tokens back."""
    await TemplateStore(engine).record(
        TemplateKey("waba-1", "promo", "en_US"), source="webhook", status="PAUSED"
    )
    paused = [await insert(db_url, "a", f"49151{n:08}", PROMO) for n in range(2)]
    sent = [await insert(db_url, "b", f"49152{n:08}", PROMO) for n in range(2)]
    marketing = [await insert(db_url, "c", f"49153{n:08}", PROMO) for n in range(2)]
    await fetch(
        db_url,
        "INSERT INTO outbox.channel_state (channel, tokens, refilled_at, marketing_hold_until)"
        " VALUES ('a', 10, now(), NULL), ('b', 10, now(), NULL),"
        " ('c', 10, now(), now() + interval '1 hour')",
    )
    limits = Limits(0.01, 10.0)  # no token comes back by refill during the test
    requests = [
        ClaimRequest("a", 10, limits, "waba-1"),
        ClaimRequest("b", 10, limits, "b"),
        ClaimRequest("c", 10, limits, "c"),
    ]
    claims = await MessageStore(engine).claim_many(requests, "w", timedelta(minutes=1))
    assert (claims["a"].messages, sorted(m.id for m, _ in claims["a"].held)) == ([], paused)
    assert (sorted(m.id for m in claims["b"].messages), claims["b"].held) == (sent, [])
    assert (claims["c"].messages, sorted(m.id for m, _ in claims["c"].held)) == ([], marketing)
    assert claims["a"].wait == claims["c"].wait == 0.0  # their tokens are back: claim again
    rows = await fetch(
        db_url, "SELECT channel, state, attempts, error_code FROM outbox.messages ORDER BY id"
    )
    assert [(r["channel"], r["state"], r["attempts"], r["error_code"]) for r in rows] == [
        *[("a", "queued", 0, "template_held")] * 2,
        *[("b", "sending", 1, None)] * 2,
        *[("c", "queued", 0, "marketing_held")] * 2,
    ]
    tokens = await fetch(
        db_url, "SELECT channel, round(tokens) AS t FROM outbox.channel_state ORDER BY channel"
    )
    assert [(r["channel"], r["t"]) for r in tokens] == [("a", 10), ("b", 8), ("c", 10)]


async def test_one_claim_looks_up_every_channels_templates_in_one_statement(
    db_url: str, engine: AsyncEngine
) -> None:
    """A campaign spread over a partner's numbers: one registry lookup for the whole claim, not
    one per channel (a round trip each, inside the claim's transaction), and each channel's rows
    still meet the entry of their own WABA (the same name and language, paused in one only)."""
    templates = TemplateStore(engine)
    await templates.record(
        TemplateKey("waba-1", "promo", "en_US"), source="webhook", status="PAUSED"
    )
    await templates.record(
        TemplateKey("waba-2", "promo", "en_US"), source="webhook", status="APPROVED"
    )
    channels = [f"ch{n:02}" for n in range(40)]
    for n, channel in enumerate(channels):
        await insert(db_url, channel, f"49151{n:08}", PROMO)
    lookups: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "FROM outbox.templates" in statement:
            lookups.append(statement)

    requests = [
        ClaimRequest(channel, 10, LIMITS, "waba-1" if n % 2 else "waba-2")
        for n, channel in enumerate(channels)
    ]
    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        claims = await MessageStore(engine).claim_many(requests, "w", timedelta(minutes=1))
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", seen)
    assert len(lookups) == 1
    for n, channel in enumerate(channels):
        claim = claims[channel]
        if n % 2:  # waba-1's promo is paused: held, tokens back
            assert (claim.messages, len(claim.held)) == ([], 1), channel
        else:
            [message] = claim.messages
            assert message.template is not None
            assert message.template.status == "APPROVED"
