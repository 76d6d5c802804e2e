"""The reconciler: stored webhook bodies into delivery states, window times and status history.

Bodies go in through the real receiver (`POST /webhooks/{channel}`) or straight into
`outbox.webhook_events` (another service may write there too), and the daemon runs in-process.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
import itertools
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import orjson
import pytest
import structlog
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import outbox.services.reconciler as reconciler_module
from outbox.config import Settings
from outbox.domain import notifications
from outbox.domain.report import Report
from outbox.http.api_client import ApiClient, create_session
from outbox.sandbox import Sandbox
from outbox.services.reconciler import Reconciler
from tests.paths import WEBHOOK_FIXTURES
from tests.support import (
    KEYS,
    enqueue_in_window,
    fetch,
    insert,
    row,
    running,
    settings_for,
    wait_for_progress,
    wait_until,
)

FIXTURES = WEBHOOK_FIXTURES
CORPUS = sorted(FIXTURES.glob("*.json")) if FIXTURES.is_dir() else []
needs_corpus = pytest.mark.skipif(not CORPUS, reason="shared fixtures not beside the checkout")

WEB_RECONCILER = {"web", "reconciler"}
CHANNELS = ("onprem", "cloud")
RECIPIENT = "4915100000001"
FALLBACK = {"type": "template", "template": {"name": "reengage", "language": {"code": "en"}}}
WINDOW_CODES = (470, 131047)


def _kind(path: Path) -> str:
    return path.name.split("__")[1]


def _channel(path: Path) -> str:
    return path.name.split("__")[0]


def _bodies(*kinds: str) -> list[Path]:
    return [p for p in CORPUS if _kind(p) in kinds]


# --- What INDEX.md says each body does -------------------------------------------------------


@dataclass(frozen=True)
class InboundCase:
    """last_inbound_at per wa_id afterwards (the whole contacts table of the channel), and a
    word the webhook row's `error` note must contain (None: no note at all)."""

    contacts: dict[str, int]
    note: str | None = None
    before: dict[str, int] = field(default_factory=dict)  # contacts on record beforehand


@dataclass(frozen=True)
class StatusCase:
    status: str
    at: int
    code: int | None = None


INBOUND_CASES: dict[str, InboundCase] = {
    "onprem__inbound__text-with-contacts": InboundCase({"16315551234": 1518694235}),
    "onprem__inbound__location": InboundCase({"16315551234": 1521497875}),
    # The window is keyed on messages[].from, not on the top-level contacts[].wa_id.
    "onprem__inbound__contacts-card": InboundCase({"16505551234": 1537248012}),
    "onprem__inbound__unknown-type-error-501": InboundCase({"16315551234": 1531933468}),
    "onprem__inbound__button-template-reply": InboundCase({"16505551234": 1591210827}),
    "onprem__inbound__image-no-contacts": InboundCase({"16315551234": 1521497954}),
    "onprem__inbound__reply-with-context": InboundCase({"16315551234": 1521499915}),
    # Written by WhatsApp, not by the user: the window on record must not move, but it carries
    # over to the user's new number.
    "onprem__inbound__system-user-changed-number": InboundCase(
        {"16315558889": 1500000000, "16315558890": 1500000000},
        note="number changed to 16315558890",
        before={"16315558889": 1500000000},
    ),
    "onprem__inbound__group-mentions-trailing-space-from": InboundCase({"16315551234": 1504902988}),
    "onprem__inbound__interactive-button-reply": InboundCase({"250000000001": 1454119029}),
    "onprem__inbound__interactive-list-reply": InboundCase({"250000000001": 1454119029}),
    "onprem__inbound__duplicate-same-id-twice": InboundCase(
        {"250000000001": 1454119029}, note="duplicate"
    ),
    "onprem__inbound__text-turn-vnd-extension": InboundCase({"2340000000001": 1735424273}),
    "onprem__error__media-download-400": InboundCase({}, note="error 400"),
    "cloud__inbound__text": InboundCase({"1111111111111": 1672947578}),
    "cloud__inbound__image-with-url": InboundCase({"972000000002": 1697043379}),
    "cloud__inbound__contacts": InboundCase({"1111111111111": 1673641462}),
    "cloud__inbound__reaction": InboundCase({"1111111111111": 1673026587}),
    "cloud__inbound__button-template-reply": InboundCase({"1111111111111": 1673023653}),
    "cloud__inbound__interactive-button-reply": InboundCase({"972000000002": 1698266730}),
    "cloud__inbound__nfm-reply-flow": InboundCase({"5678": 1454119029}),
    "cloud__inbound__unsupported-131051": InboundCase({"1111111111111": 1673026174}),
    "cloud__inbound__referral-click-to-whatsapp": InboundCase({"972000000002": 1697045000}),
    "cloud__inbound__duplicate-same-id-twice": InboundCase({"5678": 1454119029}, note="duplicate"),
    # A username user: keyed on the BSUID since issue 18 (skipped before).
    "cloud__inbound__bsuid-only-no-wa-id": InboundCase({"US.1234": 1454119029}),
    "cloud__error__value-level-errors-code-0": InboundCase({}, note="error 0"),
    "cloud__mixed__message-plus-value-errors-131000": InboundCase(
        {"972000000002": 1700505494}, note="error 131000"
    ),
    "cloud__mixed__two-entries-second-empty-changes": InboundCase({"5678": 1454119029}),
}

