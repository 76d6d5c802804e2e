"""The onboarding service over fakes: rotate-key's steps and failures, import's pages,
skips, retries and idempotence."""

from __future__ import annotations

from datetime import timedelta

import pytest

from outbox.config import ChannelConfig, Secret
from outbox.domain.models import Dialect
from outbox.domain.partner import CanSend
from outbox.ports.partner import PartnerApiError, PartnerChannel
from outbox.ports.registry import RegisteredChannel
from outbox.services.onboarding import (
    After,
    ImportOptions,
    Onboarding,
    Outcome,
    Step,
)
from tests.partner_fakes import FakeHub, FakeRegistry, no_sleep

TEMPLATE = "https://outbox.example/webhooks/{channel}"


def channel(cid: str = "shop", partner_id: str | None = "CH1", key: str = "old") -> ChannelConfig:
    return ChannelConfig(
        id=cid,
        dialect=Dialect.CLOUD,
        base_url="https://waba-v2.360dialog.io",
        api_key=Secret(key),
        partner_channel_id=partner_id,
    )


def setup(
    *, enabled: bool = True, from_file: bool = False, partner_id: str | None = "CH1"
) -> tuple[Onboarding, FakeRegistry, FakeHub, list[float]]:
    registry = FakeRegistry(RegisteredChannel(channel(partner_id=partner_id), enabled, from_file))
    hub = FakeHub(valid_keys={"old": "CH1"}, webhooks={"old": TEMPLATE})
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    service = Onboarding(registry, hub, hub, settle=timedelta(seconds=2), sleep=sleep)
    return service, registry, hub, slept


async def test_rotation_pauses_then_switches_to_a_stored_key_with_its_webhook() -> None:
    service, registry, hub, slept = setup()
    rotation = await service.rotate_key("shop", TEMPLATE)
    assert rotation.ok
    assert rotation.after is After.SWITCHED
    new_key = registry.rows["shop"].config.api_key.reveal()
    assert new_key != "old"
    assert hub.valid_keys == {new_key: "CH1"}
    assert hub.webhooks == {new_key: "https://outbox.example/webhooks/shop"}
    assert registry.enabled_log == [("shop", False), ("shop", True)]
    assert registry.rows["shop"].enabled
    assert slept == [2.0]  # the disable reached every replica before the old key was revoked


async def test_a_disabled_channel_gets_its_key_and_stays_disabled() -> None:
    service, registry, hub, slept = setup(enabled=False)
    rotation = await service.rotate_key("shop", TEMPLATE)
    assert rotation.ok
    assert rotation.after is After.DISABLED
    assert registry.enabled_log == []
    assert slept == []
    assert registry.rows["shop"].config.api_key.reveal() in hub.valid_keys


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"from_file": True}, "config file"),
        ({"partner_id": None}, "partner_channel_id"),
    ],
)
async def test_channels_the_partner_api_cannot_rotate_are_refused_untouched(
    kwargs: dict[str, object], words: str
) -> None:
    service, registry, hub, _ = setup(**kwargs)  # type: ignore[arg-type]
    rotation = await service.rotate_key("shop", TEMPLATE)
    assert rotation.failed_step is Step.LOOK_UP
    assert rotation.after is After.UNCHANGED
    assert words in rotation.message
    assert hub.issued == 0
    assert registry.enabled_log == []


async def test_an_unknown_channel_is_named() -> None:
    service, *_ = setup()
    rotation = await service.rotate_key("nope", TEMPLATE)
    assert rotation.failed_step is Step.LOOK_UP
    assert "'nope'" in rotation.message


