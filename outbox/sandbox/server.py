"""The sandbox HTTP server: 360dialog's send and webhook-config endpoints (the test controls are
control.py)."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web
from yarl import URL

from outbox.sandbox.control import control_routes
from outbox.sandbox.faults import FaultScript
from outbox.sandbox.notifications import AcceptedMessage, NotificationPost, Notifier, Webhook
from outbox.sandbox.responses import (
    Dialect,
    accepted_body,
    error_body,
    fault_response,
    gateway_body,
    json_response,
    new_message_id,
    webhook_body,
)
from outbox.sandbox.templates import TemplateBook, template_name
from outbox.sandbox.users import Users
from outbox.sandbox.validation import invalid_body, validate
from outbox.sandbox.waba_events import WabaWebhooks

API_KEY_HEADER = "D360-API-KEY"
MESSAGE_PATHS: dict[str, Dialect] = {"/v1/messages": "onprem", "/messages": "cloud"}
WEBHOOK_CONFIG_PATH = "/v1/configs/webhook"
# A hung handler must not hold up stop(); its client gave up long ago.
_SHUTDOWN_TIMEOUT = 0.25  # seconds


@dataclass(frozen=True)
class RecordedRequest:
    """One API request as the sandbox saw it. The API key itself is never kept."""

    seq: int
    at: float  # time.monotonic() on arrival
    received_at: datetime
    method: str
    path: str
    dialect: Dialect | None
    api_key_label: str | None
    body: Any
    status: int  # 0 while unanswered, and if the client was gone when the answer was ready
    message_id: str | None  # set when accepted, even if the client never saw the answer


class Sandbox:
    """An imitation of 360dialog's WhatsApp API in both dialects, on a real local HTTP port."""

    def __init__(
        self,
        api_keys: Mapping[str, str],
        *,
        latency: float = 0.0,
        status_delays: tuple[float, float, float] = (0.05, 0.1, 0.15),
        reorder: bool = False,
        duplicate: bool = False,
        seed: int | None = None,
        statuses: bool = True,
        partner_secret: str | None = None,
    ) -> None:
        self.requests: list[RecordedRequest] = []
        self.faults = FaultScript()
        self.templates = TemplateBook()  # issue 18: paused and held templates, pricing
        self._api_keys = dict(api_keys)
        self._latency = latency
        self._statuses = statuses
        self._notifier = Notifier(
            status_delays,
            reorder=reorder,
            duplicate=duplicate,
            rng=random.Random(seed),
            partner_secret=partner_secret,
        )
        # WABA-level webhooks and the template and account events posted to them (issue 18).
        self.waba = WabaWebhooks(self._api_keys, self._notifier.post_until_accepted)
        # By key, not label: a new key starts without a webhook, as at 360dialog (waba-api.md §4.6).
        self._webhooks: dict[str, Webhook] = {}
        # Username users: phone-BSUID pairs (outbox.sandbox.users).
        self.users = Users()
        self._seq = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.app = web.Application()
        self.app.add_routes(
            [
                *(web.post(path, self._send) for path in MESSAGE_PATHS),
                web.post(WEBHOOK_CONFIG_PATH, self._set_webhook),
                web.get(WEBHOOK_CONFIG_PATH, self._get_webhook),
                *self.waba.routes(),
                *control_routes(self),
            ]
        )

    @property
    def notifications_sent(self) -> list[NotificationPost]:
        return self._notifier.sent

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on host:port (0 picks a free port); returns the base URL."""
        await self._notifier.start()
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        return str(URL.build(scheme="http", host=bound_host, port=bound_port))

    async def stop(self) -> None:
        # The server goes first so that no handler schedules a notification on a closed session.
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._notifier.close()

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- Keys issued and revoked by the Partner API imitation (outbox/sandbox/hub.py) ---
    def accept_key(self, key: str, label: str) -> None:
        self._api_keys[key] = label

    def revoke_key(self, key: str) -> None:
        """The key stops working (401) and its webhook configuration is gone with it."""
        self._api_keys.pop(key, None)
        self._webhooks.pop(key, None)

    def key_label(self, key: str | None) -> str | None:
        return None if key is None else self._api_keys.get(key)

    def webhook(self, key: str) -> Webhook | None:
        return self._webhooks.get(key)

    def message_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST" and r.dialect is not None]

    def user_writes(self, api_key: str, sender: str, text: str = "hi") -> None:
        """`sender` (a phone number or a BSUID, see `users`) writes to the number behind
        `api_key`: a Cloud inbound notification goes to that key's webhook."""
        webhook = self._webhooks.get(api_key)
        if webhook is None:
            raise LookupError("no webhook is set for that key")
        self._notifier.post(webhook, self.users.inbound_body(sender, text, time.time()))

    async def wait_idle(self) -> None:
        """Wait until every scheduled notification has been posted or given up."""
        await self._notifier.wait_idle()

    async def _arrive(
        self, request: web.Request, dialect: Dialect | None
    ) -> tuple[RecordedRequest, str | None]:
        """Log the request on arrival, so a hung one is visible, and wait the latency; returns
        it and its valid key."""
        at, received_at = time.monotonic(), datetime.now(UTC)
        key = request.headers.get(API_KEY_HEADER)
        valid_key = key if key in self._api_keys else None
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        record = RecordedRequest(
            seq=next(self._seq),
            at=at,
            received_at=received_at,
            method=request.method,
            path=request.path,
            dialect=dialect,
            api_key_label=None if valid_key is None else self._api_keys[valid_key],
            body=body,
            status=0,
            message_id=None,
        )
        self.requests.append(record)
        if self._latency:  # sends and webhook configuration alike, as a real API's distance
            await asyncio.sleep(self._latency)
        return record, valid_key

    def _answer(
        self,
        request: web.Request,
        record: RecordedRequest,
        response: web.Response,
        message_id: str | None = None,
    ) -> web.Response:
        transport = request.transport
        gone = transport is None or transport.is_closing()
        answered = replace(record, status=0 if gone else response.status, message_id=message_id)
        # Search from the end: the record is recent, and a reset may have dropped it meanwhile.
        for index in range(len(self.requests) - 1, -1, -1):
            if self.requests[index] is record:
                self.requests[index] = answered
                break
        return response

    async def _send(self, request: web.Request) -> web.Response:
        dialect = MESSAGE_PATHS[request.path]
        record, key = await self._arrive(request, dialect)
        if key is None:
            return self._answer(request, record, json_response(gateway_body(401), 401))
        body = record.body
        if not isinstance(body, dict):
            return self._answer(
                request, record, json_response(error_body(dialect, invalid_body(dialect)), 400)
            )
        recipient = body.get("to", body.get("recipient"))
        fault = self.faults.match(
            recipient if isinstance(recipient, str) else None, template_name(body)
        )
        if fault is not None:
            if fault.kind in ("latency", "hang"):
                await asyncio.sleep(fault.delay)
            elif fault.kind == "disconnect":
                if request.transport is not None:
                    request.transport.close()
                # aiohttp drops this quietly: the transport is already gone.
                return web.Response()
            else:
                return self._answer(request, record, fault_response(dialect, fault))
        error = validate(dialect, body) or self.templates.refusal(body)
        if error is not None:
            return self._answer(request, record, json_response(error_body(dialect, error), 400))
        to: str = body.get("to") or body["recipient"]  # validate() made sure of it
        message_id = new_message_id(dialect)
        webhook = self._webhooks.get(key)
        cloud = dialect == "cloud"
        if self._statuses and webhook is not None:
            callback_data = body.get("biz_opaque_callback_data")
            ids = self.users.status_ids(to) if cloud else None
            accepted = AcceptedMessage(dialect, message_id, to, time.time(), callback_data, ids)
            pricing = self.templates.pricing(body)
            self._notifier.schedule(webhook, replace(accepted, pricing=pricing))
        contact = self.users.contact(to) if cloud else None
        answer = accepted_body(dialect, to, message_id, contact)
        if cloud and template_name(body) is not None:
            # Template pacing answers carry it (waba-2026.md §1.2); free-form answers do not.
            answer["messages"][0]["message_status"] = self.templates.message_status(body)
        response = json_response(answer, 200 if cloud else 201)
        return self._answer(request, record, response, message_id)

    async def _set_webhook(self, request: web.Request) -> web.Response:
        record, key = await self._arrive(request, None)
        if key is None:
            return self._answer(request, record, json_response(gateway_body(401), 401))
        body = record.body if isinstance(record.body, dict) else {}
        url, headers = body.get("url"), body.get("headers") or {}
        if not (isinstance(url, str) and url and isinstance(headers, dict)):
            message = "url is required; headers, if given, is an object"
            return self._answer(request, record, json_response(gateway_body(400, message), 400))
        self._webhooks[key] = Webhook(url, {str(k): str(v) for k, v in headers.items()})
        return self._answer(request, record, json_response(webhook_body(self._webhooks[key])))

    async def _get_webhook(self, request: web.Request) -> web.Response:
        record, key = await self._arrive(request, None)
        if key is None:
            return self._answer(request, record, json_response(gateway_body(401), 401))
        webhook = self._webhooks.get(key)
        body = {"url": None} if webhook is None else webhook_body(webhook)
        return self._answer(request, record, json_response(body))