STATUS_CASES: dict[str, StatusCase] = {
    "onprem__status__sent-conversation-pricing": StatusCase("sent", 1609879800),
    "onprem__status__delivered-conversation-pricing": StatusCase("delivered", 1610413994),
    "onprem__status__read-conversation-pricing": StatusCase("read", 1610561171),
    "onprem__status__failed-470-outside-window": StatusCase("failed", 1533332775, 470),
    "onprem__status__failed-480-identity-change": StatusCase("failed", 1602535356, 480),
    "onprem__status__deleted": StatusCase("deleted", 1532413514),
    "onprem__status__failed-131026-cloud-codes-in-flat-body": StatusCase(
        "failed", 1735425598, 131026
    ),
    "onprem__status__sent-cloud-backed-service-conversation": StatusCase("sent", 1735424268),
    "onprem__status__delivered-recipient-in-message-object": StatusCase("delivered", 1680519050),
    "onprem__status__delivered-no-recipient": StatusCase("delivered", 1680519050),
    "cloud__status__sent-cbp-business-initiated": StatusCase("sent", 1673020317),
    "cloud__status__delivered-cbp": StatusCase("delivered", 1673020317),
    "cloud__status__read-no-pricing-bsuid": StatusCase("read", 1504902988),
    "cloud__status__sent-pmp-marketing-bsuid": StatusCase("sent", 1504902988),
    "cloud__status__sent-biz-opaque-callback-data": StatusCase("sent", 1698266945),
    "cloud__status__failed-131047-reengagement": StatusCase("failed", 1682651887, 131047),
    "cloud__status__failed-130472-experiment": StatusCase("failed", 1689380458, 130472),
    "cloud__status__failed-131014-with-conversation-pricing": StatusCase(
        "failed", 1454119029, 131014
    ),
    "cloud__status__deleted": StatusCase("deleted", 1454119029),
    "cloud__status__unknown-value-in_orbit": StatusCase("in_orbit", 1454119029),
}


def _ts(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _expected_row(case: StatusCase, *, fallback: bool) -> tuple[dict[str, Any], str]:
    """The seeded `accepted` free-form row after the status, and the history verdict."""
    at = _ts(case.at)
    untouched: dict[str, Any] = {
        "state": "accepted",
        "sent_as": "freeform",
        "sent_at": None,
        "delivered_at": None,
        "read_at": None,
        "failed_at": None,
        "error_code": None,
    }
    if case.status == "sent":
        return {**untouched, "state": "sent", "sent_at": at}, "applied"
    if case.status == "delivered":
        return {**untouched, "state": "delivered", "sent_at": at, "delivered_at": at}, "applied"
    if case.status == "read":
        return {
            **untouched,
            "state": "read",
            "sent_at": at,
            "delivered_at": at,
            "read_at": at,
        }, "applied"
    if case.status == "failed" and case.code in WINDOW_CODES and fallback:
        return {
            **untouched,
            "state": "queued",
            "sent_as": "fallback_template",
            "error_code": "window_closed",
        }, "fallback"
    if case.status == "failed" and case.code in WINDOW_CODES:
        return {
            **untouched,
            "state": "failed",
            "failed_at": at,
            "error_code": "window_closed",
        }, "applied"
    if case.status == "failed":
        return {
            **untouched,
            "state": "failed",
            "failed_at": at,
            "error_code": str(case.code),
        }, "applied"
    # deleted, in_orbit: recorded, state left alone.
    return untouched, "not_delivery"


# --- Helpers ---------------------------------------------------------------------------------


def _settings(
    db_url: str,
    base_url: str = "http://127.0.0.1:9",
    *,
    horizon: timedelta | None = None,
    batch_size: int | None = None,
    rate: float | None = None,
) -> Settings:
    settings = settings_for(db_url, base_url)
    if rate is not None:
        channels = tuple(dataclasses.replace(c, rate_per_second=rate) for c in settings.channels)
        settings = dataclasses.replace(settings, channels=channels)
    reconciler = settings.reconciler
    if horizon is not None:
        reconciler = dataclasses.replace(reconciler, orphan_horizon=horizon)
    if batch_size is not None:
        reconciler = dataclasses.replace(reconciler, batch_size=batch_size)
    return dataclasses.replace(settings, reconciler=reconciler)


def _hook(port: int | None, channel: str) -> str:
    return f"http://127.0.0.1:{port}/webhooks/{channel}"


async def _post(url: str, body: bytes | dict[str, Any]) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=data, headers={"Content-Type": "application/json"}) as response,
    ):
        raw = await response.read()
        return response.status, orjson.loads(raw) if raw else None


async def _post_ok(url: str, body: bytes | dict[str, Any]) -> int:
    status, answer = await _post(url, body)
    assert status == 200, (status, answer)
    return int(answer["stored"])


async def _scalar(db_url: str, sql: str, *args: Any) -> Any:
    return (await fetch(db_url, sql, *args))[0][0]


async def _settled(db_url: str) -> bool:
    """Every stored webhook row has been processed."""
    pending = await _scalar(
        db_url, "SELECT count(*) FROM outbox.webhook_events WHERE processed_at IS NULL"
    )
    return int(pending) == 0


async def _parked(db_url: str, *, orphaned: bool | None = None) -> int:
    where = {None: "", True: " WHERE orphaned_at IS NOT NULL", False: " WHERE orphaned_at IS NULL"}
    return int(
        await _scalar(db_url, "SELECT count(*) FROM outbox.parked_statuses" + where[orphaned])
    )


async def _seed(
    db_url: str,
    channel: str,
    wamid: str | None,
    *,
    state: str = "accepted",
    fallback: bool = False,
    recipient: str = RECIPIENT,
) -> int:
    """An outbox row as the sender leaves it after the API accepted it (free-form)."""
    return int(
        await _scalar(
            db_url,
            "INSERT INTO outbox.messages"
            " (channel, recipient, payload, state, wamid, sent_as, accepted_at, fallback_template)"
            ' VALUES ($1, $2, \'{"type": "text", "text": {"body": "hello"}}\', $3, $4,'
            " 'freeform', CASE WHEN $3 = 'accepted' THEN now() END, $5::jsonb) RETURNING id",
            channel,
            recipient,
            state,
            wamid,
            json.dumps(FALLBACK) if fallback else None,
        )
    )


_ROW_COLUMNS = ("state", "sent_as", "sent_at", "delivered_at", "read_at", "failed_at", "error_code")


async def _row_view(db_url: str, message_id: int) -> dict[str, Any]:
    record = await row(db_url, message_id)
    return {name: record[name] for name in _ROW_COLUMNS}


async def _history(db_url: str) -> list[tuple[Any, ...]]:
    rows = await fetch(
        db_url,
        "SELECT message_id, wamid, status, at, verdict, error_code FROM outbox.status_history"
        " ORDER BY id",
    )
    return [tuple(r) for r in rows]


async def _contacts(db_url: str, channel: str) -> dict[str, datetime]:
    rows = await fetch(
        db_url, "SELECT wa_id, last_inbound_at FROM outbox.contacts WHERE channel = $1", channel
    )
    return {r["wa_id"]: r["last_inbound_at"] for r in rows}


