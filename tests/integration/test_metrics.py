"""GET /metrics: exact counts for what the daemon did, gauges read from the database, the doc.

One daemon run (sender, reconciler, web) against the sandbox is shared by the tests that read
what it did: sends of every outcome, status webhooks, an orphan, an error notice. The gauges get
their own daemon (without the reconciler, so webhook rows stay unprocessed) and a direct check of
`GaugeStore.sample` on a seeded database; the sampler is also run against no database at all.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.config import MetricsConfig, Settings
from outbox.db.engine import create_engine
from outbox.db.gauges import GaugeStore
from outbox.db.operator_store import OperatorStore
from outbox.domain.models import State
from outbox.http.api_client import ApiClient, create_session
from outbox.metrics import UNKNOWN_CHANNEL as UNKNOWN
from outbox.metrics import Metrics
from outbox.ports import Sample
from outbox.sandbox import Fault, Sandbox
from outbox.sandbox.notifications import AcceptedMessage, status_body
from outbox.services.sampler import Sampler
from tests.paths import README
from tests.support import KEYS, fetch, running, settings_for, wait_until

pytestmark = pytest.mark.slow

SAMPLE_INTERVAL = timedelta(milliseconds=200)
TEMPLATE = {"type": "template", "template": {"name": "order_shipped", "language": {"code": "en"}}}
TEXT = {"type": "text", "text": {"body": "hi"}}
LabelKey = tuple[tuple[str, str], ...]


# --- Reading /metrics ------------------------------------------------------------------------


@dataclass(frozen=True)
class Scrape:
    text: str
    families: dict[str, Metric]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        return cls(text, {f.name: f for f in text_string_to_metric_families(text)})

    def series(self, sample_name: str) -> dict[LabelKey, float]:
        """Every sample of that exposed name, by its sorted labels."""
        family = self.families.get(re.sub(r"_(total|count|sum|bucket)$", "", sample_name))
        if family is None:
            family = self.families.get(sample_name)
        if family is None:
            return {}
        return {
            tuple(sorted(s.labels.items())): s.value
            for s in family.samples
            if s.name == sample_name
        }

    def value(self, sample_name: str, **labels: str) -> float | None:
        return self.series(sample_name).get(tuple(sorted(labels.items())))

    def by(self, sample_name: str, *names: str) -> dict[tuple[str, ...], float]:
        """Samples keyed by the values of `names`, which must be all their labels."""
        result: dict[tuple[str, ...], float] = {}
        for key, value in self.series(sample_name).items():
            labels = dict(key)
            assert set(labels) == set(names), (sample_name, labels)
            result[tuple(labels[n] for n in names)] = value
        return result


async def scrape(port: int | None) -> Scrape:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        return Scrape.parse(await response.text())


async def until_scraped(
    port: int | None, check: Callable[[Scrape], object], within: float = 10.0
) -> Scrape:
    """Scrape until `check` passes (returns truthy without raising); fail with its last error."""
    deadline = time.monotonic() + within
    while True:
        last = await scrape(port)
        try:
            if check(last):
                return last
            problem: object = "check returned false"
        except AssertionError as exc:
            problem = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"/metrics never passed the check: {problem}")
        await asyncio.sleep(0.05)


def fast_metrics(settings: Settings) -> Settings:
    return replace(settings, metrics=replace(settings.metrics, sample_interval=SAMPLE_INTERVAL))


# --- Databases and rows ----------------------------------------------------------------------


@pytest.fixture(scope="module")
async def module_db_url(pg_server: Any, template_url: str) -> AsyncIterator[str]:
    """A fresh database for the one daemon run that several tests read."""
    name = f"m_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server.get_uri("postgres"))
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE outbox_template")
    finally:
        await admin.close()
    yield str(pg_server.get_uri(name))
    admin = await asyncpg.connect(pg_server.get_uri("postgres"))
    try:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


@dataclass(frozen=True)
class Row:
    channel: str
    recipient: str
    payload: Mapping[str, Any]
    window_open: bool = True  # the recipient wrote a minute ago
    expires_in: float | None = None  # seconds


async def insert_together(db_url: str, rows: Mapping[str, Row]) -> dict[str, int]:
    """All rows in one transaction, so the first claim sees every one of them."""
    connection = await asyncpg.connect(db_url)
    ids: dict[str, int] = {}
    try:
        async with connection.transaction():
            for name, r in rows.items():
                if r.window_open:
                    await connection.execute(
                        "INSERT INTO outbox.contacts (channel, wa_id, last_inbound_at)"
                        " VALUES ($1, $2, now() - interval '1 minute') ON CONFLICT DO NOTHING",
                        r.channel,
                        r.recipient,
                    )
                ids[name] = await connection.fetchval(
                    "INSERT INTO outbox.messages (channel, recipient, payload, expires_at)"
                    " VALUES ($1, $2, $3::jsonb, now() + make_interval(secs => $4)) RETURNING id",
                    r.channel,
                    r.recipient,
                    json.dumps(r.payload),
                    r.expires_in,
                )
    finally:
        await connection.close()
    return ids


async def post(port: int | None, path: str, body: Mapping[str, Any]) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{port}{path}", json=body) as response,
    ):
        return response.status


async def scalar(db_url: str, sql: str, *args: Any) -> Any:
    return (await fetch(db_url, sql, *args))[0][0]


# --- 1. One daemon run: sends, statuses, webhooks ---------------------------------------------

# name: the row, and the fault its first request meets (None: answered normally).
CASES: dict[str, tuple[Row, Fault | None]] = {
    "onprem_text": (Row("onprem", "4915100000101", TEXT), None),
    "onprem_template": (Row("onprem", "4915100000102", TEMPLATE), None),
    "onprem_throttled": (
        Row("onprem", "4915100000103", TEMPLATE),
        Fault("status", status=429, retry_after=0.1, times=1),
    ),
    # Held back by the throttled row ahead of it (order per recipient) past its expires_at, so
    # the sender, not the maintenance loop, finds it expired.
    "onprem_expired": (Row("onprem", "4915100000103", TEMPLATE, expires_in=1.0), None),
    "cloud_text": (Row("cloud", "4915100000104", TEXT), None),
    "cloud_permanent": (
        Row("cloud", "4915100000105", TEMPLATE),
        Fault("error_code", code=131026, http_status=400, times=1),
    ),
    "cloud_invalid": (Row("cloud", "4915100000106", {"type": "hologram"}), None),
    "cloud_window_closed": (Row("cloud", "4915100000107", TEXT, window_open=False), None),
    "cloud_no_answer": (Row("cloud", "4915100000108", TEMPLATE), Fault("disconnect", times=1)),
    # A key problem pauses the channel (outbox_channel_paused), and the probe resumes it.
    "cloud_key_trouble": (
        Row("cloud", "4915100000109", TEMPLATE),
        Fault("status", status=401, times=1),
    ),
}
FINAL_STATES = {
    "onprem_text": "read",
    "onprem_template": "read",
    "onprem_throttled": "read",
    "onprem_expired": "expired",
    "cloud_text": "read",
    "cloud_permanent": "failed",
    "cloud_invalid": "failed",
    "cloud_window_closed": "failed",
    "cloud_no_answer": "unknown",
    "cloud_key_trouble": "read",
}
EXPECTED_SENDS = {
    ("onprem", "accepted", "none"): 3,
    ("onprem", "queued", "throttle"): 1,
    ("onprem", "expired", "expired"): 1,
    ("cloud", "accepted", "none"): 2,
    ("cloud", "failed", "permanent"): 1,
    ("cloud", "failed", "invalid"): 1,
    ("cloud", "failed", "window_closed"): 1,
    ("cloud", "unknown", "network"): 1,
    ("cloud", "queued", "channel"): 1,
}
ORPHAN_WAMID = "wamid.HBgNNDkxNTEwMDAwMDE5ORUCABEYEjQ1RkE2QkYwMzE3QzI5RjAwMQA="
ORPHAN_RECIPIENT = "4915100000199"
UNKNOWN_CHANNEL = "4915100000198"  # a recipient number posted as if it were a channel id


@dataclass(frozen=True)
class Live:
    scrape: Scrape
    ids: dict[str, int]
    requests: Counter[str]  # message requests the sandbox received, by channel
    accepted: Counter[str]  # rows that reached `accepted` or later, by channel
    delivered: Counter[str]  # rows with a delivered_at, by channel
    stored_webhooks: Counter[str]  # webhook_events rows, by channel
    verdicts: Counter[tuple[str, str]]  # status_history verdicts, by (channel, verdict)
    recipients: frozenset[str]
    wamids: frozenset[str]


def live_settings(db_url: str, base_url: str) -> Settings:
    settings = settings_for(
        db_url,
        base_url,
        poll_interval=timedelta(milliseconds=50),
        # One maintenance pass at start, none later: the expired row is the sender's to find.
        maintenance_interval=timedelta(hours=1),
        breaker_cooldown=timedelta(milliseconds=200),
        unknown_channel_grace=timedelta(hours=1),
    )
    reconciler = replace(
        settings.reconciler,
        poll_interval=timedelta(milliseconds=100),
        orphan_horizon=timedelta(milliseconds=500),
    )
    return replace(fast_metrics(settings), reconciler=reconciler)


async def register_webhooks(settings: Settings, port: int | None) -> None:
    async with create_session(4, timedelta(seconds=10)) as session:
        client = ApiClient(session)
        for channel in settings.channels:
            url = f"http://127.0.0.1:{port}/webhooks/{channel.id}"
            answer = await client.set_webhook(channel, url)
            assert answer.status == 200, answer


def states_are(db_url: str, ids: Mapping[str, int], expected: Mapping[str, str]) -> Any:
    async def check() -> bool:
        rows = await fetch(
            db_url, "SELECT id, state FROM outbox.messages WHERE id = ANY($1)", list(ids.values())
        )
        states = {r["id"]: r["state"] for r in rows}
        return all(states[ids[name]] == state for name, state in expected.items())

    return check


@pytest.fixture(scope="module")
async def live(module_db_url: str) -> Live:
    db_url = module_db_url
    # Statuses come late enough that the send result is normally written first.
    api = Sandbox(KEYS, status_delays=(0.2, 0.3, 0.4))
    base_url = await api.start()
    try:
        settings = live_settings(db_url, base_url)
        async with running(settings, roles={"sender", "reconciler", "web"}) as started:
            port = started.http_port
            await register_webhooks(settings, port)
            for row, fault in CASES.values():
                if fault is not None:
                    api.faults.add(replace(fault, recipients=frozenset({row.recipient})))
            ids = await insert_together(db_url, {n: r for n, (r, _) in CASES.items()})
            await wait_until(states_are(db_url, ids, FINAL_STATES), within=20, interval=0.1)

            orphan = AcceptedMessage("cloud", ORPHAN_WAMID, ORPHAN_RECIPIENT, time.time(), None)
            assert (
                await post(port, "/webhooks/cloud", status_body(orphan, "delivered", time.time()))
                == 200
            )
            notice = {"errors": [{"code": 131000, "title": "Something went wrong"}]}
            assert await post(port, "/webhooks/onprem", notice) == 200
            assert await post(port, f"/webhooks/{UNKNOWN_CHANNEL}", notice) == 401
            await api.wait_idle()

            def settled(s: Scrape) -> bool:
                # The orphan horizon has passed, and a sample was taken after the last webhook.
                return (
                    s.value("outbox_orphan_statuses_total", channel="cloud") == 1
                    and s.value("outbox_unprocessed_webhooks") == 0
                    and s.value("outbox_parked_statuses") == 0
                    and s.value("outbox_backlog_messages", channel="cloud", state="unknown") == 1
                )

            final = await until_scraped(port, settled, within=15)
    finally:
        await api.stop()

    rows = await fetch(
        db_url, "SELECT channel, wamid, accepted_at, delivered_at FROM outbox.messages"
    )
    history = await fetch(
        db_url,
        "SELECT m.channel, h.verdict FROM outbox.status_history AS h"
        " JOIN outbox.messages AS m ON m.id = h.message_id",
    )
    webhooks = await fetch(db_url, "SELECT channel FROM outbox.webhook_events")
    return Live(
        scrape=final,
        ids=ids,
        requests=Counter(str(r.api_key_label) for r in api.message_requests()),
        accepted=Counter(r["channel"] for r in rows if r["accepted_at"] is not None),
        delivered=Counter(r["channel"] for r in rows if r["delivered_at"] is not None),
        stored_webhooks=Counter(r["channel"] for r in webhooks),
        verdicts=Counter((r["channel"], r["verdict"]) for r in history),
        recipients=frozenset({r.recipient for r, _ in CASES.values()} | {ORPHAN_RECIPIENT}),
        wamids=frozenset({r["wamid"] for r in rows if r["wamid"]} | {ORPHAN_WAMID}),
    )


async def test_sends_are_counted_by_channel_outcome_and_error_class(live: Live) -> None:
    assert live.scrape.by("outbox_sends_total", "channel", "outcome", "error_class") == (
        EXPECTED_SENDS
    )


async def test_the_sender_s_request_slots_are_read_at_the_scrape(live: Live) -> None:
    # After the drain nothing is out and nothing waits; without the wiring there is no series.
    assert live.scrape.by("outbox_sender_slots", "kind") == {
        ("requests",): 0.0,
        ("waiting",): 0.0,
    }


async def test_latency_histograms_count_requests_acceptances_and_deliveries(live: Live) -> None:
    s = live.scrape
    # Rows that failed or expired before a request (invalid, window closed, expired) add none.
    assert live.requests == {"onprem": 4, "cloud": 5}
    assert s.by("outbox_api_request_seconds_count", "channel") == {
        (c,): float(n) for c, n in live.requests.items()
    }
    assert s.by("outbox_claim_to_request_seconds_count", "channel") == {
        (c,): float(n) for c, n in live.requests.items()
    }
    assert live.accepted == {"onprem": 3, "cloud": 2}
    assert s.by("outbox_insert_to_accepted_seconds_count", "channel") == {
        (c,): float(n) for c, n in live.accepted.items()
    }
    assert live.delivered == live.accepted
    assert s.by("outbox_accepted_to_delivered_seconds_count", "channel") == {
        (c,): float(n) for c, n in live.delivered.items()
    }
    # The loopback sandbox answers in well under a second: the observations are seconds.
    for channel in ("onprem", "cloud"):
        assert 0 < (s.value("outbox_api_request_seconds_sum", channel=channel) or 0) < 5


async def test_webhook_and_reconcile_counters_match_the_database(live: Live) -> None:
    s = live.scrape
    stored = {(c, "stored"): float(n) for c, n in live.stored_webhooks.items()}
    assert s.by("outbox_webhooks_total", "channel", "outcome") == {
        **stored,
        ("unknown", "unknown_channel"): 1.0,
    }
    verdicts = s.by("outbox_status_updates_total", "channel", "verdict")
    # `parked` counts each wait (it may repeat); every other verdict is in status_history once.
    settled = {k: v for k, v in verdicts.items() if k[1] != "parked"}
    assert settled == {k: float(n) for k, n in live.verdicts.items()}
    assert verdicts[("cloud", "parked")] >= 1  # the orphan
    assert s.by("outbox_orphan_statuses_total", "channel") == {("cloud",): 1.0}
    assert s.by("outbox_webhook_notices_total", "channel", "kind") == {("onprem", "error"): 1.0}
    assert s.value("outbox_webhooks_unprocessable_total") == 0
    # The key trouble paused the cloud channel, and the successful probe resumed it.
    assert s.by("outbox_channel_paused", "channel") == {("cloud",): 0.0, ("onprem",): 0.0}
    # The throttle cut onprem's rate (it climbs back at 5 % a second, so by the scrape it may
    # be whole again); nothing cut cloud's.
    rates = s.by("outbox_channel_rate_per_second", "channel")
    assert rates.keys() == {("onprem",), ("cloud",)}
    assert 0 < rates[("onprem",)] <= 5000.0
    assert rates[("cloud",)] == 5000.0


async def test_labels_name_no_recipient_message_id_or_wamid(live: Live) -> None:
    ids = {str(i) for i in live.ids.values()} | {f"outbox:{i}" for i in live.ids.values()}
    leaks = []
    for family in live.scrape.families.values():
        if not family.name.startswith("outbox_"):
            continue  # python_info's version and python_gc's generation numbers look like ids
        for sample in family.samples:
            for name, value in sample.labels.items():
                if (
                    value in ids
                    or any(r in value for r in live.recipients | {UNKNOWN_CHANNEL})
                    or any(w in value for w in live.wamids)
                ):
                    leaks.append((sample.name, name, value))
    assert not leaks
    # A full exposition was scanned, not a nearly empty one.
    assert len(live.scrape.families) >= 20


# --- 5, 6. The published list, and promtool ---------------------------------------------------

# The README's metrics table: | `name` | type | labels | meaning |
_DOC_ROW = re.compile(r"^\| `(outbox_\w+)` \| (\w+)[^|]* \| ([^|]*) \|")


def documented() -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (type, label names), from the README's metrics table."""
    text = README.read_text(encoding="utf-8")
    table = text.split("### Metrics", 1)[1].split("###", 1)[0]
    doc: dict[str, tuple[str, frozenset[str]]] = {}
    for line in table.splitlines():
        match = _DOC_ROW.match(line)
        if match:
            labels = frozenset(n.strip() for n in match.group(3).split(",") if n.strip() != "-")
            doc[match.group(1)] = (match.group(2), labels)
    return doc


