"""The sending rules end to end: rows inserted by SQL, the real daemon in-process, the sandbox API.

Each test checks the final row and the exact number of requests the API received: throttles,
server trouble, permanent errors, the pair rate, channel pauses, lost answers, the 24-hour
window, expiry, per-recipient order and pacing, and rows that can never be sent.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from outbox.config import Secret, Settings, UnknownPolicy
from outbox.http.api_client import ApiClient, create_session
from outbox.sandbox import Fault, RecordedRequest, Sandbox
from tests.support import (
    KEYS,
    drain,
    fetch,
    insert,
    row,
    running,
    set_last_inbound,
    settings_for,
    wait_until,
)

A, B, C, D = "4915100000001", "4915100000002", "4915100000003", "4915100000004"
DIALECTS = ["onprem", "cloud"]
# `insert` serialises only the payload; other JSONB columns go in as JSON text.
FALLBACK = json.dumps({"type": "template", "template": {"name": "x", "language": {"code": "en"}}})
TEMPLATE = {"type": "template", "template": {"name": "order_shipped", "language": {"code": "en"}}}


def text(body: str) -> dict[str, Any]:
    return {"type": "text", "text": {"body": body}}


def fast(db_url: str, base_url: str, **sender: Any) -> Settings:
    """The two test channels with knobs small enough for tests that take seconds, not minutes."""
    knobs: dict[str, Any] = {
        "poll_interval": timedelta(milliseconds=50),
        "backoff_base": timedelta(milliseconds=50),
        "maintenance_interval": timedelta(milliseconds=100),
        "unknown_channel_grace": timedelta(0),
        **sender,
    }
    return settings_for(db_url, base_url, **knobs)


def with_channel(settings: Settings, channel_id: str, **changes: Any) -> Settings:
    channels = tuple(replace(c, **changes) if c.id == channel_id else c for c in settings.channels)
    assert any(c.id == channel_id for c in channels)
    return replace(settings, channels=channels)


def to(api: Sandbox, recipient: str) -> list[RecordedRequest]:
    return [r for r in api.message_requests() if r.body["to"] == recipient]


def on(api: Sandbox, channel: str) -> list[RecordedRequest]:
    return [r for r in api.message_requests() if r.api_key_label == channel]


def body_text(request: RecordedRequest) -> str:
    return str(request.body["text"]["body"])


async def state_of(db_url: str, message_id: int) -> str:
    return str((await row(db_url, message_id))["state"])


def in_state(db_url: str, state: str, *ids: int) -> Any:
    """A wait_until predicate: every row in `state`."""

    async def check() -> bool:
        return all([await state_of(db_url, i) == state for i in ids])

    return check


async def channel_state(db_url: str, channel: str) -> Any:
    rows = await fetch(db_url, "SELECT * FROM outbox.channel_state WHERE channel = $1", channel)
    return rows[0] if rows else None


def soon(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


# 1. Throttles hold the channel (at least RetryPolicy.throttle_delay, 2 s) and are not charged.

# recipient: (channel, fault, the HTTP statuses the sandbox answered)
THROTTLES = {
    A: ("onprem", Fault("status", status=429, retry_after=0.1, times=1), [429, 201]),
    B: ("cloud", Fault("status", status=429, retry_after=0.1, times=1), [429, 200]),
    C: ("cloud", Fault("error_code", code=130429, http_status=400, times=1), [400, 200]),
}


async def test_throttle_is_retried_after_the_hold_and_not_charged(
    db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    """On-Premise 429, Cloud 429 and Cloud 130429 at once (each case alone costs the 2 s hold)."""
    api, base_url = sandbox
    ids = {}
    for recipient, (channel, fault, _) in THROTTLES.items():
        api.faults.add(replace(fault, recipients=frozenset({recipient})))
        ids[recipient] = await insert(db_url, channel, recipient, text("hi"))

    async with running(fast(db_url, base_url)):
        await wait_until(lambda: len(api.message_requests()) == 3)
        await wait_until(in_state(db_url, "queued", *ids.values()))
        for message_id in ids.values():
            waiting = await row(db_url, message_id)
            assert waiting["attempts"] == 0
            assert waiting["next_attempt_at"] is not None

        async def both_slowed() -> bool:
            buckets = await fetch(db_url, "SELECT * FROM outbox.channel_state")
            return len(buckets) == 2 and all(
                b["rate"] is not None and b["hold_until"] is not None for b in buckets
            )

        # The slow-down is shared: the channel's own row in the database says so.
        await wait_until(both_slowed, within=5)
        await wait_until(in_state(db_url, "accepted", *ids.values()), within=10)

    for recipient, (_, _, statuses) in THROTTLES.items():
        stored = await row(db_url, ids[recipient])
        requests = to(api, recipient)
        assert (stored["state"], stored["attempts"], stored["error_code"]) == ("accepted", 1, None)
        assert stored["wamid"] == requests[1].message_id
        assert [r.status for r in requests] == statuses, recipient
        assert requests[1].at - requests[0].at >= 2.0, recipient
    assert len(api.message_requests()) == 6


# 2. Server trouble is retried with backoff and charged, up to max_attempts.


@pytest.mark.parametrize("channel", DIALECTS)
async def test_server_errors_are_retried_until_accepted(
    db_url: str, sandbox: tuple[Sandbox, str], channel: str
) -> None:
    api, base_url = sandbox
    api.faults.add(Fault("status", status=503, times=2))
    message_id = await insert(db_url, channel, A, text("hi"))

    async with running(fast(db_url, base_url)):
        await wait_until(in_state(db_url, "accepted", message_id), within=10)

    stored = await row(db_url, message_id)
    assert (stored["state"], stored["attempts"], stored["error_code"]) == ("accepted", 3, None)
    assert [r.status for r in api.message_requests()][:2] == [503, 503]
    assert len(api.message_requests()) == 3


@pytest.mark.parametrize("channel", DIALECTS)
async def test_server_errors_give_up_after_max_attempts(
    db_url: str, sandbox: tuple[Sandbox, str], channel: str
) -> None:
    api, base_url = sandbox
    api.faults.add(Fault("status", status=503))
    message_id = await insert(db_url, channel, A, text("hi"))

    async with running(fast(db_url, base_url, max_attempts=3)):
        await wait_until(in_state(db_url, "failed", message_id), within=10)
        await asyncio.sleep(0.3)  # nothing more goes out

    stored = await row(db_url, message_id)
    assert (stored["state"], stored["attempts"], stored["error_code"]) == ("failed", 3, "http_503")
    assert "gave up after 3 attempts" in stored["error_detail"]
    assert stored["next_attempt_at"] is None
    assert stored["failed_at"] is not None
    assert len(api.message_requests()) == 3


# 3. Permanent errors fail the row at once.

PERMANENT = {
    "cloud-131026": (
        "cloud",
        131026,
        "(#131026) Message undeliverable",
        "Message undeliverable (scripted sandbox fault)",
    ),
    "onprem-2001": ("onprem", 2001, "Error", "Error (scripted sandbox fault)"),
    "onprem-1013": (
        "onprem",
        1013,
        "User is not valid",
        "User is not valid (scripted sandbox fault)",
    ),
}


@pytest.mark.parametrize("case", PERMANENT)
async def test_permanent_error_fails_at_once(
    db_url: str, sandbox: tuple[Sandbox, str], case: str
) -> None:
    api, base_url = sandbox
    channel, code, title, detail = PERMANENT[case]
    api.faults.add(Fault("error_code", code=code, http_status=400))
    message_id = await insert(db_url, channel, A, text("hi"))

    await drain(fast(db_url, base_url))

    stored = await row(db_url, message_id)
    assert (stored["state"], stored["attempts"]) == ("failed", 1)
    assert (stored["error_code"], stored["error_title"], stored["error_detail"]) == (
        str(code),
        title,
        detail,
    )
    assert stored["next_attempt_at"] is None
    assert stored["wamid"] is None
    assert len(api.message_requests()) == 1


# 4. The pair rate (131056) holds one recipient for 6 s, nobody else.


async def test_pair_rate_limit_holds_only_that_recipient(
    db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    api, base_url = sandbox
    api.faults.add(
        Fault("error_code", code=131056, http_status=400, recipients=frozenset({A}), times=1)
    )
    first = await insert(db_url, "cloud", A, text("a1"))
    to_b = await insert(db_url, "cloud", B, text("b1"))
    to_c = await insert(db_url, "cloud", C, text("c1"))
    later = await insert(db_url, "cloud", A, text("a2"))

    async with running(fast(db_url, base_url)):
        await wait_until(in_state(db_url, "accepted", to_b, to_c))
        waiting = await row(db_url, first)
        assert (waiting["state"], waiting["error_code"], waiting["attempts"]) == (
            "queued",
            "131056",
            0,
        )
        assert await state_of(db_url, later) == "queued"
        await wait_until(in_state(db_url, "accepted", first, later), within=15)

    stored = await row(db_url, first)
    assert (stored["state"], stored["attempts"], stored["error_code"]) == ("accepted", 1, None)
    assert (await row(db_url, later))["attempts"] == 1
    to_a = to(api, A)
    assert [body_text(r) for r in to_a] == ["a1", "a1", "a2"]
    assert [r.status for r in to_a] == [400, 200, 200]
    assert to_a[1].at - to_a[0].at >= 6.0
    assert max(r.at for r in to(api, B) + to(api, C)) < to_a[1].at
    assert len(to(api, B)) == len(to(api, C)) == 1
    assert len(api.message_requests()) == 5


# 5. A channel error (401) pauses the channel; one probe per cool-down; success resumes it.


async def test_401_pauses_the_channel_until_a_probe_succeeds(
    db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    api, base_url = sandbox
    api.faults.add(Fault("status", status=401, recipients=frozenset({A}), times=1))
    cooldown = 1.0
    settings = fast(db_url, base_url, breaker_cooldown=timedelta(seconds=cooldown))
    first = await insert(db_url, "onprem", A, text("o1"))

    async with running(settings):
        await wait_until(lambda: _paused(db_url, "onprem"))
        paused = await channel_state(db_url, "onprem")
        assert paused["pause_reason"] == "Invalid api_key"
        more = [
            await insert(db_url, "onprem", B, text("o2")),
            await insert(db_url, "onprem", C, text("o3")),
        ]
        cloud = [
            await insert(db_url, "cloud", B, text("c1")),
            await insert(db_url, "cloud", C, text("c2")),
        ]
        await wait_until(in_state(db_url, "accepted", *cloud))
        assert len(on(api, "onprem")) == 1
        held = await row(db_url, first)
        assert (held["state"], held["attempts"], held["error_code"]) == ("queued", 0, "http_401")
        assert held["next_attempt_at"] is None
        await wait_until(in_state(db_url, "accepted", first, *more), within=10)
        await wait_until(lambda: _resumed(db_url, "onprem"))

    resumed = await channel_state(db_url, "onprem")
    assert (resumed["paused_until"], resumed["pause_reason"]) == (None, None)
    assert (await row(db_url, first))["attempts"] == 1
    assert [(await row(db_url, i))["attempts"] for i in more] == [1, 1]
    onprem = on(api, "onprem")
    assert len(onprem) == 3 + 1
    assert [r.status for r in onprem] == [401, 201, 201, 201]
    probe = onprem[1]
    assert probe.body["to"] == A
    assert probe.at - onprem[0].at >= cooldown
    assert all(r.at > probe.at for r in onprem[2:])
    assert max(r.at for r in on(api, "cloud")) < probe.at
    assert len(on(api, "cloud")) == 2


async def test_failed_probe_keeps_the_channel_paused_with_a_longer_cooldown(
    db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    api, base_url = sandbox
    api.faults.add(Fault("status", status=401, recipients=frozenset({A}), times=2))
    cooldown = 0.4
    settings = fast(db_url, base_url, breaker_cooldown=timedelta(seconds=cooldown))
    first = await insert(db_url, "onprem", A, text("o1"))

    async with running(settings):
        await wait_until(lambda: _paused(db_url, "onprem"))
        paused_until = (await channel_state(db_url, "onprem"))["paused_until"]
        other = await insert(db_url, "onprem", B, text("o2"))
        await wait_until(lambda: len(on(api, "onprem")) == 2 and on(api, "onprem")[1].status)

        async def paused_again() -> bool:
            state = await channel_state(db_url, "onprem")
            return state["paused_until"] is not None and state["paused_until"] > paused_until

        await wait_until(paused_again)
        assert await state_of(db_url, other) == "queued"
        await wait_until(in_state(db_url, "accepted", first, other), within=10)
        await wait_until(lambda: _resumed(db_url, "onprem"))

    onprem = on(api, "onprem")
    assert [(r.body["to"], r.status) for r in onprem] == [(A, 401), (A, 401), (A, 201), (B, 201)]
    assert onprem[1].at - onprem[0].at >= cooldown
    assert onprem[2].at - onprem[1].at >= 2 * cooldown  # the cool-down doubles
    assert (await row(db_url, first))["attempts"] == 1
    assert (await row(db_url, other))["attempts"] == 1


async def _paused(db_url: str, channel: str) -> bool:
    state = await channel_state(db_url, channel)
    return state is not None and state["paused_until"] is not None


async def _resumed(db_url: str, channel: str) -> bool:
    state = await channel_state(db_url, channel)
    return state is not None and state["paused_until"] is None


# 6. A request whose answer never came is `unknown`: resent once (RESEND) or held (HOLD).

TIMEOUT = {
    "request_timeout": timedelta(milliseconds=300),
    "unknown_quiet": timedelta(milliseconds=300),
}


@pytest.mark.parametrize("channel", DIALECTS)
async def test_lost_answer_is_unknown_then_resent_once(
    db_url: str, sandbox: tuple[Sandbox, str], channel: str
) -> None:
    api, base_url = sandbox
    api.faults.add(Fault("hang", delay=2, times=1))
    settings = fast(db_url, base_url, **TIMEOUT)
    message_id = await insert(db_url, channel, A, text("hi"))

    async with running(settings):
        await wait_until(in_state(db_url, "unknown", message_id))
        unknown = await row(db_url, message_id)
        assert (unknown["error_code"], unknown["attempts"]) == ("no_response", 1)
        assert len(api.message_requests()) == 1
        await wait_until(in_state(db_url, "accepted", message_id), within=10)

    stored = await row(db_url, message_id)
    assert (stored["state"], stored["unknown_resends"], stored["attempts"]) == ("accepted", 1, 2)
    assert stored["error_code"] is None
    requests = api.message_requests()
    assert stored["wamid"] == requests[1].message_id
    assert len(requests) == 2


async def test_lost_answer_is_held_under_the_hold_policy(
    db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    api, base_url = sandbox
    api.faults.add(Fault("hang", delay=2, times=1))
    settings = with_channel(
        fast(db_url, base_url, **TIMEOUT), "cloud", unknown_policy=UnknownPolicy.HOLD
    )
    message_id = await insert(db_url, "cloud", A, text("hi"))

    async with running(settings):
        await wait_until(in_state(db_url, "unknown", message_id))
        await asyncio.sleep(1.0)  # three quiet periods

    stored = await row(db_url, message_id)
    assert (stored["state"], stored["error_code"]) == ("unknown", "no_response")
    assert (stored["unknown_resends"], stored["attempts"]) == (0, 1)
    assert len(api.message_requests()) == 1


async def test_row_unknown_again_after_its_resend_stays_unknown(
    db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    api, base_url = sandbox
    api.faults.add(Fault("hang", delay=2))
    message_id = await insert(db_url, "onprem", A, text("hi"))

    async with running(fast(db_url, base_url, **TIMEOUT)):
        await wait_until(lambda: len(api.message_requests()) == 2)
        await wait_until(in_state(db_url, "unknown", message_id))
        await asyncio.sleep(0.9)  # three more quiet periods

    stored = await row(db_url, message_id)
    assert (stored["state"], stored["error_code"]) == ("unknown", "no_response")
    assert (stored["unknown_resends"], stored["attempts"]) == (1, 2)
    assert len(api.message_requests()) == 2


async def test_unknown_row_past_expires_at_expires_instead_of_resend(
    db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    api, base_url = sandbox
    api.faults.add(Fault("hang", delay=2, times=1))
    settings = fast(db_url, base_url, **{**TIMEOUT, "unknown_quiet": timedelta(seconds=1)})

    async with running(settings):
        # Unknown after the 0.3 s timeout; expired at 0.8 s; the quiet period ends at 1.3 s.
        message_id = await insert(db_url, "cloud", A, text("hi"), expires_at=soon(0.8))
        await wait_until(in_state(db_url, "unknown", message_id))
        await wait_until(in_state(db_url, "expired", message_id), within=10)
        await asyncio.sleep(0.3)

    stored = await row(db_url, message_id)
    assert (stored["state"], stored["error_code"]) == ("expired", "expired_unknown")
    assert (
        stored["error_title"]
        == "expires_at passed while the outcome was unknown: it may have arrived"
    )
    assert stored["wamid"] is None
    assert len(api.message_requests()) == 1


# 7. The API says the window is closed: the fallback template goes next, once, or the row fails.

WINDOW_ERRORS = {
    "onprem": Fault("error_code", code=470, http_status=400, times=1),
    "cloud": Fault("error_code", code=131047, http_status=400, times=1),
}


@pytest.mark.parametrize("channel", DIALECTS)
async def test_api_window_closed_sends_the_fallback_template(
    db_url: str, sandbox: tuple[Sandbox, str], channel: str
) -> None:
    api, base_url = sandbox
    api.faults.add(WINDOW_ERRORS[channel])
    message_id = await insert(db_url, channel, A, text("hi"), fallback_template=FALLBACK)

    async with running(fast(db_url, base_url)):
        await wait_until(in_state(db_url, "accepted", message_id))

    stored = await row(db_url, message_id)
    assert (stored["state"], stored["sent_as"], stored["attempts"]) == (
        "accepted",
        "fallback_template",
        1,
    )
    requests = api.message_requests()
    assert [r.body["type"] for r in requests] == ["text", "template"]
    assert requests[1].body["template"]["name"] == "x"
    assert stored["wamid"] == requests[1].message_id
    assert len(requests) == 2


@pytest.mark.parametrize("channel", DIALECTS)
async def test_api_window_closed_without_fallback_fails(
    db_url: str, sandbox: tuple[Sandbox, str], channel: str
) -> None:
    api, base_url = sandbox
    api.faults.add(WINDOW_ERRORS[channel])
    message_id = await insert(db_url, channel, A, text("hi"))

    await drain(fast(db_url, base_url))

    stored = await row(db_url, message_id)
    assert (stored["state"], stored["error_code"], stored["attempts"]) == (
        "failed",
        "window_closed",
        1,
    )
    assert stored["error_detail"].startswith(f"API error {WINDOW_ERRORS[channel].code}: ")
    assert len(api.message_requests()) == 1


# 8. The window rule applied locally, before any request.


@pytest.mark.parametrize("channel", DIALECTS)
async def test_window_rule_is_applied_before_sending(
    db_url: str, sandbox: tuple[Sandbox, str], channel: str
) -> None:
    api, base_url = sandbox
    never_fallback = await insert(
        db_url, channel, A, text("a"), inbound_ago=None, fallback_template=FALLBACK
    )
    never_bare = await insert(db_url, channel, B, text("b"), inbound_ago=None)
    margin = await insert(
        db_url,
        channel,
        C,
        text("c"),
        inbound_ago=timedelta(hours=23, minutes=58),
        fallback_template=FALLBACK,
    )
    open_window = await insert(
        db_url, channel, D, text("d"), inbound_ago=timedelta(hours=23), fallback_template=FALLBACK
    )
    template = await insert(db_url, channel, "4915100000005", TEMPLATE, inbound_ago=None)

    await drain(fast(db_url, base_url))

    bare = await row(db_url, never_bare)
    assert (bare["state"], bare["error_code"], bare["attempts"]) == ("failed", "window_closed", 0)
    assert bare["error_detail"] == "no inbound message from this recipient is on record"
    expected = {
        never_fallback: "fallback_template",
        margin: "fallback_template",
        open_window: "freeform",
        template: "template",
    }
    for message_id, sent_as in expected.items():
        stored = await row(db_url, message_id)
        assert (stored["state"], stored["sent_as"], stored["attempts"]) == ("accepted", sent_as, 1)
    sent = {r.body["to"]: r.body for r in api.message_requests()}
    assert sent[A]["type"] == sent[C]["type"] == "template"
    assert sent[A]["template"]["name"] == sent[C]["template"]["name"] == "x"
    assert sent[D]["type"] == "text"
    assert sent["4915100000005"]["template"]["name"] == "order_shipped"
    assert B not in sent
    assert len(api.message_requests()) == 4


async def test_inbound_message_after_a_window_failure_only_helps_new_rows(
    db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    api, base_url = sandbox
    settings = fast(db_url, base_url)
    failed = await insert(db_url, "cloud", A, text("old"), inbound_ago=None)
    await drain(settings)
    assert (await row(db_url, failed))["error_code"] == "window_closed"

    await set_last_inbound(db_url, "cloud", A, timedelta(seconds=5))
    await drain(settings)
    assert await state_of(db_url, failed) == "failed"
    assert api.message_requests() == []

    new = await insert(db_url, "cloud", A, text("new"), inbound_ago=None)
    await drain(settings)

    stored = await row(db_url, new)
    assert (stored["state"], stored["sent_as"]) == ("accepted", "freeform")
    still = await row(db_url, failed)
    assert (still["state"], still["error_code"], still["attempts"]) == (
        "failed",
        "window_closed",
        0,
    )
    assert [body_text(r) for r in api.message_requests()] == ["new"]


# 9. expires_at: a row is never sent after it.


@pytest.mark.parametrize("channel", DIALECTS)
async def test_row_past_expires_at_is_not_sent(
    db_url: str, sandbox: tuple[Sandbox, str], channel: str
) -> None:
    api, base_url = sandbox
    gone = await insert(db_url, channel, A, text("late"), expires_at=soon(-60))
    good = await insert(db_url, channel, B, text("fine"), expires_at=soon(60))

    await drain(fast(db_url, base_url))

    stored = await row(db_url, gone)
    assert (stored["state"], stored["error_code"], stored["attempts"]) == ("expired", "expired", 0)
    assert await state_of(db_url, good) == "accepted"
    assert [r.body["to"] for r in api.message_requests()] == [B]


async def test_row_expires_while_backing_off(db_url: str, sandbox: tuple[Sandbox, str]) -> None:
    api, base_url = sandbox
    api.faults.add(Fault("status", status=503))
    # Full jitter picks a backoff in [0, 10 days): far beyond expires_at for all practical rolls.
    settings = fast(
        db_url, base_url, backoff_base=timedelta(days=10), backoff_cap=timedelta(days=10)
    )

    async with running(settings):
        message_id = await insert(db_url, "onprem", A, text("hi"), expires_at=soon(1.0))
        await wait_until(in_state(db_url, "queued", message_id))
        await wait_until(lambda: len(api.message_requests()) == 1)
        await wait_until(in_state(db_url, "expired", message_id), within=10)
        await asyncio.sleep(0.3)

    stored = await row(db_url, message_id)
    assert (stored["state"], stored["error_code"], stored["attempts"]) == ("expired", "expired", 1)
    assert stored["next_attempt_at"] is None
    assert len(api.message_requests()) == 1


# 10. One message per recipient at a time, in insertion order; pair pacing.


@pytest.mark.parametrize("channel", DIALECTS)
async def test_rows_to_one_recipient_go_in_order_one_at_a_time(
    db_url: str, sandbox: tuple[Sandbox, str], channel: str
) -> None:
    api, base_url = sandbox
    api.faults.add(Fault("latency", delay=0.1, recipients=frozenset({A})))
    ids = [await insert(db_url, channel, A, text(f"a{i}")) for i in range(1, 5)]
    ids.append(await insert(db_url, channel, A, text("a5"), priority=9))
    others = [
        await insert(db_url, channel, B, text("b1")),
        await insert(db_url, channel, C, text("c1"), priority=5),
    ]

    async with running(fast(db_url, base_url)):
        await wait_until(in_state(db_url, "accepted", *ids, *others), within=15)

    to_a = to(api, A)
    assert [body_text(r) for r in to_a] == ["a1", "a2", "a3", "a4", "a5"]
    for previous, following in itertools.pairwise(to_a):
        assert following.at >= previous.at + 0.1
    assert max(r.at for r in to(api, B) + to(api, C)) < to_a[1].at
    assert [(await row(db_url, i))["attempts"] for i in ids] == [1] * 5
    assert len(api.message_requests()) == 7


@pytest.mark.parametrize("channel", DIALECTS)
async def test_failed_head_releases_the_next_row(
    db_url: str, sandbox: tuple[Sandbox, str], channel: str
) -> None:
    api, base_url = sandbox
    api.faults.add(
        Fault("error_code", code=1013, http_status=400, recipients=frozenset({A}), times=1)
    )
    head = await insert(db_url, channel, A, text("a1"))
    following = await insert(db_url, channel, A, text("a2"))

    await drain(fast(db_url, base_url))

    assert (await row(db_url, head))["state"] == "failed"
    assert (await row(db_url, head))["error_code"] == "1013"
    stored = await row(db_url, following)
    assert (stored["state"], stored["attempts"]) == ("accepted", 1)
    assert [(body_text(r), r.status) for r in api.message_requests()] == [
        ("a1", 400),
        ("a2", 201 if channel == "onprem" else 200),
    ]


@pytest.mark.parametrize("channel", DIALECTS)
async def test_recipient_gap_paces_one_recipient(
    db_url: str, sandbox: tuple[Sandbox, str], channel: str
) -> None:
    api, base_url = sandbox
    gap = 0.5
    settings = with_channel(fast(db_url, base_url), channel, recipient_gap=timedelta(seconds=gap))
    ids = [await insert(db_url, channel, A, text(f"a{i}")) for i in range(1, 4)]
    other = await insert(db_url, channel, B, text("b1"))

    async with running(settings):
        await wait_until(in_state(db_url, "accepted", *ids, other), within=10)

    to_a = to(api, A)
    assert [body_text(r) for r in to_a] == ["a1", "a2", "a3"]
    for previous, following in itertools.pairwise(to_a):
        assert following.at - previous.at >= gap
    assert to(api, B)[0].at < to_a[1].at
    assert len(api.message_requests()) == 4


# 11. Rows that can never be sent fail without a request; good rows still go.


@pytest.mark.parametrize("channel", DIALECTS)
async def test_bad_rows_fail_without_a_request(
    db_url: str, sandbox: tuple[Sandbox, str], channel: str
) -> None:
    api, base_url = sandbox
    bad_fallback = json.dumps({"type": "template", "template": {"name": "x"}})
    bad = {
        "unknown-channel": (
            await insert(db_url, "nowhere", A, text("x")),
            "unknown_channel",
            "channel 'nowhere' is not in the registry nor known to any live replica"
            " (they know: cloud, onprem)",
        ),
        "recipient": (
            await insert(db_url, channel, "hello", text("x"), inbound_ago=None),
            "invalid_recipient",
            "recipient 'hello' is not a phone number (7-15 digits)",
        ),
        "too-long": (
            await insert(db_url, channel, B, text("x" * 4097)),
            "invalid_payload",
            "text.body has 4097 characters, more than 4096",
        ),
        "template-no-language": (
            await insert(
                db_url,
                channel,
                C,
                {"type": "template", "template": {"name": "x"}},
                inbound_ago=None,
            ),
            "invalid_payload",
            "template.language.code is required",
        ),
        "bad-fallback": (
            await insert(
                db_url, channel, D, text("x"), inbound_ago=None, fallback_template=bad_fallback
            ),
            "invalid_payload",
            "fallback_template: template.language.code is required",
        ),
    }
    good = await insert(db_url, channel, A, text("ok"))

    async with running(fast(db_url, base_url)):
        await wait_until(in_state(db_url, "failed", *(i for i, _, _ in bad.values())))
        await wait_until(in_state(db_url, "accepted", good))

    for name, (message_id, code, detail) in bad.items():
        stored = await row(db_url, message_id)
        assert (stored["state"], stored["error_code"], stored["error_detail"]) == (
            "failed",
            code,
            detail,
        ), name
        assert stored["attempts"] == 0, name
    assert [body_text(r) for r in api.message_requests()] == ["ok"]


async def test_a_recipients_queue_and_due_retries_do_not_wait_for_the_poll(
    db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    """With a 30 s poll, a finished head releases the next row and a retry goes when due."""
    api, base_url = sandbox
    api.faults.add(Fault("status", status=503, times=1, recipients=frozenset({B})))
    settings = fast(db_url, base_url, poll_interval=timedelta(seconds=30))
    async with running(settings):
        began = asyncio.get_running_loop().time()
        ids = [await insert(db_url, "cloud", A, text(f"a{i}")) for i in range(5)]
        retried = await insert(db_url, "cloud", B, text("b"))
        await wait_until(in_state(db_url, "accepted", *ids, retried), within=25)
        elapsed = asyncio.get_running_loop().time() - began
    assert [body_text(r) for r in to(api, A)] == [f"a{i}" for i in range(5)]
    assert len(to(api, B)) == 2
    # Well before the first poll (30 s), with room for a starved machine.
    assert elapsed < 15, elapsed


async def test_a_cloud_status_resolves_an_unknown_row_without_a_resend(db_url: str) -> None:
    """The answer is lost, but the API took the message: its status (carrying the outbox id in
    biz_opaque_callback_data) moves the row on, and the quiet period passes with no resend."""
    api = Sandbox(KEYS, status_delays=(0.05, 0.1, 0.15))
    base_url = await api.start()
    api.faults.add(Fault("hang", delay=0.5, times=1))
    settings = fast(db_url, base_url, **{**TIMEOUT, "unknown_quiet": timedelta(seconds=2)})
    # Only an authenticated status may name its row by the outbox id: the webhook registered
    # with the sandbox carries the channel's Basic-auth header.
    hook_user, hook_password = Secret("hook-user"), Secret("hook-pass-0123456789")
    channels = tuple(
        replace(c, webhook_username=hook_user, webhook_password=hook_password)
        if c.id == "cloud"
        else c
        for c in settings.channels
    )
    settings = replace(settings, channels=channels)
    try:
        async with running(settings, roles={"sender", "reconciler", "web"}) as started:
            cloud = next(c for c in settings.channels if c.id == "cloud")
            async with create_session(1, timedelta(seconds=5)) as session:
                hook = f"http://127.0.0.1:{started.http_port}/webhooks/cloud"
                assert (await ApiClient(session).set_webhook(cloud, hook)).status == 200
            message_id = await insert(db_url, "cloud", A, text("hi"))
            await wait_until(in_state(db_url, "read", message_id), within=10)
            await asyncio.sleep(2.5)  # past the quiet period
    finally:
        await api.stop()
    [request] = api.message_requests()
    stored = await row(db_url, message_id)
    assert (stored["state"], stored["unknown_resends"]) == ("read", 0)
    assert stored["wamid"] == request.message_id
    assert request.body["biz_opaque_callback_data"] == f"outbox:{message_id}"
    verdicts = await fetch(
        db_url,
        "SELECT status, verdict FROM outbox.status_history WHERE message_id = $1",
        message_id,
    )
    assert {(r["status"], r["verdict"]) for r in verdicts} == {
        ("sent", "applied"),
        ("delivered", "applied"),
        ("read", "applied"),
    }


async def test_a_backlog_on_one_channel_does_not_hold_up_another(
    db_url: str, sandbox: tuple[Sandbox, str]
) -> None:
    """onprem has 2,000 slow rows and may use at most 4 slots; cloud's one row still goes at
    once, while onprem never has more than 4 requests open."""
    api, base_url = sandbox
    api.faults.add(Fault("latency", delay=0.1))
    await fetch(
        db_url,
        """
        WITH rows AS (
            SELECT '49153' || lpad(g::text, 8, '0') AS recipient, g
            FROM generate_series(1, 2000) AS g
        ), inbound AS (
            INSERT INTO outbox.contacts (channel, wa_id, last_inbound_at)
            SELECT 'onprem', recipient, now() FROM rows
        )
        INSERT INTO outbox.messages (channel, recipient, payload)
        SELECT 'onprem', recipient, '{"type":"text","text":{"body":"bulk"}}' FROM rows
        """,
    )
    settings = with_channel(fast(db_url, base_url, max_in_flight=8), "onprem", max_in_flight=4)
    async with running(settings):
        await wait_until(lambda: len(on(api, "onprem")) >= 20, within=10)
        urgent = await insert(db_url, "cloud", A, text("urgent"))
        await wait_until(in_state(db_url, "accepted", urgent), within=5)
        [backlog] = await fetch(
            db_url,
            "SELECT count(*) FROM outbox.messages WHERE channel = 'onprem' AND state = 'queued'",
        )
    assert backlog[0] > 1500  # onprem was still busy with its backlog
    arrivals = sorted(r.at for r in on(api, "onprem"))
    # With 0.1 s per answer, at most 4 onprem requests ever arrived within any 0.1 s.
    assert (
        max(sum(1 for later in arrivals[i:] if later < at + 0.099) for i, at in enumerate(arrivals))
        <= 4
    )