async def _webhook_rows(db_url: str) -> list[tuple[Any, ...]]:
    rows = await fetch(
        db_url, "SELECT id, channel, processed_at, error FROM outbox.webhook_events ORDER BY id"
    )
    return [tuple(r) for r in rows]


def _status_id(body: dict[str, Any]) -> str:
    value = body["entry"][0]["changes"][0]["value"] if "entry" in body else body
    return str(value["statuses"][0]["id"])


def _cloud(value: dict[str, Any]) -> dict[str, Any]:
    metadata = {"display_phone_number": "15550000001", "phone_number_id": "105000000000001"}
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "104000000000001",
                "changes": [
                    {
                        "field": "messages",
                        "value": {"messaging_product": "whatsapp", "metadata": metadata, **value},
                    }
                ],
            }
        ],
    }


def _status_body(
    channel: str,
    wamid: str,
    status: str,
    at: int,
    *,
    code: int | None = None,
    callback: str | None = None,
    recipient: str = RECIPIENT,
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": wamid,
        "recipient_id": recipient,
        "status": status,
        "timestamp": str(at),
    }
    if code is not None:
        item["errors"] = [{"code": code, "title": f"error {code}"}]
    if callback is not None:
        item["biz_opaque_callback_data"] = callback
    return {"statuses": [item]} if channel == "onprem" else _cloud({"statuses": [item]})


def _inbound_body(channel: str, wa_id: str, at: int, message_id: str) -> dict[str, Any]:
    value = {
        "contacts": [{"profile": {"name": "User"}, "wa_id": wa_id}],
        "messages": [
            {
                "from": wa_id,
                "id": message_id,
                "timestamp": str(at),
                "type": "text",
                "text": {"body": "hello"},
            }
        ],
    }
    return value if channel == "onprem" else _cloud(value)


async def _store_directly(db_url: str, bodies: list[tuple[str, str]]) -> list[int]:
    """Rows written by another service: one INSERT, so one NOTIFY and one batch if it fits."""
    rows = await fetch(
        db_url,
        "INSERT INTO outbox.webhook_events (channel, payload)"
        " SELECT c, p::jsonb FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS b(c, p, n)"
        " ORDER BY n RETURNING id",
        [c for c, _ in bodies],
        [p for _, p in bodies],
    )
    return sorted(int(r["id"]) for r in rows)


@asynccontextmanager
async def _database(pg_server: object, template_url: str) -> AsyncIterator[str]:
    """A fresh migrated database, for tests that need several at once."""
    admin = pg_server.get_uri("postgres")  # type: ignore[attr-defined]
    template = urlsplit(template_url).path.lstrip("/")
    name = f"r_{uuid.uuid4().hex[:12]}"
    await fetch(admin, f"CREATE DATABASE {name} TEMPLATE {template}")
    try:
        yield pg_server.get_uri(name)  # type: ignore[attr-defined]
    finally:
        await fetch(admin, f"DROP DATABASE {name} WITH (FORCE)")


# --- 1. The fixture corpus -------------------------------------------------------------------


@needs_corpus
def test_every_notification_body_in_the_corpus_has_an_expectation() -> None:
    bodies = {p.stem for p in _bodies("inbound", "status", "error", "mixed")}
    assert bodies == INBOUND_CASES.keys() | STATUS_CASES.keys()


@needs_corpus
@pytest.mark.parametrize("path", _bodies("inbound", "error", "mixed"), ids=lambda p: p.stem)
async def test_inbound_error_and_mixed_bodies(db_url: str, path: Path) -> None:
    case = INBOUND_CASES[path.stem]
    channel = _channel(path)
    for wa_id, at in case.before.items():
        await fetch(
            db_url,
            "INSERT INTO outbox.contacts (channel, wa_id, last_inbound_at) VALUES ($1, $2, $3)",
            channel,
            wa_id,
            _ts(at),
        )
    bystander = await _seed(db_url, channel, "wamid.bystander")
    before = await _row_view(db_url, bystander)
    async with running(_settings(db_url), roles=WEB_RECONCILER) as started:
        stored = await _post_ok(_hook(started.http_port, channel), path.read_bytes())
        await wait_until(lambda: _settled(db_url), within=10)

    [(webhook_id, webhook_channel, processed_at, error)] = await _webhook_rows(db_url)
    assert (webhook_id, webhook_channel) == (stored, channel)
    assert processed_at is not None
    if case.note is None:
        assert error is None
    else:
        assert error is not None
        assert case.note in error, error
    assert await _contacts(db_url, channel) == {w: _ts(at) for w, at in case.contacts.items()}
    other = "cloud" if channel == "onprem" else "onprem"
    assert await _contacts(db_url, other) == {}
    assert await _row_view(db_url, bystander) == before
    assert await _history(db_url) == []
    assert await _parked(db_url) == 0


def _status_params() -> list[Any]:
    params = []
    for path in _bodies("status"):
        name = path.stem
        params.append(pytest.param(path, False, id=name))
        if STATUS_CASES.get(path.stem, StatusCase("", 0)).code in WINDOW_CODES:
            params.append(pytest.param(path, True, id=f"{name}-with-fallback"))
    return params


@needs_corpus
@pytest.mark.parametrize(("path", "fallback"), _status_params())
async def test_status_bodies_on_a_seeded_row(db_url: str, path: Path, fallback: bool) -> None:
    case = STATUS_CASES[path.stem]
    channel = _channel(path)
    wamid = _status_id(json.loads(path.read_bytes()))
    message_id = await _seed(db_url, channel, wamid, fallback=fallback)
    with structlog.testing.capture_logs() as logs:
        async with running(_settings(db_url), roles=WEB_RECONCILER) as started:
            # Posted twice, as 360dialog does when our 200 is late: one history entry all the
            # same.
            for _ in range(2):
                await _post_ok(_hook(started.http_port, channel), path.read_bytes())
                await wait_until(lambda: _settled(db_url), within=10)

    expected, verdict = _expected_row(case, fallback=fallback)
    assert await _row_view(db_url, message_id) == expected
    code = None if case.code is None else str(case.code)
    assert await _history(db_url) == [(message_id, wamid, case.status, _ts(case.at), verdict, code)]
    webhooks = await _webhook_rows(db_url)
    assert [(w[1], w[3]) for w in webhooks] == [(channel, None)] * 2
    assert all(w[2] is not None for w in webhooks)
    assert await _parked(db_url) == 0
    if fallback:
        # Ready to go out again as its template, at once.
        assert (await row(db_url, message_id))["next_attempt_at"] is None
    # A row the API had accepted and a status failed: its final word, logged once at ERROR.
    failures = [
        (e["log_level"], e["channel"], e["message_id"], e["wamid"], e["error_code"])
        for e in logs
        if e["event"] == "outbox.delivery.failed"
    ]
    final = expected["state"] == "failed"
    assert failures == (
        [("error", channel, message_id, wamid, expected["error_code"])] if final else []
    )


