"""Issue 19 §1: the README's receiver role (`outbox_web`, snippet 2b) stores webhook bodies and
reads the registry without its API keys, and nothing more; the registry read of a process
without the sender role runs on exactly those grants (real PostgreSQL)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from outbox.config import WITHHELD_KEY, ChannelConfig, MetricsConfig, Secret
from outbox.db.engine import create_engine
from outbox.db.gauges import GaugeStore
from outbox.db.registry import ChannelRegistryStore
from outbox.domain.models import Dialect
from outbox.errors import StatementInvalid
from outbox.metrics import Metrics
from outbox.sealing import Keyring, generate_key
from outbox.services.sampler import Sampler
from tests.roles import DAEMON, WEB, Roles, scoped_roles

DENIED = "permission denied"


@pytest.fixture
async def roles(db_url: str) -> AsyncIterator[Roles]:
    async with scoped_roles(db_url) as made:
        await made.run(DAEMON, WEB)
        yield made


async def test_the_receiver_role_stores_bodies_and_nothing_else(roles: Roles) -> None:
    web = await roles.connect("outbox_web")
    try:
        stored = await web.fetchval(
            "INSERT INTO outbox.webhook_events (channel, payload, authenticated, body_bytes)"
            """ VALUES ('shop-de', '{"object": "x"}', true, 15) RETURNING id"""
        )
        assert isinstance(stored, int)
        for sql in [
            "SELECT api_key_sealed FROM outbox.channels",
            "SELECT api_key_env, api_key_file FROM outbox.channels",
            "SELECT * FROM outbox.channels",
            "SELECT payload FROM outbox.webhook_events",  # other bodies are not its to read
            "UPDATE outbox.webhook_events SET processed_at = now()",
            "DELETE FROM outbox.webhook_events",
            "SELECT id FROM outbox.messages",
            "SELECT wa_id FROM outbox.contacts",
            "INSERT INTO outbox.messages (channel, recipient, payload) VALUES ('a', '1', '{}')",
            "INSERT INTO outbox.channels (id, dialect, base_url) VALUES ('x', 'cloud', 'h')",
            "UPDATE outbox.channels SET enabled = false",
            "CREATE TABLE outbox.mine (a int)",
        ]:
            with pytest.raises(asyncpg.PostgresError) as caught:
                await web.execute(sql)
            assert DENIED in str(caught.value), sql
        # What it does read: the schema revision (readiness) and the webhook columns.
        assert await web.fetchval("SELECT count(*) FROM outbox.alembic_version") == 1
        await web.fetch("SELECT id, webhook_password_sealed, updated_at FROM outbox.channels")
    finally:
        await web.close()


async def test_a_registry_read_without_api_keys_runs_on_the_receiver_grants(
    roles: Roles, db_url: str
) -> None:
    """The sealed webhook credentials are opened, the API key is neither read nor held; the
    full read (what every process did before) is refused to the role."""
    keyring = Keyring([base64.urlsafe_b64decode(generate_key())])
    owner = create_engine(db_url, pool_size=1)
    as_web = create_engine(roles.url("outbox_web"), pool_size=1)
    try:
        channel = ChannelConfig(
            "reg-a",
            Dialect.CLOUD,
            "http://127.0.0.1:9",
            Secret("registry-key-alpha"),
            webhook_username=Secret("hook-user"),
            webhook_password=Secret("hook-password-0123456789"),
        )
        await ChannelRegistryStore(owner, keyring).add(channel, enabled=True)
        receiving = ChannelRegistryStore(as_web, keyring, api_keys=False)
        assert await receiving.check_sealed() == 2  # the two webhook credentials
        [found] = (await receiving.snapshot()).channels
        assert found.config.api_key is WITHHELD_KEY
        assert found.config.webhook_password == Secret("hook-password-0123456789")
        assert found.config == replace(channel, api_key=WITHHELD_KEY)
        with pytest.raises(RuntimeError, match="without API keys"):
            found.config.api_key.reveal()
        assert len(await receiving.version()) > 0
        with pytest.raises(StatementInvalid, match=DENIED):
            await ChannelRegistryStore(as_web, keyring).snapshot()
    finally:
        await owner.dispose()
        await as_web.dispose()


async def test_the_queue_gauges_switch_off_once_for_a_role_that_may_not_read_the_queue(
    roles: Roles,
) -> None:
    """A receiver on the 2b grants serves /metrics, but may not read the queue: its sampler
    stops at the first refusal, once, without counting sample errors (nothing is wrong); the
    daemon's role samples as always."""
    registry = CollectorRegistry()
    as_web = create_engine(roles.url("outbox_web"), pool_size=1)
    as_daemon = create_engine(roles.url("outbox_daemon"), pool_size=1)
    config = MetricsConfig(sample_interval=timedelta(milliseconds=10))
    try:
        sampler = Sampler(GaugeStore(as_web), config, Metrics(registry))
        await asyncio.wait_for(sampler.run(asyncio.Event()), 10)  # ends by itself
        assert sampler.off
        assert registry.get_sample_value("outbox_sample_errors_total") == 0
        daemon = Sampler(GaugeStore(as_daemon), config, Metrics(CollectorRegistry()))
        await daemon.tick()
        assert not daemon.off
    finally:
        await as_web.dispose()
        await as_daemon.dispose()