@pytest.mark.parametrize(
    ("status", "words"),
    [(401, "partner API key"), (403, "partner permission"), (404, "not found")],
)
async def test_a_refused_key_request_leaves_the_channel_as_it_was(status: int, words: str) -> None:
    service, registry, hub, _ = setup()
    hub.errors["create"] = [PartnerApiError(status)]
    rotation = await service.rotate_key("shop", TEMPLATE)
    assert rotation.failed_step is Step.CREATE_KEY
    assert rotation.after is After.UNCHANGED
    assert words in rotation.message
    assert f"HTTP {status}" in rotation.message
    assert registry.rows["shop"].enabled
    assert registry.rows["shop"].config.api_key.reveal() == "old"


async def test_429_is_retried_after_its_hint_and_5xx_with_backoff() -> None:
    service, _registry, hub, slept = setup()
    hub.errors["create"] = [PartnerApiError(429, retry_after=7), PartnerApiError(502)]
    rotation = await service.rotate_key("shop", TEMPLATE)
    assert rotation.ok
    assert slept == [2.0, 7.0, 1.0]  # tries counted per kind: the first 5xx backs off 1 s


async def test_persistent_server_errors_give_up_and_restore_the_old_key() -> None:
    service, registry, hub, slept = setup()
    hub.errors["create"] = [PartnerApiError(503)] * 3
    rotation = await service.rotate_key("shop", TEMPLATE)
    assert rotation.failed_step is Step.CREATE_KEY
    assert rotation.after is After.UNCHANGED
    assert slept == [2.0, 1.0, 2.0]
    assert registry.rows["shop"].enabled  # the old key still works: traffic goes back to it


async def test_a_lost_answer_that_revoked_the_old_key_keeps_the_channel_paused() -> None:
    service, registry, hub, _ = setup()
    hub.lose_answer = True
    rotation = await service.rotate_key("shop", TEMPLATE)
    assert rotation.failed_step is Step.CREATE_KEY
    assert rotation.after is After.PAUSED
    assert "no longer works" in rotation.message
    assert not registry.rows["shop"].enabled  # explicitly paused, never sending with a dead key


@pytest.mark.parametrize(
    ("script", "step"),
    [
        ({"webhook": [PartnerApiError(400, "bad url")]}, Step.WEBHOOK),
        ({"health": [PartnerApiError(500)] * 3}, Step.HEALTH),
    ],
)
async def test_a_failure_after_the_new_key_leaves_it_stored_and_the_channel_paused(
    script: dict[str, list[PartnerApiError]], step: Step
) -> None:
    service, registry, hub, _ = setup()
    hub.errors.update(script)
    rotation = await service.rotate_key("shop", TEMPLATE)
    assert rotation.failed_step is step
    assert rotation.after is After.PAUSED
    assert "rotate-key shop" in rotation.message
    row = registry.rows["shop"]
    assert not row.enabled
    assert row.config.api_key.reveal() in hub.valid_keys


async def test_a_blocked_number_is_not_switched_to() -> None:
    service, registry, hub, _ = setup()
    hub.health_of["CH1"] = CanSend.BLOCKED
    rotation = await service.rotate_key("shop", TEMPLATE)
    assert rotation.failed_step is Step.HEALTH
    assert "BLOCKED: blocked by Meta" in rotation.message
    assert not registry.rows["shop"].enabled


async def test_a_key_that_cannot_be_stored_keeps_the_channel_paused() -> None:
    service, registry, _hub, _ = setup()
    registry.fail_on.add("set_api_key")
    rotation = await service.rotate_key("shop", TEMPLATE)
    assert rotation.failed_step is Step.STORE_KEY
    assert rotation.after is After.PAUSED
    assert registry.rows["shop"].config.api_key.reveal() == "old"
    assert not registry.rows["shop"].enabled


def listed(n: int, client: str = "CL1") -> list[PartnerChannel]:
    return [
        PartnerChannel(f"CH{i:03d}", client, "running", f"4915{i:07d}", f"waba{i}", f"pn{i}")
        for i in range(n)
    ]