def _without_shared_ids(paths: list[Path]) -> list[list[Path]]:
    """The bodies in a few groups with no status id twice in a group (the corpus
    reuses ids across files), so that each group can share a database and still give every
    body a row of its own."""
    groups: list[tuple[set[str], list[Path]]] = []
    for path in paths:
        wamid = _status_id(json.loads(path.read_bytes()))
        group = next((g for g in groups if wamid not in g[0]), None)
        if group is None:
            group = (set(), [])
            groups.append(group)
        group[0].add(wamid)
        group[1].append(path)
    return [g[1] for g in groups]


def _no_parked(db_url: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await _parked(db_url) == 0

    return check


async def _park_then_apply(pg_server: object, template_url: str, paths: list[Path]) -> None:
    async with _database(pg_server, template_url) as db_url:
        async with running(_settings(db_url), roles=WEB_RECONCILER) as started:
            for path in paths:
                await _post_ok(_hook(started.http_port, _channel(path)), path.read_bytes())
            await wait_until(lambda: _settled(db_url), within=10, interval=0.05)
            assert await _parked(db_url, orphaned=False) == len(paths)
            assert await _history(db_url) == []
            rows: dict[Path, tuple[int, str]] = {}
            for path in paths:
                wamid = _status_id(json.loads(path.read_bytes()))
                rows[path] = (await _seed(db_url, _channel(path), wamid), wamid)
            await wait_until(_no_parked(db_url), within=10, interval=0.1)
        history = await _history(db_url)
        for path, (message_id, wamid) in rows.items():
            case = STATUS_CASES[path.stem]
            expected, verdict = _expected_row(case, fallback=False)
            assert await _row_view(db_url, message_id) == expected, path.stem
            code = None if case.code is None else str(case.code)
            assert [h for h in history if h[0] == message_id] == [
                (message_id, wamid, case.status, _ts(case.at), verdict, code)
            ], path.stem
        assert len(history) == len(paths)


@needs_corpus
async def test_status_bodies_without_a_row_are_parked_then_applied(
    pg_server: object, template_url: str
) -> None:
    """Every status body, with no row yet: parked, and applied as above once its row appears.
    Bodies share a database only when their status ids differ (three databases, at once)."""
    groups = _without_shared_ids(_bodies("status"))
    await asyncio.gather(*(_park_then_apply(pg_server, template_url, g) for g in groups))


@needs_corpus
async def test_status_bodies_that_never_find_a_row_end_orphaned(db_url: str) -> None:
    paths = _bodies("status")
    async with running(
        _settings(db_url, horizon=timedelta(seconds=1)), roles=WEB_RECONCILER
    ) as started:
        for path in paths:
            await _post_ok(_hook(started.http_port, _channel(path)), path.read_bytes())
        await wait_until(lambda: _settled(db_url), within=10, interval=0.05)
        assert await _parked(db_url, orphaned=False) == len(paths)

        async def all_orphaned() -> bool:
            return await _parked(db_url, orphaned=True) == len(paths)

        await wait_until(all_orphaned, within=15, interval=0.1)
    parked = await fetch(
        db_url, "SELECT channel, status->>'wamid' AS wamid FROM outbox.parked_statuses"
    )
    assert sorted((p["channel"], p["wamid"]) for p in parked) == sorted(
        (_channel(p), _status_id(json.loads(p.read_bytes()))) for p in paths
    )
    assert await _history(db_url) == []


@needs_corpus
async def test_user_changed_number_migrates_the_contact(db_url: str) -> None:
    path = FIXTURES / "onprem__inbound__system-user-changed-number.json"
    old = _ts(1500000000)
    await fetch(
        db_url,
        "INSERT INTO outbox.contacts (channel, wa_id, last_inbound_at) VALUES ('onprem', $1, $2)",
        "16315558889",
        old,
    )
    async with running(_settings(db_url), roles=WEB_RECONCILER) as started:
        await _post_ok(_hook(started.http_port, "onprem"), path.read_bytes())
        await wait_until(lambda: _settled(db_url), within=10)
    contacts = await _contacts(db_url, "onprem")
    assert contacts.get("16315558889") == old  # not bumped to the system message's time
    assert "16315558890" in contacts  # the user's new number is known from now on


# --- 2. Order and duplicates -----------------------------------------------------------------

T0 = 1767225600  # 2026-01-01T00:00:00Z
TIMES = {"sent": T0, "delivered": T0 + 3, "read": T0 + 7}
PERMUTATIONS = list(itertools.permutations(("sent", "delivered", "read")))


@pytest.mark.parametrize("together", [False, True], ids=["one-by-one", "one-batch"])
@pytest.mark.parametrize("channel", CHANNELS)
async def test_any_order_of_statuses_with_duplicates_ends_read(
    db_url: str, channel: str, together: bool
) -> None:
    """Each permutation of sent/delivered/read, with repeats, for its own message: posted one
    at a time (each merged onto the stored row) or stored at once (merged in one batch)."""
    messages: dict[str, int] = {}
    bodies: list[dict[str, Any]] = []
    for n, (a, b, c) in enumerate(PERMUTATIONS):
        wamid = f"wamid.order.{n}"
        messages[wamid] = await _seed(db_url, channel, wamid)
        bodies += [_status_body(channel, wamid, s, TIMES[s]) for s in (a, b, a, c, c, b)]
    async with running(_settings(db_url), roles=WEB_RECONCILER) as started:
        if together:
            await _store_directly(db_url, [(channel, json.dumps(b)) for b in bodies])
        else:
            for body in bodies:
                await _post_ok(_hook(started.http_port, channel), body)
                await wait_until(lambda: _settled(db_url), within=10)
        await wait_until(lambda: _settled(db_url), within=10)

    for wamid, message_id in messages.items():
        assert await _row_view(db_url, message_id) == {
            "state": "read",
            "sent_as": "freeform",
            "sent_at": _ts(TIMES["sent"]),
            "delivered_at": _ts(TIMES["delivered"]),
            "read_at": _ts(TIMES["read"]),
            "failed_at": None,
            "error_code": None,
        }, wamid
    history = await _history(db_url)
    assert sorted((h[0], h[1], h[2], h[3]) for h in history) == sorted(
        (message_id, wamid, status, _ts(at))
        for wamid, message_id in messages.items()
        for status, at in TIMES.items()
    )
    assert await _parked(db_url) == 0


@pytest.mark.parametrize("channel", CHANNELS)
async def test_read_alone_fills_the_earlier_times_and_nothing_later_undoes_it(
    db_url: str, channel: str
) -> None:
    wamids = ("alone", "failed-later", "window-later", "deleted-later", "same-second")
    rows = {w: await _seed(db_url, channel, f"wamid.{w}", fallback=True) for w in wamids}
    read, later = TIMES["read"], TIMES["read"] + 5
    statuses: list[tuple[str, str, int, int | None]] = [
        ("alone", "read", read, None),
        ("failed-later", "read", read, None),
        ("failed-later", "failed", later, 131026),
        # A closed window after delivery is not a reason to send the fallback.
        ("window-later", "read", read, None),
        ("window-later", "failed", later, 470),
        ("deleted-later", "read", read, None),
        ("deleted-later", "deleted", later, None),
        # The same second for both (cloud__status__delivered-cbp): the rank decides.
        ("same-second", "delivered", read, None),
        ("same-second", "sent", read, None),
    ]
    async with running(_settings(db_url), roles=WEB_RECONCILER) as started:
        for wamid, status, at, code in statuses:
            body = _status_body(channel, f"wamid.{wamid}", status, at, code=code)
            await _post_ok(_hook(started.http_port, channel), body)
            await wait_until(lambda: _settled(db_url), within=10)

    read_at = _ts(read)
    for wamid, message_id in rows.items():
        view = await _row_view(db_url, message_id)
        state = "delivered" if wamid == "same-second" else "read"
        assert (view["state"], view["sent_as"]) == (state, "freeform"), (wamid, view)
        assert (view["sent_at"], view["delivered_at"]) == (read_at, read_at), wamid
        assert view["read_at"] == (None if wamid == "same-second" else read_at), wamid
    verdicts = {(h[1], h[2]): h[4] for h in await _history(db_url)}
    assert verdicts == {
        ("wamid.alone", "read"): "applied",
        ("wamid.failed-later", "read"): "applied",
        ("wamid.failed-later", "failed"): "no_downgrade",
        ("wamid.window-later", "read"): "applied",
        ("wamid.window-later", "failed"): "no_downgrade",
        ("wamid.deleted-later", "read"): "applied",
        ("wamid.deleted-later", "deleted"): "not_delivery",
        ("wamid.same-second", "delivered"): "applied",
        ("wamid.same-second", "sent"): "no_downgrade",
    }


# --- 3. End to end with the sandbox ----------------------------------------------------------


# Half per channel. Every message brings six notification POSTs (three statuses, each twice),
# and the sandbox, the receiver and the reconciler share this one process (~1,200 POSTs a second
# here). The send rate is held below that, so that the sandbox's 5 s POST timeout (after which
# it retries, four tries in all) never drops a notification for good.
E2E_MESSAGES = 3000
E2E_RATE = 90.0  # messages a second per channel: 2 x 90 x 6 = 1,080 POSTs a second


async def _register_webhooks(settings: Settings, port: int | None) -> None:
    async with create_session(4, timedelta(seconds=10)) as session:
        client = ApiClient(session)
        for channel in settings.channels:
            answer = await client.set_webhook(channel, _hook(port, channel.id))
            assert answer.status == 200, answer


def _notified_times(api: Sandbox) -> dict[str, dict[str, int]]:
    """wamid -> status -> the Unix second the sandbox wrote into its notifications."""
    times: dict[str, dict[str, int]] = {}
    for post in api.notifications_sent:
        body = post.body
        value = body["entry"][0]["changes"][0]["value"] if "entry" in body else body
        for item in value["statuses"]:
            seen = times.setdefault(item["id"], {}).setdefault(
                item["status"], int(item["timestamp"])
            )
            assert seen == int(item["timestamp"]), item  # a repeat carries the same time
    return times


@pytest.mark.timeout(900)  # progress-bounded: a starved machine is slow, not wrong
async def test_end_to_end_every_message_ends_read_with_the_notified_times(db_url: str) -> None:
    api = Sandbox(
        KEYS, reorder=True, duplicate=True, status_delays=(0.01, 0.05, 0.1), seed=20261126
    )
    base_url = await api.start()
    try:
        settings = _settings(db_url, base_url, rate=E2E_RATE)
        async with running(settings, roles={"sender", "reconciler", "web"}) as started:
            await _register_webhooks(settings, started.http_port)
            await enqueue_in_window(db_url, E2E_MESSAGES)

            async def read() -> int:
                rows = await fetch(
                    db_url, "SELECT count(*) FROM outbox.messages WHERE state = 'read'"
                )
                return int(rows[0][0])

            # Sender, API, receiver and reconciler share this process: on a starved machine
            # they may take minutes, so only a stall fails the test.
            await wait_for_progress(read, E2E_MESSAGES)
            await api.wait_idle()

            async def quiet() -> bool:
                return await _settled(db_url) and await _parked(db_url) == 0

            # A status parked behind its row's result write is tried again after 1, 2, 4 … s.
            await wait_until(quiet, within=60, interval=0.1)
    finally:
        await api.stop()

    # Every notification was taken in (a POST the sandbox gave up on may still have been
    # stored, so there can be more rows than 200s, never fewer).
    acknowledged = Counter(orjson.dumps(p.body) for p in api.notifications_sent if p.outcome == 200)
    assert acknowledged.keys() == {orjson.dumps(p.body) for p in api.notifications_sent}
    assert len(acknowledged) == 3 * E2E_MESSAGES
    times = _notified_times(api)
    rows = await fetch(
        db_url, "SELECT channel, wamid, state, sent_at, delivered_at, read_at FROM outbox.messages"
    )
    assert len(rows) == E2E_MESSAGES
    half = E2E_MESSAGES // 2
    assert Counter(r["channel"] for r in rows) == {"onprem": half, "cloud": half}
    assert {r["wamid"] for r in rows} == times.keys()
    for r in rows:
        expected = times[r["wamid"]]
        assert r["state"] == "read"
        assert (r["sent_at"], r["delivered_at"], r["read_at"]) == (
            _ts(expected["sent"]),
            _ts(expected["delivered"]),
            _ts(expected["read"]),
        ), r["wamid"]
        assert r["sent_at"] <= r["delivered_at"] <= r["read_at"]
    webhooks = await _webhook_rows(db_url)
    assert len(webhooks) >= sum(acknowledged.values())
    assert all(w[2] is not None and w[3] is None for w in webhooks)
    assert await _scalar(db_url, "SELECT count(*) FROM outbox.status_history") == 3 * E2E_MESSAGES
    assert await _parked(db_url) == 0


@pytest.mark.parametrize("channel", CHANNELS)
async def test_a_status_before_the_send_result_is_committed_waits_for_it(
    db_url: str, channel: str
) -> None:
    """The row is still `sending` (its wamid not written yet) when the status arrives; Cloud
    names the row by biz_opaque_callback_data, On-Premise only by the wamid."""
    message_id = await _seed(db_url, channel, None, state="sending")
    wamid = f"wamid.early.{channel}"
    callback = f"outbox:{message_id}" if channel == "cloud" else None
    body = _status_body(channel, wamid, "delivered", TIMES["delivered"], callback=callback)
    async with running(_settings(db_url), roles=WEB_RECONCILER) as started:
        await _post_ok(_hook(started.http_port, channel), body)
        await wait_until(lambda: _settled(db_url), within=10)
        assert await _parked(db_url, orphaned=False) == 1
        assert (await row(db_url, message_id))["state"] == "sending"
        assert await _history(db_url) == []
        # The sender's result lands.
        await fetch(
            db_url,
            "UPDATE outbox.messages SET state = 'accepted', wamid = $2, accepted_at = now()"
            " WHERE id = $1",
            message_id,
            wamid,
        )
        await wait_until(_no_parked(db_url), within=10, interval=0.05)

    view = await _row_view(db_url, message_id)
    at = _ts(TIMES["delivered"])
    assert (view["state"], view["sent_at"], view["delivered_at"]) == ("delivered", at, at)
    assert await _history(db_url) == [(message_id, wamid, "delivered", at, "applied", None)]


# --- 4. Robustness: whatever is posted ------------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
_KEYS = st.one_of(
    st.sampled_from(
        [
            "messages",
            "statuses",
            "errors",
            "contacts",
            "entry",
            "changes",
            "value",
            "field",
            "id",
            "status",
            "timestamp",
            "from",
            "type",
            "recipient_id",
            "biz_opaque_callback_data",
            "code",
            "title",
            "error_data",
        ]
    ),
    _TEXT,
)
_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    _TEXT,
    st.sampled_from(
        [
            "",
            " ",
            "sent",
            "delivered",
            "READ",
            "failed",
            "deleted",
            "messages",
            "system",
            "outbox:1",
            "outbox:0",
            "outbox:99999999999999999999",
            " 1454119029 ",
            "99999999999999999999",
            "253402300800",
            "-5",
            "+49 151 0000 0001",
            "wamid.robust.onprem.0",
            "wamid.robust.cloud.0",
        ]
    ),
)
_JSON = st.recursive(
    _LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children, max_size=5),
    max_leaves=20,
)