def exposed(s: Scrape) -> dict[str, tuple[str, frozenset[str] | None]]:
    """name as documented -> (type, label names; None when no sample shows them)."""
    live: dict[str, tuple[str, frozenset[str] | None]] = {}
    for family in s.families.values():
        if not family.name.startswith("outbox_") or family.name.endswith("_created"):
            continue
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = {frozenset(k for k in x.labels if k != "le") for x in family.samples}
        assert len(labels) <= 1, (name, labels)
        live[name] = (family.type, labels.pop() if labels else None)
    return live


async def test_metrics_match_the_published_list(live: Live) -> None:
    doc, exposure = documented(), exposed(live.scrape)
    assert len(doc) >= 20, "the list was not parsed"
    assert sorted(doc.keys() - exposure.keys()) == [], "documented but not exposed"
    assert sorted(exposure.keys() - doc.keys()) == [], "exposed but not documented"
    # The live run gave every labelled family a sample, so its label names can be compared.
    assert {n: e for n, e in exposure.items() if e[1] is None} == {}
    assert exposure == doc


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
async def test_promtool_finds_nothing_to_lint(live: Live) -> None:
    process = await asyncio.create_subprocess_exec(
        "promtool",
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(live.scrape.text.encode()), 30)
    assert (process.returncode, output.decode()) == (0, "")