async def test_import_walks_every_page_and_adds_each_channel_with_its_webhook() -> None:
    registry, hub = FakeRegistry(), FakeHub(channels=listed(25))
    service = Onboarding(registry, hub, hub, sleep=no_sleep)
    report = await service.import_channels(ImportOptions(TEMPLATE, page_size=10, enable=True))
    assert hub.pages == [(0, 10), (10, 10), (20, 10)]
    assert report.listed == 25
    assert report.count(Outcome.IMPORTED) == 25
    row = registry.rows["CH007"]
    assert row.enabled
    assert row.config.partner_channel_id == "CH007"
    assert (row.config.waba_id, row.config.phone_number_id, row.config.client_id) == (
        "waba7",
        "pn7",
        "CL1",
    )
    assert hub.webhooks[row.config.api_key.reveal()] == "https://outbox.example/webhooks/CH007"
    assert row.config.webhook_password is not None


async def test_import_is_idempotent_and_skips_what_it_may_not_manage() -> None:
    registry, hub = FakeRegistry(), FakeHub(channels=listed(6), forbidden={"CH002"})
    service = Onboarding(registry, hub, hub, sleep=no_sleep)
    first = await service.import_channels(ImportOptions(TEMPLATE))
    assert first.count(Outcome.IMPORTED) == 5
    assert first.count(Outcome.SKIPPED) == 1
    assert not registry.rows["CH001"].enabled  # disabled unless --enable
    issued = hub.issued
    second = await service.import_channels(ImportOptions(TEMPLATE))
    assert second.count(Outcome.KNOWN) == 5
    assert second.count(Outcome.SKIPPED) == 1
    assert hub.issued == issued  # no key re-created for a known channel


async def test_import_filters_and_prefix() -> None:
    registry = FakeRegistry()
    hub = FakeHub(channels=listed(3, "CL1") + listed(2, "CL2"))
    service = Onboarding(registry, hub, hub, sleep=no_sleep)
    options = ImportOptions(TEMPLATE, filters={"client_id": "CL2"}, id_prefix="acme-")
    report = await service.import_channels(options)
    assert report.listed == 2
    assert sorted(registry.rows) == ["acme-CH000", "acme-CH001"]


async def test_a_channel_that_fails_leaves_no_row_and_the_next_run_takes_it() -> None:
    registry, hub = FakeRegistry(), FakeHub(channels=listed(3))
    hub.errors["webhook"] = [PartnerApiError(400, "bad url")]
    service = Onboarding(registry, hub, hub, sleep=no_sleep)
    report = await service.import_channels(ImportOptions(TEMPLATE, concurrency=1))
    failed = [r for r in report.results if r.outcome is Outcome.FAILED]
    assert [(r.partner_channel_id, r.failed_step) for r in failed] == [("CH000", Step.WEBHOOK)]
    assert "CH000" not in registry.rows
    again = await service.import_channels(ImportOptions(TEMPLATE))
    assert again.count(Outcome.IMPORTED) == 1
    assert again.count(Outcome.KNOWN) == 2


async def test_a_listing_refused_stops_before_any_channel_is_touched() -> None:
    registry, hub = FakeRegistry(), FakeHub(channels=listed(3))
    hub.errors["list"] = [PartnerApiError(401)]
    service = Onboarding(registry, hub, hub, sleep=no_sleep)
    with pytest.raises(PartnerApiError, match="partner API key"):
        await service.import_channels(ImportOptions(TEMPLATE))
    assert registry.rows == {}
    assert hub.issued == 0


async def test_a_taken_id_is_reported_not_overwritten() -> None:
    registry = FakeRegistry(RegisteredChannel(channel("CH000", partner_id=None), True, False))
    hub = FakeHub(channels=listed(1))
    report = await Onboarding(registry, hub, hub, sleep=no_sleep).import_channels(
        ImportOptions(TEMPLATE)
    )
    assert report.results[0].outcome is Outcome.FAILED
    assert "--id-prefix" in report.results[0].message
    assert hub.issued == 0
