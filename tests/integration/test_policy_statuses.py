"""Issue 18's status bodies from the 2026 corpus (/work/shared/fixtures/webhooks-2026, as its
INDEX.md says each acts), through the reconciler into PostgreSQL: 131049 and 131050 failures,
per-message pricing stored and counted once, a category Meta billed differently from the
registry counted and logged."""

from __future__ import annotations

import json
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.config import ReconcilerConfig
from outbox.db.reconcile_store import ReconcileStore
from outbox.db.templates import TemplateStore
from outbox.domain.templates import TemplateKey
from outbox.metrics import Metrics
from outbox.services.reconciler import Reconciler
from tests.paths import WEBHOOK_FIXTURES
from tests.support import fetch, insert

CORPUS = WEBHOOK_FIXTURES.parent / "webhooks-2026"
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="shared fixtures not beside us")
PROMO: dict[str, Any] = {
    "type": "template",
    "template": {"name": "promo", "language": {"code": "en_US"}},
}


def body(name: str) -> Any:
    return json.loads((CORPUS / f"{name}.json").read_bytes())


def status_id(data: Any) -> str:
    return str(data["entry"][0]["changes"][0]["value"]["statuses"][0]["id"])


async def seeded(db_url: str, wamid: str, recipient: str = "4915100000001") -> int:
    message_id = await insert(
        db_url, "cloud", recipient, PROMO, inbound_ago=None, state="accepted", wamid=wamid
    )
    await fetch(db_url, "UPDATE outbox.messages SET accepted_at = now() WHERE id = $1", message_id)
    return message_id


async def reconcile(engine: AsyncEngine, db_url: str, *bodies: Any) -> Metrics:
    for data in bodies:
        await fetch(
            db_url,
            "INSERT INTO outbox.webhook_events (channel, payload) VALUES ('cloud', $1::jsonb)",
            json.dumps(data),
        )
    metrics = Metrics(CollectorRegistry())
    reconciler = Reconciler(
        ReconcileStore(engine, {"cloud": "waba-1"}), ReconcilerConfig(), metrics
    )
    metrics.reconciled(await reconciler.process_webhooks(100))
    return metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@needs_corpus
async def test_a_131050_status_fails_the_row_and_records_the_opt_out(
    db_url: str, engine: AsyncEngine
) -> None:
    data = body("cloud__status__failed-131050-marketing-stopped-capture")
    message_id = await seeded(db_url, status_id(data), "+62 000 0000 0002")
    for data_once in (data, data):  # a replay records nothing new
        await reconcile(engine, db_url, data_once)
    [row] = await fetch(db_url, "SELECT state, error_code FROM outbox.messages")
    assert (row["state"], row["error_code"]) == ("failed", "131050")
    [opt_out] = await fetch(db_url, "SELECT * FROM outbox.marketing_preferences")
    assert (opt_out["identity"], opt_out["opted_out"], opt_out["source"]) == (
        "6200000000002",
        True,
        "131050",
    )
    assert opt_out["at"].timestamp() == 1750224806
    assert json.loads(opt_out["evidence"])["message_id"] == message_id


@needs_corpus
async def test_a_131049_status_fails_the_row_and_records_no_opt_out(
    db_url: str, engine: AsyncEngine
) -> None:
    data = body("cloud__status__failed-131049-meta-2026")
    await seeded(db_url, status_id(data))
    await reconcile(engine, db_url, data)
    [row] = await fetch(db_url, "SELECT state, error_code, error_title FROM outbox.messages")
    assert (row["state"], row["error_code"]) == ("failed", "131049")
    assert "healthy ecosystem" in row["error_title"]
    assert await fetch(db_url, "SELECT * FROM outbox.marketing_preferences") == []


@needs_corpus
async def test_pricing_is_stored_and_billed_messages_counted_once(
    db_url: str, engine: AsyncEngine
) -> None:
    marketing = body("cloud__status__sent-pmp-regular-marketing-meta-2026")
    free = body("cloud__status__delivered-pmp-free-customer-service-capture")
    billed = await seeded(db_url, status_id(marketing))
    service = await seeded(db_url, status_id(free), "550000000002")
    # The registry knows the template as UTILITY; Meta billed it as marketing.
    await TemplateStore(engine).record(
        TemplateKey("waba-1", "promo", "en_US"), source="webhook", category="UTILITY"
    )
    with structlog.testing.capture_logs() as logs:
        metrics = await reconcile(engine, db_url, marketing, free, marketing)
    rows = {
        r["id"]: (r["pricing_category"], r["pricing_type"])
        for r in await fetch(
            db_url, "SELECT id, pricing_category, pricing_type FROM outbox.messages"
        )
    }
    assert rows == {billed: ("marketing", "regular"), service: ("service", "free_customer_service")}
    name = "outbox_billable_messages_total"
    assert sample(metrics, name, channel="cloud", category="marketing", type="regular") == 1
    assert (
        sample(metrics, name, channel="cloud", category="service", type="free_customer_service")
        == 0
    )
    assert sample(metrics, "outbox_category_mismatch_total", channel="cloud") == 1
    warnings = [e for e in logs if e["event"] == "outbox.pricing.category_mismatch"]
    assert [(w["log_level"], w["registry_category"], w["billed_category"]) for w in warnings] == [
        ("warning", "UTILITY", "marketing")
    ]


def failed_132015(wamid: str) -> dict[str, Any]:
    """Constructed (no public body exists, INDEX.md "Not found"): Meta's failed-status
    envelope, as in cloud__status__failed-131049-meta-2026, with the pacing drop's code."""
    status = {
        "id": wamid,
        "status": "failed",
        "timestamp": "1765916265",
        "recipient_id": "4915100000001",
        "errors": [
            {
                "code": 132015,
                "title": "Template is Paused",
                "message": "Template is Paused",
                "error_data": {"details": "held message dropped: template paused"},
            }
        ],
    }
    value = {"messaging_product": "whatsapp", "metadata": {}, "statuses": [status]}
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "waba-1", "changes": [{"field": "messages", "value": value}]}],
    }


async def test_a_held_message_dropped_with_132015_waits_for_its_template(
    db_url: str, engine: AsyncEngine
) -> None:
    message_id = await seeded(db_url, "wamid.HELD")
    await fetch(
        db_url,
        "UPDATE outbox.messages SET attempts = 1, sent_as = 'template',"
        " message_status = 'held_for_quality_assessment' WHERE id = $1",
        message_id,
    )
    for _ in range(2):  # a replay changes nothing more
        await reconcile(engine, db_url, failed_132015("wamid.HELD"))
    [row] = await fetch(
        db_url,
        "SELECT state, error_code, attempts, held_template, next_attempt_at - now() AS wait"
        " FROM outbox.messages",
    )
    assert (row["state"], row["error_code"], row["attempts"]) == ("queued", "132015", 0)
    [template] = await fetch(db_url, "SELECT * FROM outbox.templates")
    assert (template["waba_id"], template["name"], template["status"], template["source"]) == (
        "waba-1",
        "promo",
        "PAUSED",
        "status",
    )
    assert row["held_template"] == template["id"]
    assert row["wait"].total_seconds() > 3000  # looks again in an hour
    [recorded] = await TemplateStore(engine).resume("promo")
    assert recorded.released == 1
    [row] = await fetch(db_url, "SELECT state, held_template, next_attempt_at FROM outbox.messages")
    assert (row["state"], row["held_template"], row["next_attempt_at"]) == ("queued", None, None)
    sends = await fetch(db_url, "SELECT wamid FROM outbox.message_sends")
    assert [s["wamid"] for s in sends] == ["wamid.HELD"]