# --- 2. Gauges read from the database ---------------------------------------------------------

# A channel no daemon here is configured for: its rows stay where they are put.
ELSEWHERE = "elsewhere"
_ROW = "INSERT INTO outbox.messages (channel, recipient, payload{columns}) VALUES ($1, $2, '{{}}'::jsonb{values})"


@dataclass(frozen=True)
class Seeded:
    backlog: dict[tuple[str, str], int]
    oldest_due: float  # seconds, for ELSEWHERE
    dlr_missing: dict[str, int]
    unprocessed: int
    lag: float  # seconds
    parked: int
    dead_messages: int  # at least


async def seed_gauges(db_url: str) -> Seeded:
    connection = await asyncpg.connect(db_url)
    counter = iter(range(4915100000300, 4915100000400))

    async def message(channel: str, **columns: str) -> None:
        names = "".join(f", {n}" for n in columns)
        values = "".join(f", {v}" for v in columns.values())
        await connection.execute(
            _ROW.format(columns=names, values=values), channel, str(next(counter))
        )

    try:
        async with connection.transaction():
            # Backlog: ready since 10 minutes (inserted then), ready now, a retry due 2 minutes
            # ago, scheduled.
            ten_minutes_ago = "now() - interval '10 minutes'"
            await message(
                ELSEWHERE,
                send_after=ten_minutes_ago,
                created_at=ten_minutes_ago,
                updated_at=ten_minutes_ago,
            )
            await message(ELSEWHERE)
            await message(ELSEWHERE, attempts="1", next_attempt_at="now() - interval '2 minutes'")
            await message(ELSEWHERE, send_after="now() + interval '1 hour'")
            await message(
                ELSEWHERE,
                state="'sending'",
                claimed_by="'another-worker'",
                lease_until="now() + interval '1 hour'",
            )
            await message(ELSEWHERE, state="'unknown'")
            await message(ELSEWHERE, state="'unknown'")
            # Delivery reports: missing after 24 h, within 7 days, still accepted or sent.
            for channel, state, ago in [
                ("onprem", "accepted", "2 days"),
                ("onprem", "accepted", "47 hours"),
                ("onprem", "sent", "3 days"),
                ("cloud", "accepted", "6 days 23 hours"),
                ("onprem", "accepted", "1 hour"),  # not missing yet
                ("onprem", "accepted", "10 days"),  # no longer news
                ("cloud", "delivered", "2 days"),  # has its report
                ("cloud", "read", "3 days"),
            ]:
                await message(
                    channel,
                    state=f"'{state}'",
                    wamid=f"'wamid.{uuid.uuid4().hex}'",
                    accepted_at=f"now() - interval '{ago}'",
                )
            # The processed row has the lowest id: the lag must skip it, not just come later.
            await connection.execute(
                "INSERT INTO outbox.webhook_events (channel, payload, received_at, processed_at)"
                " VALUES ('cloud', '{}', now() - interval '1 hour', now() - interval '59 minutes'),"
                " ('cloud', '{}', now() - interval '5 minutes', NULL),"
                " ('onprem', '{}', now() - interval '2 minutes', NULL)"
            )
            await connection.execute(
                "INSERT INTO outbox.parked_statuses (channel, status, orphaned_at)"
                " VALUES ('cloud', '{}', NULL), ('onprem', '{}', NULL), ('cloud', '{}', now())"
            )
        # Vacuum debt: rows deleted (fewer than autovacuum's threshold of 50, so they stay).
        await connection.execute(
            "INSERT INTO outbox.messages (channel, recipient, payload, state)"
            " SELECT 'purged', '4915100000999', '{}', 'cancelled' FROM generate_series(1, 30)"
        )
        await connection.execute("DELETE FROM outbox.messages WHERE channel = 'purged'")
    finally:
        await connection.close()  # which also reports its statistics
    return Seeded(
        backlog={(ELSEWHERE, "queued"): 4, (ELSEWHERE, "sending"): 1, (ELSEWHERE, "unknown"): 2},
        oldest_due=600.0,
        dlr_missing={"onprem": 3, "cloud": 1},
        unprocessed=2,
        lag=300.0,
        parked=2,
        dead_messages=30,
    )


