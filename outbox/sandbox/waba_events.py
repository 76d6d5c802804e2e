"""The sandbox's WABA-level webhooks: `POST/GET /waba_webhook` (one per API key, as at
360dialog: waba-2026.md §1.2) and template and account events posted to it on demand.

Tests (in-process: `Sandbox.waba_event`; from anywhere: `POST /sandbox/waba_events`) make the
imitated account say what Meta would: a template paused or approved, a ban, a quality change.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from outbox.sandbox.notifications import WABA_ID, NotificationPost, Webhook
from outbox.sandbox.responses import gateway_body, json_response

WABA_WEBHOOK_PATH = "/waba_webhook"
Post = Callable[[Webhook, dict[str, Any]], Awaitable[NotificationPost]]


def waba_body(field: str, value: dict[str, Any], waba_id: str = WABA_ID) -> dict[str, Any]:
    """A WABA-level change in the Cloud envelope; `entry[].time` is now (these fields carry no
    other time)."""
    entry = {"id": waba_id, "time": int(time.time()), "changes": [{"field": field, "value": value}]}
    return {"object": "whatsapp_business_account", "entry": [entry]}


def template_status(
    name: str,
    language: str,
    event: str,
    *,
    category: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """The value of a `message_template_status_update` (APPROVED, PAUSED, DISABLED, ...)."""
    value: dict[str, Any] = {
        "event": event,
        "message_template_id": abs(hash((name, language))) % 10**15,
        "message_template_name": name,
        "message_template_language": language,
        "reason": reason,
    }
    if category is not None:
        value["message_template_category"] = category
    return value


def ban(state: str) -> dict[str, Any]:
    """The value of an `account_update` DISABLED_UPDATE (DISABLE, REINSTATE, ...)."""
    return {"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": state}}


class WabaWebhooks:
    """Registered WABA webhooks, by API key, and the posting of events to them."""

    def __init__(self, api_keys: Mapping[str, str], post: Post) -> None:
        self._api_keys = api_keys
        self._post = post
        self.webhooks: dict[str, Webhook] = {}
        self.registrations: list[dict[str, Any]] = []  # bodies of POST /waba_webhook, as sent

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(WABA_WEBHOOK_PATH, self._set),
            web.get(WABA_WEBHOOK_PATH, self._get),
            web.post("/sandbox/waba_events", self._emit),
        ]

    async def send(
        self, api_key: str, field: str, value: dict[str, Any], *, waba_id: str = WABA_ID
    ) -> NotificationPost:
        """Post one event to the WABA webhook `api_key` registered, until it is taken."""
        webhook = self.webhooks.get(api_key)
        if webhook is None:
            raise LookupError("no WABA webhook is registered for this API key")
        return await self._post(webhook, waba_body(field, value, waba_id))

    async def _set(self, request: web.Request) -> web.Response:
        key = request.headers.get("D360-API-KEY")
        if key is None or key not in self._api_keys:
            return json_response(gateway_body(401), 401)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        url = body.get("url") if isinstance(body, dict) else None
        headers = (body.get("headers") or {}) if isinstance(body, dict) else None
        if not (isinstance(url, str) and url and isinstance(headers, dict)):
            message = "url is required; headers, if given, is an object"
            return json_response(gateway_body(400, message), 400)
        self.registrations.append(body)
        self.webhooks[key] = Webhook(url, {str(k): str(v) for k, v in headers.items()})
        return json_response(_answer(self.webhooks[key], body.get("override_all")))

    async def _get(self, request: web.Request) -> web.Response:
        key = request.headers.get("D360-API-KEY")
        if key is None or key not in self._api_keys:
            return json_response(gateway_body(401), 401)
        webhook = self.webhooks.get(key)
        return json_response({"url": None} if webhook is None else _answer(webhook, None))

    async def _emit(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
            key, field, value = body["api_key"], body["field"], body["value"]
            posted = await self.send(key, field, value, waba_id=body.get("waba_id", WABA_ID))
        except (ValueError, TypeError, KeyError, LookupError) as exc:
            return json_response({"error": str(exc)}, 400)
        return json_response({"outcome": posted.outcome})


def _answer(webhook: Webhook, override_all: object) -> dict[str, Any]:
    return {
        "url": webhook.url,
        "headers": dict(webhook.headers),
        "override_all": bool(override_all),
    }