@functools.cache
def _envelopes() -> list[dict[str, Any]]:
    """Real shapes to mutate: the corpus's notifications (when present) and our own."""
    ours: list[dict[str, Any]] = []
    for channel in CHANNELS:
        wamid = f"wamid.robust.{channel}.0"
        ours += [
            _status_body(channel, wamid, "sent", T0, callback="outbox:1"),
            _status_body(channel, wamid, "failed", T0, code=131047),
            _status_body(channel, wamid, "failed", T0, code=131026),
            _inbound_body(channel, "4915100000042", T0, "wamid.in.robust"),
        ]
    corpus = [json.loads(p.read_bytes()) for p in _bodies("inbound", "status", "error", "mixed")]
    return ours + corpus


def _slots(value: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) pair in a JSON value, depth first."""
    items: list[tuple[Any, Any]]
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    else:
        return []
    slots: list[tuple[Any, Any]] = []
    for key, child in items:
        slots.append((value, key))
        slots += _slots(child)
    return slots


@st.composite
def _mutated(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(_envelopes())))
    for _ in range(draw(st.integers(1, 3))):
        slots = _slots(body)
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        if isinstance(container, dict) and draw(st.booleans()):
            del container[key]
        else:
            container[key] = draw(_JSON)
    return body


_POSTS = st.tuples(
    st.sampled_from(CHANNELS),
    st.one_of(
        _mutated().map(orjson.dumps),
        st.dictionaries(_KEYS, _JSON, max_size=5).map(orjson.dumps),
        _JSON.filter(lambda v: not isinstance(v, dict)).map(orjson.dumps),
        st.binary(max_size=40),
    ),
)


def _expected_answer(raw: bytes) -> int:
    """200 for any JSON object (this generator never puts NUL into a string), else 400."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return 400
    if not isinstance(value, dict):
        return 400
    return 400 if "\x00" in json.dumps(value, ensure_ascii=False) else 200