async def test_gauge_store_reads_exact_numbers(db_url: str, engine: AsyncEngine) -> None:
    seeded = await seed_gauges(db_url)
    store = GaugeStore(engine)

    sample = await store.sample(timedelta(hours=24), timedelta(days=7))

    assert sample.backlog == seeded.backlog
    assert sample.oldest_due_seconds.keys() == {ELSEWHERE}
    assert seeded.oldest_due <= sample.oldest_due_seconds[ELSEWHERE] < seeded.oldest_due + 10
    assert sample.dlr_missing == seeded.dlr_missing
    assert sample.unprocessed_webhooks == seeded.unprocessed
    assert seeded.lag <= sample.reconciler_lag_seconds < seeded.lag + 10
    assert sample.parked_statuses == seeded.parked
    assert sample.dead_tuples["messages"] >= seeded.dead_messages
    assert {"messages", "webhook_events", "status_history", "parked_statuses"} <= set(
        sample.dead_tuples
    )
    assert 0 <= sample.oldest_transaction_seconds < 5
    # The DLR window follows its two settings: 30 min takes in the row of an hour ago, 11 days
    # the one of ten days ago.
    wider = await store.sample(timedelta(minutes=30), timedelta(days=11))
    assert wider.dlr_missing == {"onprem": 5, "cloud": 1}
    narrower = await store.sample(timedelta(days=4), timedelta(days=7))
    assert narrower.dlr_missing == {"cloud": 1}


