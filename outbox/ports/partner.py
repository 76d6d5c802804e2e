"""What onboarding and key rotation need from 360dialog: the Partner API (hub) and the
number's own API host (webhook config, health status)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from outbox.config import ChannelConfig, Secret
from outbox.domain.partner import Failure, Health, advice, failure_of
from outbox.errors import OutboxError


@dataclass(frozen=True)
class PartnerChannel:
    """One channel (number) as the Partner API lists it; fields it left out are None."""

    id: str
    client_id: str | None
    status: str | None
    phone_number: str | None
    waba_id: str | None
    phone_number_id: str | None


@dataclass(frozen=True)
class ChannelPage:
    channels: tuple[PartnerChannel, ...]
    total: int  # channels matching the filters, all pages together


@dataclass(frozen=True)
class IssuedKey:
    """A new channel API key. At 360dialog it has already revoked every older key."""

    api_key: Secret
    address: str  # the number's API host, e.g. https://waba-v2.360dialog.io


class PartnerApiError(OutboxError):
    """A Partner API (or number API) call failed; `status` None means no answer came."""

    def __init__(
        self, status: int | None, detail: str = "", *, retry_after: float | None = None
    ) -> None:
        self.status = status
        self.failure: Failure = failure_of(status)
        self.retry_after = retry_after
        self.detail = detail
        answer = "no answer" if status is None else f"HTTP {status}"
        super().__init__(f"{advice(self.failure)} ({answer}{': ' + detail if detail else ''})")


class PartnerApi(Protocol):
    async def list_channels(
        self, filters: Mapping[str, str], *, offset: int, limit: int
    ) -> ChannelPage: ...

    async def create_api_key(self, partner_channel_id: str) -> IssuedKey:
        """POST .../channels/{id}/api_keys: revokes the channel's older keys and drops its
        webhook configuration."""


class NumberApi(Protocol):
    """Calls on the number's API host with the channel's own key (`D360-API-KEY`)."""

    async def set_webhook(self, channel: ChannelConfig, url: str) -> None: ...

    async def health(self, channel: ChannelConfig) -> Health:
        """GET /health_status; raises PartnerApiError (401 when the key is revoked)."""
