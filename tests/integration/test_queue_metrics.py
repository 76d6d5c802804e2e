"""Queue metrics (issue 19 §1, §4): labels only for configured channels; rows settled in the
queue (expired, unknown channel) counted with the send outcomes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.config import SenderConfig
from outbox.db.gauges import GaugeStore
from outbox.db.housekeeping import HousekeepingStore
from outbox.metrics import UNKNOWN_CHANNEL, Metrics
from outbox.services.maintenance import Maintenance
from tests.support import insert, settings_for

BODY = {"type": "text", "text": {"body": "hi"}}
# What a producer may write as a channel: personal data, or text long enough to hurt.
STRANGERS = ("cust-4915112345678-jane.doe@example.com", "x" * 200)


def _samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(s.labels.values()): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == name
    }


async def test_unconfigured_channels_share_one_label_and_settled_rows_count_as_sends(
    db_url: str, engine: AsyncEngine
) -> None:
    past = datetime.now(UTC) - timedelta(minutes=1)
    await insert(db_url, "cloud", "4915112345678", BODY, expires_at=past)
    for stranger in STRANGERS:
        await insert(db_url, stranger, "4915112345679", BODY, inbound_ago=None)
    channels = settings_for(db_url, "http://127.0.0.1:9").channels
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.know_channels(c.id for c in channels)

    metrics.sampled(await GaugeStore(engine).sample(timedelta(hours=1), timedelta(days=1)))
    backlog = _samples(registry, "outbox_backlog_messages")
    assert {c for c, _ in backlog} == {"cloud", "onprem", UNKNOWN_CHANNEL}
    assert backlog[UNKNOWN_CHANNEL, "queued"] == len(STRANGERS)
    assert backlog["cloud", "queued"] == 1
    assert _samples(registry, "outbox_oldest_due_age_seconds").keys() == {
        ("cloud",),
        ("onprem",),
        (UNKNOWN_CHANNEL,),
    }

    maintenance = Maintenance(
        HousekeepingStore(engine),
        channels,
        SenderConfig(unknown_channel_grace=timedelta(0)),
        worker_id="test",
        observer=metrics,
    )
    await maintenance.tick()
    assert _samples(registry, "outbox_sends_total") == {
        ("cloud", "expired", "expired"): 1,
        (UNKNOWN_CHANNEL, "failed", "unknown_channel"): len(STRANGERS),
    }
    exposed = generate_latest(registry).decode()
    assert not any(stranger in exposed for stranger in STRANGERS)