async def test_gauge_store_reads_zeros_from_an_empty_database(engine: AsyncEngine) -> None:
    sample = await GaugeStore(engine).sample(timedelta(hours=24), timedelta(days=7))
    assert sample == Sample(
        dead_tuples=sample.dead_tuples,
        oldest_transaction_seconds=sample.oldest_transaction_seconds,
    )


async def test_sampled_gauges_show_the_database_on_metrics(db_url: str, sandbox: Any) -> None:
    _, base_url = sandbox
    seeded = await seed_gauges(db_url)
    settings = fast_metrics(
        settings_for(db_url, base_url, unknown_channel_grace=timedelta(hours=1))
    )
    # No reconciler: the webhook rows stay unprocessed.
    async with running(settings, roles={"sender", "web"}) as started:
        port = started.http_port

        def database_read(s: Scrape) -> bool:
            backlog = s.by("outbox_backlog_messages", "channel", "state")
            # Issue 19: a channel no replica configured is one label, whatever its string.
            expected = {
                (c, st): float(seeded.backlog.get((ELSEWHERE if c == UNKNOWN else c, st), 0))
                for c in ("onprem", "cloud", UNKNOWN)
                for st in ("queued", "sending", "unknown")
            }
            assert backlog == expected
            oldest = s.by("outbox_oldest_due_age_seconds", "channel")
            assert oldest.keys() == {("onprem",), ("cloud",), (UNKNOWN,)}
            assert oldest[("onprem",)] == oldest[("cloud",)] == 0
            assert seeded.oldest_due <= oldest[(UNKNOWN,)] < seeded.oldest_due + 20
            assert s.by("outbox_dlr_missing_messages", "channel") == {
                (c,): float(n) for c, n in seeded.dlr_missing.items()
            }
            assert s.value("outbox_unprocessed_webhooks") == seeded.unprocessed
            assert seeded.lag <= (s.value("outbox_reconciler_lag_seconds") or 0) < seeded.lag + 20
            assert s.value("outbox_parked_statuses") == seeded.parked
            dead = s.value("outbox_table_dead_tuples", table="messages")
            assert (dead or 0) >= seeded.dead_messages
            stamp = s.value("outbox_sample_timestamp_seconds") or 0
            assert abs(time.time() - stamp) < 2
            return True

        await until_scraped(port, database_read, within=5)

        # A transaction held open elsewhere shows, and stops showing once it ends.
        holder = await asyncpg.connect(db_url)
        try:
            transaction = holder.transaction()
            await transaction.start()
            opened = time.monotonic()
            await holder.fetchval("SELECT txid_current()")
            await asyncio.sleep(2)

            def held(s: Scrape) -> bool:
                age = s.value("outbox_oldest_transaction_age_seconds") or 0
                return 2.0 <= age <= time.monotonic() - opened + 0.5

            await until_scraped(port, held, within=5)
            await transaction.commit()
        finally:
            await holder.close()

        def released(s: Scrape) -> bool:
            return (s.value("outbox_oldest_transaction_age_seconds") or 0) < 1.0

        await until_scraped(port, released, within=5)


