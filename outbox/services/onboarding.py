"""Channels through 360dialog's Partner API: `rotate-key` and `import`, over ports only.

Rotation order matters because 360dialog revokes a channel's older keys the moment it issues a
new one: from then on only the new key works. So the channel's traffic is paused (disabled in
the registry: rows wait, nothing is charged) before the key is created, and enabled again only
once the new key is stored, the webhook the new key dropped is registered again and the number
reports it can send. A failure on the way leaves the channel either unchanged (nothing was
revoked) or explicitly disabled with a message naming the step and what to do.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from functools import partial

import structlog

from outbox.config import ChannelConfig, Secret
from outbox.domain.partner import Failure, dialect_for, webhook_url
from outbox.errors import OutboxError
from outbox.ports.partner import NumberApi, PartnerApi, PartnerApiError, PartnerChannel
from outbox.ports.registry import ChannelRegistry
from outbox.services.onboarding_results import (
    After,
    ImportOptions,
    ImportReport,
    ImportResult,
    Outcome,
    Rotation,
    Step,
)
from outbox.services.partner_calls import Sleep, patiently

log = structlog.get_logger("outbox.partner")

__all__ = [
    "After",
    "ImportOptions",
    "ImportReport",
    "ImportResult",
    "Onboarding",
    "Outcome",
    "Rotation",
    "Step",
]


def _new_secret() -> str:
    return secrets.token_urlsafe(24)


class Onboarding:
    def __init__(
        self,
        registry: ChannelRegistry,
        partner: PartnerApi,
        numbers: NumberApi,
        *,
        settle: timedelta = timedelta(seconds=3),
        sleep: Sleep = asyncio.sleep,
        new_secret: Callable[[], str] = _new_secret,
    ) -> None:
        self._registry = registry
        self._partner = partner
        self._numbers = numbers
        # How long a disable takes to reach every replica and their requests in flight to end.
        self._settle = settle.total_seconds()
        self._sleep = sleep
        self._new_secret = new_secret

    async def rotate_key(self, channel_id: str, webhook_template: str) -> Rotation:
        def failed(step: Step, after: After, message: str) -> Rotation:
            log.warning("outbox.partner.rotate_failed", channel=channel_id, step=step.name)
            return Rotation(channel_id, after, step, message)

        found = await self._registry.get(channel_id)
        if found is None:
            return failed(Step.LOOK_UP, After.UNCHANGED, f"no channel {channel_id!r}")
        old = found.config
        if found.from_file:
            return failed(
                Step.LOOK_UP,
                After.UNCHANGED,
                "a channel of the config file: its key is given there (api_key_env/_file); "
                "rotate it as the README's 'Rotating an API key' says",
            )
        if old.partner_channel_id is None:
            return failed(
                Step.LOOK_UP,
                After.UNCHANGED,
                "the channel has no partner_channel_id: the Partner API cannot address it",
            )
        was_enabled = found.enabled
        held = After.PAUSED if was_enabled else After.DISABLED
        if was_enabled:
            try:
                await self._registry.set_enabled(channel_id, False)
            except OutboxError as exc:
                return failed(Step.PAUSE, After.UNCHANGED, str(exc))
            await self._sleep(self._settle)
        partner_channel_id = old.partner_channel_id
        try:
            issued = await patiently(
                lambda: self._partner.create_api_key(partner_channel_id), self._sleep, "api_keys"
            )
        except PartnerApiError as exc:
            return await self._key_not_created(channel_id, old, was_enabled, exc)
        new = replace(old, api_key=issued.api_key)
        again = f"run `outbox channels rotate-key {channel_id}` again once that is fixed"
        try:
            await self._registry.set_api_key(channel_id, issued.api_key)
        except OutboxError as exc:
            return failed(
                Step.STORE_KEY,
                held,
                f"{exc}; 360dialog revoked the old key and the new one could not be kept, so "
                f"the channel stays disabled: {again}",
            )
        url = webhook_url(webhook_template, channel_id)
        stored = f"the new key is stored, the channel disabled: {again}"
        try:
            await patiently(lambda: self._numbers.set_webhook(new, url), self._sleep, "webhook")
        except PartnerApiError as exc:
            return failed(Step.WEBHOOK, held, f"{exc}; {stored}")
        try:
            health = await patiently(lambda: self._numbers.health(new), self._sleep, "health")
        except PartnerApiError as exc:
            return failed(Step.HEALTH, held, f"{exc}; {stored}")
        if not health.sendable:
            reasons = "; ".join(health.reasons) or "no reason given"
            return failed(
                Step.HEALTH,
                held,
                f"the number cannot send ({health.can_send.value}: {reasons}); {stored}",
            )
        if not was_enabled:
            return Rotation(channel_id, After.DISABLED, message="new key stored; still disabled")
        try:
            await self._registry.set_enabled(channel_id, True)
        except OutboxError as exc:
            return failed(
                Step.SWITCH,
                After.PAUSED,
                f"{exc}; everything else is done: `outbox channels enable {channel_id}`",
            )
        log.info("outbox.partner.rotated", channel=channel_id, can_send=health.can_send.value)
        return Rotation(channel_id, After.SWITCHED, message=f"number {health.can_send.value}")

    async def _key_not_created(
        self, channel_id: str, old: ChannelConfig, was_enabled: bool, exc: PartnerApiError
    ) -> Rotation:
        """Step 1 failed. A refusal revoked nothing; without an answer (or on a server error)
        the key may have been created all the same, so the old key is tried before traffic
        goes back to it."""
        revoked = False
        if exc.failure in (Failure.SERVER, Failure.BAD_ANSWER):
            try:
                await self._numbers.health(old)
            except PartnerApiError as probe:
                revoked = probe.status in (401, 403)
        if revoked:
            return Rotation(
                channel_id,
                After.PAUSED if was_enabled else After.DISABLED,
                Step.CREATE_KEY,
                f"{exc}; the old key no longer works (360dialog may have issued a key whose "
                "answer was lost), so the channel stays disabled: run rotate-key again",
            )
        if was_enabled:
            try:
                await self._registry.set_enabled(channel_id, True)
            except OutboxError as again:
                return Rotation(
                    channel_id,
                    After.PAUSED,
                    Step.CREATE_KEY,
                    f"{exc}; and enabling it again failed ({again}): "
                    f"`outbox channels enable {channel_id}`",
                )
        return Rotation(
            channel_id,
            After.UNCHANGED,
            Step.CREATE_KEY,
            f"{exc}; the channel keeps its current key",
        )

    async def import_channels(self, options: ImportOptions) -> ImportReport:
        """Every channel the partner lists (all pages) that the registry does not know yet:
        a new key, its webhook, then one registry row. A channel that fails leaves no row,
        so running it again picks it up; known ones are skipped."""
        listed = await self._list_all(options)
        gate = asyncio.Semaphore(options.concurrency)

        async def one(channel: PartnerChannel) -> ImportResult:
            async with gate:
                return await self._import_one(channel, options)

        results = await asyncio.gather(*(one(c) for c in listed))
        return ImportReport(len(listed), tuple(results))

    async def _list_all(self, options: ImportOptions) -> list[PartnerChannel]:
        seen: dict[str, PartnerChannel] = {}
        offset = 0
        while True:
            page = await patiently(
                partial(
                    self._partner.list_channels,
                    options.filters,
                    offset=offset,
                    limit=options.page_size,
                ),
                self._sleep,
                "channels",
            )
            for channel in page.channels:
                seen.setdefault(channel.id, channel)
            offset += len(page.channels)
            if not page.channels or offset >= page.total:
                return list(seen.values())

    async def _import_one(self, listed: PartnerChannel, options: ImportOptions) -> ImportResult:
        def result(outcome: Outcome, step: Step | None = None, message: str = "") -> ImportResult:
            return ImportResult(listed.id, channel_id, outcome, step, message)

        channel_id = options.id_prefix + listed.id
        known = await self._registry.by_partner_channel(listed.id)
        if known is not None:
            channel_id = known.config.id
            return result(Outcome.KNOWN)
        if await self._registry.get(channel_id) is not None:
            message = f"our id {channel_id!r} is taken by another channel (use --id-prefix)"
            return result(Outcome.FAILED, Step.ADD, message)
        try:
            issued = await patiently(
                lambda: self._partner.create_api_key(listed.id), self._sleep, "api_keys"
            )
        except PartnerApiError as exc:
            if exc.failure is Failure.FORBIDDEN:
                return result(Outcome.SKIPPED, Step.CREATE_KEY, str(exc))
            return result(Outcome.FAILED, Step.CREATE_KEY, str(exc))
        config = ChannelConfig(
            id=channel_id,
            dialect=dialect_for(issued.address),
            base_url=issued.address.rstrip("/"),
            api_key=issued.api_key,
            rate_per_second=options.rate_per_second,
            # Credentials of our own making: 360dialog sends them with every notification.
            webhook_username=Secret(f"outbox-{self._new_secret()[:8]}"),
            webhook_password=Secret(self._new_secret()),
            phone_number_id=listed.phone_number_id,
            waba_id=listed.waba_id,
            partner_channel_id=listed.id,
            client_id=listed.client_id,
        )
        url = webhook_url(options.webhook_template, channel_id)
        try:
            await patiently(lambda: self._numbers.set_webhook(config, url), self._sleep, "webhook")
        except PartnerApiError as exc:
            return result(Outcome.FAILED, Step.WEBHOOK, str(exc))
        try:
            await self._registry.add(config, enabled=options.enable)
        except OutboxError as exc:
            return result(Outcome.FAILED, Step.ADD, str(exc))
        return result(Outcome.IMPORTED)