def _task_alive(name: str) -> bool:
    return any(t.get_name() == name and not t.done() for t in asyncio.all_tasks())


async def test_any_posted_body_is_answered_without_5xx_and_processed(db_url: str) -> None:
    """Hypothesis drives the examples from a worker thread, so one daemon and one database
    serve them all while this event loop keeps running the daemon."""
    for channel in CHANNELS:
        await _seed(db_url, channel, f"wamid.robust.{channel}.0")
    loop = asyncio.get_running_loop()
    answers: Counter[int] = Counter()
    poll = await asyncpg.connect(db_url)
    async with running(_settings(db_url), roles=WEB_RECONCILER) as started:

        async def one(channel: str, raw: bytes) -> None:
            status, answer = await _post(_hook(started.http_port, channel), raw)
            answers[status] += 1
            assert status == _expected_answer(raw), (status, answer, raw)
            if status == 200:
                stored = int(answer["stored"])

                async def processed() -> bool:
                    return (
                        await poll.fetchval(
                            "SELECT processed_at IS NOT NULL FROM outbox.webhook_events"
                            " WHERE id = $1",
                            stored,
                        )
                        is True
                    )

                await wait_until(processed, within=10, interval=0.005)
            assert _task_alive("outbox.reconciler")

        @hsettings(
            max_examples=60,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(post=_POSTS)
        def examples(post: tuple[str, bytes]) -> None:
            asyncio.run_coroutine_threadsafe(one(*post), loop).result(timeout=30)

        await asyncio.to_thread(examples)

        assert _task_alive("outbox.reconciler")
        assert await _settled(db_url)
        # A normal status is still applied afterwards.
        message_id = await _seed(db_url, "cloud", "wamid.robust.after")
        await _post_ok(
            _hook(started.http_port, "cloud"),
            _status_body("cloud", "wamid.robust.after", "read", T0),
        )

        async def applied() -> bool:
            return bool((await row(db_url, message_id))["state"] == "read")

        await wait_until(applied, within=10)
        assert _task_alive("outbox.reconciler")
    await poll.close()
    assert answers[200] > 0, answers
    assert answers[400] > 0, answers
    assert not [s for s in answers if s >= 500], answers


# --- 5. A row that cannot be processed -------------------------------------------------------


async def test_a_row_that_cannot_be_processed_is_set_aside_and_its_batch_goes_on(
    db_url: str,
) -> None:
    """jsonb keeps 1e400 exactly and gives it back as 401 digits, which no double holds: the
    reconciler cannot parse the stored row (the receiver would have refused it; another
    service writing webhook_events may not)."""
    message_id = await _seed(db_url, "cloud", "wamid.good")
    async with running(_settings(db_url), roles={"reconciler"}):
        good_status, bad, good_inbound = await _store_directly(
            db_url,
            [
                ("cloud", json.dumps(_status_body("cloud", "wamid.good", "sent", T0))),
                ("cloud", '{"statuses": [], "size": 1e400}'),
                ("onprem", json.dumps(_inbound_body("onprem", "4915100000009", T0, "in.9"))),
            ],
        )
        await wait_until(lambda: _settled(db_url), within=10)

    webhooks = {w[0]: w for w in await _webhook_rows(db_url)}
    assert webhooks[bad][2] is not None
    assert webhooks[bad][3].startswith("cannot be processed"), webhooks[bad][3]
    assert webhooks[good_status][2] is not None
    assert webhooks[good_status][3] is None
    assert webhooks[good_inbound][2] is not None
    assert webhooks[good_inbound][3] is None
    assert (await row(db_url, message_id))["state"] == "sent"
    assert await _contacts(db_url, "onprem") == {"4915100000009": _ts(T0)}


_LONG_STATUS = "".join(random.Random(7).choices("abcdefghijklmnopqrstuvwxyz0123456789", k=20000))


async def test_a_row_the_database_refuses_is_set_aside_and_later_rows_go_on(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the parser's length cap lifted, a 20,000-character status value reaches
    status_history, whose unique index cannot hold it (ProgramLimitExceeded): that is a row
    problem, not an outage, so the batch is split, the row set aside, later rows applied."""
    monkeypatch.setattr(notifications, "_MAX_STATUS", 10**6)
    message_id = await _seed(db_url, "cloud", "wamid.good")
    body = _status_body("cloud", "wamid.good", _LONG_STATUS, T0)
    async with running(_settings(db_url), roles=WEB_RECONCILER) as started:
        bad = await _post_ok(_hook(started.http_port, "cloud"), body)
        later = await _post_ok(
            _hook(started.http_port, "cloud"), _status_body("cloud", "wamid.good", "sent", T0)
        )
        await wait_until(lambda: _settled(db_url), within=10, interval=0.1)
    webhooks = {w[0]: w for w in await _webhook_rows(db_url)}
    assert webhooks[bad][3] is not None
    assert webhooks[bad][3].startswith("cannot be processed")
    assert webhooks[later][2] is not None
    assert (await row(db_url, message_id))["state"] == "sent"


async def test_overlong_values_are_ignored_before_they_reach_the_database(db_url: str) -> None:
    message_id = await _seed(db_url, "cloud", "wamid.good")
    body = _status_body("cloud", "wamid.good", _LONG_STATUS, T0)
    async with running(_settings(db_url), roles=WEB_RECONCILER) as started:
        bad = await _post_ok(_hook(started.http_port, "cloud"), body)
        await wait_until(lambda: _settled(db_url), within=10, interval=0.1)
    webhooks = {w[0]: w for w in await _webhook_rows(db_url)}
    assert webhooks[bad][3] == "ignored: status value too long"
    assert (await row(db_url, message_id))["state"] == "accepted"
    assert await _history(db_url) == []


async def test_a_status_cannot_take_a_wamid_another_row_owns(db_url: str) -> None:
    """A status naming, by biz_opaque_callback_data, an `unknown` row of one channel with the
    wamid another channel's row already has is not applied to either: it waits as parked."""
    message_id = await _seed(db_url, "cloud", "wamid.good")
    unknown = await _seed(db_url, "onprem", None, state="unknown")
    body = _status_body("onprem", "wamid.good", "sent", T0, callback=f"outbox:{unknown}")
    async with running(_settings(db_url), roles=WEB_RECONCILER) as started:
        bad = await _post_ok(_hook(started.http_port, "onprem"), body)
        later = await _post_ok(
            _hook(started.http_port, "cloud"), _status_body("cloud", "wamid.good", "sent", T0)
        )

        async def both_processed() -> bool:
            rows = {w[0]: w for w in await _webhook_rows(db_url)}
            return rows[bad][2] is not None and rows[later][2] is not None

        await wait_until(both_processed, within=10, interval=0.1)
    assert (await row(db_url, message_id))["state"] == "sent"
    stuck = await row(db_url, unknown)
    assert (stuck["state"], stuck["wamid"]) == ("unknown", None)
    assert await _parked(db_url, orphaned=False) == 1


# --- 6. Two reconcilers on one database ------------------------------------------------------


class _LogRecorder:
    """Stands in for a structlog logger: keeps every event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        def record(event: str, **fields: Any) -> None:
            self.events.append((level, event, fields))

        return record


async def test_two_reconcilers_share_the_rows_once_each_without_deadlock(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = _LogRecorder()
    monkeypatch.setattr(reconciler_module, "log", recorder)
    taken: Counter[int] = Counter()  # webhook rows per Reconciler (one per daemon)
    original = Reconciler.process_webhooks

    async def counting(self: Reconciler, limit: int) -> Report:
        report = await original(self, limit)
        taken[id(self)] += report.webhooks
        return report

    monkeypatch.setattr(Reconciler, "process_webhooks", counting)

    per_channel = 250
    seeded = await fetch(
        db_url,
        "INSERT INTO outbox.messages"
        " (channel, recipient, payload, state, wamid, sent_as, accepted_at)"
        " SELECT c, '49151' || lpad(g::text, 8, '0'), '{\"type\": \"text\"}', 'accepted',"
        "        'wamid.two.' || c || '.' || g, 'freeform', now()"
        " FROM unnest($1::text[]) AS c, generate_series(1, $2) AS g"
        " RETURNING id, channel, wamid",
        list(CHANNELS),
        per_channel,
    )
    rng = random.Random(6)
    bodies: list[tuple[str, str]] = []
    for r in seeded:
        for status, at in TIMES.items():
            bodies.append(
                (r["channel"], json.dumps(_status_body(r["channel"], r["wamid"], status, at)))
            )
    bodies += rng.sample(bodies, 250)  # repeats, in other batches or the same one
    inbound: dict[tuple[str, str], int] = {}
    for n in range(250):  # 25 users per channel write several times each: contended upserts
        channel, wa_id, at = CHANNELS[n % 2], f"4917000000{n % 25:03d}", T0 + n
        inbound[(channel, wa_id)] = max(inbound.get((channel, wa_id), 0), at)
        bodies.append((channel, json.dumps(_inbound_body(channel, wa_id, at, f"in.{n}"))))
    rng.shuffle(bodies)
    assert len(bodies) == 2000

    settings = _settings(db_url, batch_size=20)
    async with (
        running(settings, roles={"reconciler"}),
        running(settings, roles={"reconciler"}),
    ):
        await _store_directly(db_url, bodies)
        await wait_until(lambda: _settled(db_url), within=40, interval=0.1)

    webhooks = await fetch(
        db_url,
        "SELECT count(*), min(attempts), max(attempts) FROM outbox.webhook_events"
        " WHERE processed_at IS NOT NULL AND error IS NULL",
    )
    assert tuple(webhooks[0]) == (2000, 1, 1)  # each processed exactly once
    assert len(taken) == 2, taken
    assert all(n > 0 for n in taken.values()), taken
    assert sum(taken.values()) == 2000
    duplicates = await fetch(
        db_url,
        "SELECT message_id, status, count(*) FROM outbox.status_history"
        " GROUP BY message_id, status HAVING count(*) > 1",
    )
    assert duplicates == []
    assert await _scalar(db_url, "SELECT count(*) FROM outbox.status_history") == 3 * len(seeded)
    states = await fetch(
        db_url,
        "SELECT state, sent_at, delivered_at, read_at, count(*) FROM outbox.messages"
        " GROUP BY 1, 2, 3, 4",
    )
    assert [tuple(s) for s in states] == [
        ("read", _ts(TIMES["sent"]), _ts(TIMES["delivered"]), _ts(TIMES["read"]), len(seeded))
    ]
    contacts = await fetch(db_url, "SELECT channel, wa_id, last_inbound_at FROM outbox.contacts")
    assert {(c["channel"], c["wa_id"]): c["last_inbound_at"] for c in contacts} == {
        key: _ts(at) for key, at in inbound.items()
    }
    assert await _parked(db_url) == 0
    problems = [e for e in recorder.events if e[0] in ("warning", "error")]
    assert problems == [], problems[:3]
    assert "deadlock" not in repr(recorder.events)
    deadlocks = await _scalar(
        db_url, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
    )
    assert deadlocks == 0


# --- 7. An inbound message reopens the window ------------------------------------------------


@pytest.mark.parametrize("channel", CHANNELS)
async def test_an_inbound_message_reopens_the_window(
    db_url: str, sandbox: tuple[Sandbox, str], channel: str
) -> None:
    api, base_url = sandbox
    recipient = "4915112345678"
    payload = {"type": "text", "text": {"body": "are you there?"}}
    async with running(
        _settings(db_url, base_url), roles={"sender", "reconciler", "web"}
    ) as started:
        before = await insert(db_url, channel, recipient, payload, inbound_ago=None)

        async def state_of(message_id: int, state: str) -> bool:
            return bool((await row(db_url, message_id))["state"] == state)

        await wait_until(lambda: state_of(before, "failed"), within=10)
        assert (await row(db_url, before))["error_code"] == "window_closed"
        assert api.message_requests() == []

        await _post_ok(
            _hook(started.http_port, channel),
            _inbound_body(channel, recipient, int(time.time()), "wamid.in.reopen"),
        )

        async def window_known() -> bool:
            return recipient in await _contacts(db_url, channel)

        await wait_until(window_known, within=10)
        after = await insert(db_url, channel, recipient, payload, inbound_ago=None)
        await wait_until(lambda: state_of(after, "accepted"), within=10)

    assert (await row(db_url, after))["sent_as"] == "freeform"
    requests = api.message_requests()
    assert len(requests) == 1
    assert requests[0].body["to"] == recipient
    assert requests[0].dialect == channel
    assert (await row(db_url, before))["state"] == "failed"