# --- 3. The sampler without a database --------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def gauge_values(registry: CollectorRegistry) -> dict[tuple[str, LabelKey], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        if family.type == "gauge" and family.name.startswith("outbox_")  # not the process's
        for s in family.samples
    }


async def test_sampler_survives_the_database_going_away() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.know_channels(["onprem"])
    metrics.sampled(
        Sample(
            backlog={("onprem", "queued"): 7, ("onprem", "unknown"): 1},
            oldest_due_seconds={"onprem": 42.0},
            dlr_missing={"onprem": 3},
            unprocessed_webhooks=5,
            reconciler_lag_seconds=9.0,
            parked_statuses=2,
            dead_tuples={"messages": 11},
            oldest_transaction_seconds=4.0,
        )
    )
    before = gauge_values(registry)
    engine = create_engine(f"postgresql://outbox@127.0.0.1:{closed_port()}/outbox", pool_size=1)
    config = MetricsConfig(sample_interval=timedelta(milliseconds=20))
    sampler = Sampler(GaugeStore(engine), config, metrics)
    try:
        await sampler.tick()
        await sampler.tick()
        assert registry.get_sample_value("outbox_sample_errors_total") == 2
        assert gauge_values(registry) == before

        # The loop goes on failing politely until it is stopped.
        stop = asyncio.Event()
        task = asyncio.create_task(sampler.run(stop))

        def errors() -> float:
            return registry.get_sample_value("outbox_sample_errors_total") or 0

        await wait_until(lambda: errors() >= 5, within=10)
        assert not task.done()
        stop.set()
        await asyncio.wait_for(task, 5)
    finally:
        await engine.dispose()
    assert gauge_values(registry) == before
    assert before[("outbox_backlog_messages", (("channel", "onprem"), ("state", "queued")))] == 7


