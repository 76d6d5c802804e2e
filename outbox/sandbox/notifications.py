"""Status notifications posted back to a webhook in the accepting dialect (waba-api.md §4, §7.3)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from outbox.sandbox.responses import Dialect

STATUSES = ("sent", "delivered", "read")
ATTEMPTS = 4
BACKOFF = 0.05  # seconds before the first retry, doubled for each further one
POST_TIMEOUT = 5.0  # seconds: 360dialog's hard limit for a webhook answer

# The imitated business account. The daemon tells channels apart by webhook URL, not by these.
WABA_ID = "104000000000001"
PHONE_NUMBER_ID = "105000000000001"
DISPLAY_PHONE_NUMBER = "15550000001"


@dataclass(frozen=True)
class Webhook:
    url: str
    headers: Mapping[str, str]


@dataclass(frozen=True)
class AcceptedMessage:
    dialect: Dialect
    message_id: str
    recipient: str
    accepted_at: float  # wall-clock Unix time
    callback_data: str | None
    # Cloud: the recipient fields of its statuses (`recipient_id`, `recipient_user_id`).
    recipient_ids: Mapping[str, str] | None = None
    pricing: dict[str, Any] | None = None  # Cloud statuses carry it (issue 18)


@dataclass(frozen=True)
class NotificationPost:
    """One POST made to a webhook; a retried notification appears once per attempt."""

    url: str
    body: dict[str, Any]
    outcome: int | str  # the HTTP status, or the exception's class name


def status_body(message: AcceptedMessage, status: str, happened_at: float) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": message.message_id,
        "recipient_id": message.recipient,
        "status": status,
        "timestamp": str(int(happened_at)),
    }
    if message.dialect == "onprem":
        return {"statuses": [{**item, "type": "message"}]}
    if message.recipient_ids is not None:
        del item["recipient_id"]
        item.update(message.recipient_ids)
    if message.callback_data is not None:
        item["biz_opaque_callback_data"] = message.callback_data
    if message.pricing is not None and status in ("sent", "delivered"):
        item["pricing"] = message.pricing
    value = {
        "messaging_product": "whatsapp",
        "metadata": {
            "display_phone_number": DISPLAY_PHONE_NUMBER,
            "phone_number_id": PHONE_NUMBER_ID,
        },
        "statuses": [item],
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA_ID, "changes": [{"field": "messages", "value": value}]}],
    }


class Notifier:
    """Schedules and posts status notifications; never blocks the request that caused them."""

    def __init__(
        self,
        status_delays: tuple[float, float, float],
        *,
        reorder: bool,
        duplicate: bool,
        rng: random.Random,
        partner_secret: str | None = None,
    ) -> None:
        self.sent: list[NotificationPost] = []
        # As 360dialog signs what it posts to a partner's webhooks (x-360dialog-signature).
        self._secret = None if partner_secret is None else partner_secret.encode()
        self._delays = status_delays
        self._reorder = reorder
        self._copies = 2 if duplicate else 1
        self._rng = rng
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.wait_idle()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def schedule(self, webhook: Webhook, message: AcceptedMessage) -> None:
        posted_after = list(self._delays)
        if self._reorder:
            self._rng.shuffle(posted_after)
        # Each status keeps the time it happened, whenever it is posted.
        for status, happened_after, delay in zip(STATUSES, self._delays, posted_after, strict=True):
            body = status_body(message, status, message.accepted_at + happened_after)
            task = asyncio.create_task(self._deliver(webhook, body, delay))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def post(self, webhook: Webhook, body: dict[str, Any]) -> None:
        """Post one notification now, in the background (an inbound message, say)."""
        task = asyncio.create_task(self._deliver(webhook, body, 0.0))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_idle(self) -> None:
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _deliver(self, webhook: Webhook, body: dict[str, Any], delay: float) -> None:
        await asyncio.sleep(delay)
        for _ in range(self._copies):
            await self.post_until_accepted(webhook, body)

    async def post_until_accepted(self, webhook: Webhook, body: dict[str, Any]) -> NotificationPost:
        """Post `body` until the webhook answers 200 (or the tries run out); the last try."""
        # 360dialog retries until it gets a 200; a few quick tries are enough for tests and demo.
        for attempt in range(ATTEMPTS):
            if attempt:
                await asyncio.sleep(BACKOFF * 2 ** (attempt - 1))
            outcome = await self._post(webhook, body)
            self.sent.append(NotificationPost(webhook.url, body, outcome))
            if outcome == 200:
                break
        return self.sent[-1]

    async def _post(self, webhook: Webhook, body: dict[str, Any]) -> int | str:
        assert self._session is not None, "Notifier.start() was not called"
        headers = {**webhook.headers, "Content-Type": "application/json"}
        data = orjson.dumps(body)
        if self._secret is not None:
            headers["x-360dialog-signature"] = hmac.new(
                self._secret, data, hashlib.sha256
            ).hexdigest()
        try:
            async with self._session.post(webhook.url, data=data, headers=headers) as response:
                return response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            return type(exc).__name__