# --- Bugs found (and one fixed meanwhile) ----------------------------------------------------


async def test_deliveries_in_a_split_batch_are_still_observed(db_url: str) -> None:
    """At 9bf9fc4 Reconciler._one_by_one dropped report.delivered_after; Report.add fixed it."""
    wamid = f"wamid.{uuid.uuid4().hex}"
    await fetch(
        db_url,
        "INSERT INTO outbox.messages (channel, recipient, payload, state, wamid, sent_as,"
        " accepted_at) VALUES ('onprem', '4915100000501', '{\"type\": \"text\"}', 'accepted',"
        " $1, 'freeform', now() - interval '1 minute')",
        wamid,
    )
    delivered = status_body(
        AcceptedMessage("onprem", wamid, "4915100000501", time.time(), None),
        "delivered",
        time.time(),
    )
    # Stored before the reconciler starts, so both are in its first batch. jsonb keeps 1e400,
    # which no double holds: that row cannot be processed and the batch is split.
    connection = await asyncpg.connect(db_url)
    try:
        async with connection.transaction():
            await connection.execute(
                "INSERT INTO outbox.webhook_events (channel, payload) VALUES ('onprem', $1::jsonb)",
                json.dumps(delivered),
            )
            await connection.execute(
                "INSERT INTO outbox.webhook_events (channel, payload)"
                " VALUES ('onprem', '{\"statuses\": [], \"size\": 1e400}')"
            )
    finally:
        await connection.close()

    def reconciled(s: Scrape) -> bool:
        return s.value("outbox_webhooks_unprocessable_total") == 1 and (
            s.value("outbox_status_updates_total", channel="onprem", verdict="applied") == 1
        )

    # No sender: the API is never called.
    settings = fast_metrics(settings_for(db_url, "http://127.0.0.1:9"))
    async with running(settings, roles={"reconciler", "web"}) as started:
        s = await until_scraped(started.http_port, reconciled, within=10)
    assert s.by("outbox_accepted_to_delivered_seconds_count", "channel") == {("onprem",): 1}


async def test_a_replayed_row_is_due_from_its_replay(db_url: str, engine: AsyncEngine) -> None:
    message_id = await scalar(
        db_url,
        "INSERT INTO outbox.messages (channel, recipient, payload, send_after, created_at, state,"
        " attempts, error_code, failed_at) VALUES ('cloud', '4915100000601', '{\"type\": \"text\"}',"
        " now() - interval '3 days', now() - interval '3 days', 'failed', 1, 'x',"
        " now() - interval '3 days') RETURNING id",
    )
    applied = await OperatorStore(engine).replay(
        [message_id], [State.FAILED], actor="test", forced=False, expires_at=None, note=None
    )
    assert applied.done == [message_id]

    sample = await GaugeStore(engine).sample(timedelta(hours=24), timedelta(days=7))

    assert sample.backlog == {("cloud", "queued"): 1}
    assert sample.oldest_due_seconds["cloud"] < 60


async def test_a_transaction_in_another_database_is_not_counted(
    pg_server: Any, engine: AsyncEngine
) -> None:
    other = await asyncpg.connect(pg_server.get_uri("postgres"))
    try:
        async with other.transaction():
            await other.fetchval("SELECT txid_current()")
            await asyncio.sleep(1.5)
            sample = await GaugeStore(engine).sample(timedelta(hours=24), timedelta(days=7))
    finally:
        await other.close()
    assert sample.oldest_transaction_seconds < 1.0


async def test_every_replica_reports_a_pause_another_replica_wrote(db_url: str) -> None:
    """The replica whose breaker paused a channel died; the shared pause still holds the channel
    (every replica skips it), so every replica's gauge must say so, from the shared row."""
    await fetch(
        db_url,
        "INSERT INTO outbox.channel_state (channel, paused_until, pause_reason, paused_by)"
        " VALUES ('cloud', now() + interval '10 minutes', 'HTTP 401', 'a-dead-replica')",
    )

    def paused(s: Scrape) -> bool:
        return s.value("outbox_channel_paused", channel="cloud") == 1

    def resumed(s: Scrape) -> bool:
        return s.value("outbox_channel_paused", channel="cloud") == 0

    settings = fast_metrics(settings_for(db_url, "http://127.0.0.1:9"))
    async with running(settings, roles={"web"}) as started:
        s = await until_scraped(started.http_port, paused, within=10)
        assert s.value("outbox_channel_paused", channel="onprem") == 0
        # The pause ran out (or an operator lifted it): the gauge follows the row.
        await fetch(db_url, "UPDATE outbox.channel_state SET paused_until = now()")
        await until_scraped(started.http_port, resumed, within=10)
