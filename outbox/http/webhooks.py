"""`POST /webhooks/{channel}`: store each raw notification durably, answer 200 only after commit.

Nothing is interpreted here (the reconciler does that later, from the table), so the endpoint
stays fast and a body we do not understand yet is still kept. A database that cannot take the row
gets 503, which makes 360dialog retry: never a 200 without a stored row.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Mapping
from typing import Any, Protocol

import orjson
import structlog
from aiohttp import web

from outbox.config import ChannelConfig, WebhookOrigin
from outbox.errors import BodyRejected, WriteQueueFull

log = structlog.get_logger("outbox.webhooks")

MAX_BODY_BYTES = 1024 * 1024  # 360dialog bodies are a few KiB; anything near this is abuse


class WebhookSink(Protocol):
    async def store_webhook(self, channel: str, body: str, *, authenticated: bool) -> int: ...


class WebhookObserver(Protocol):
    def webhook(self, channel: str, outcome: str) -> None: ...


def log_origins(channels: Mapping[str, ChannelConfig]) -> None:
    """Say at start which channels take webhooks from anyone, and which refuse them all."""
    for channel in channels.values():
        match channel.webhook_origin():
            case WebhookOrigin.ANYONE:
                log.warning(
                    "outbox.webhook.unauthenticated",
                    channel=channel.id,
                    note='webhook_auth = "none": anyone can post; its statuses find rows by '
                    "wamid only, so a lost send answer is not resolved by a status",
                )
            case WebhookOrigin.REFUSED:
                log.error(
                    "outbox.webhook.no_credentials",
                    channel=channel.id,
                    note="every webhook is refused with 401: set webhook_username_* and "
                    'webhook_password_*, or webhook_auth = "none" to take them unchecked',
                )
            case WebhookOrigin.CHECKED:
                pass


def add_routes(
    app: web.Application,
    channels: Mapping[str, ChannelConfig],
    sink: WebhookSink,
    observer: WebhookObserver,
) -> None:
    async def receive(request: web.Request) -> web.Response:
        channel_id = request.match_info["channel"]
        channel = channels.get(channel_id)
        if channel is None:
            return reject(observer, "unknown", "unknown_channel", 404)
        origin = channel.webhook_origin()
        if origin is WebhookOrigin.REFUSED or (
            origin is WebhookOrigin.CHECKED
            and not authorised(channel, request.headers.get("Authorization"))
        ):
            response = reject(observer, channel_id, "unauthorised", 401)
            response.headers["WWW-Authenticate"] = 'Basic realm="outbox"'
            return response
        raw = await read_raw(request, observer, channel_id)
        if isinstance(raw, web.Response):
            return raw
        decoded = decode_body(raw, observer, channel_id)
        if isinstance(decoded, web.Response):
            return decoded
        text, _ = decoded
        try:
            stored = await sink.store_webhook(
                channel_id, text, authenticated=origin is WebhookOrigin.CHECKED
            )
        except Exception as exc:
            return store_failed(observer, channel_id, exc)
        observer.webhook(channel_id, "stored")
        return web.json_response({"stored": stored})

    app.router.add_post("/webhooks/{channel}", receive)


_NOT_JSON = object()


async def read_raw(
    request: web.Request, observer: WebhookObserver, label: str
) -> bytes | web.Response:
    """The body's bytes as received, or the 413 answer (counted under `label`)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return reject(observer, label, "too_large", 413)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return reject(observer, label, "too_large", 413)
    return raw


def decode_body(
    raw: bytes, observer: WebhookObserver, label: str
) -> tuple[str, dict[str, Any]] | web.Response:
    """The body as text and as the JSON object it must be, or the 400 answer."""
    # JSON on the wire is UTF-8 (RFC 8259 section 8.1). Decoded here, at the edge, so that
    # a body in another encoding is the sender's mistake (400) and never reaches the store,
    # where a decoding error would read as an outage (503, retried for ever).
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        detail = f"the body is not UTF-8 (invalid byte at offset {exc.start})"
        return reject(observer, label, "not_utf8", 400, detail)
    body = _parse(text)
    if body is _NOT_JSON:
        return reject(observer, label, "not_json", 400)
    if not isinstance(body, dict):
        return reject(observer, label, "not_an_object", 400)
    return text, body


def store_failed(observer: WebhookObserver, label: str, exc: Exception) -> web.Response:
    """The answer when a body could not be stored: the body's fault (400) or ours (503)."""
    if isinstance(exc, BodyRejected):
        return reject(observer, label, "unstorable", 400, str(exc))
    if isinstance(exc, WriteQueueFull):
        # The database is too slow to take what arrives: refuse at once rather than hold
        # more in memory; 360dialog retries later.
        log.warning("outbox.webhook.overloaded", channel=label)
        observer.webhook(label, "overloaded")
        return web.json_response({"error": "overloaded"}, status=503)
    # An outage must reach 360dialog as a retryable answer, whatever the driver raised.
    log.warning("outbox.webhook.store_failed", channel=label, error=type(exc).__name__)
    observer.webhook(label, "unavailable")
    return web.json_response({"error": "storage unavailable"}, status=503)


def _parse(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    # orjson refuses some valid JSON that jsonb stores (integers beyond 64 bits, deep nesting):
    # the standard library decides.
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _NOT_JSON


def authorised(channel: ChannelConfig, header: str | None) -> bool:
    if channel.webhook_username is None or channel.webhook_password is None:
        return False
    user, password = _basic_credentials(header)
    # Both comparisons always run, so timing tells nothing about which part was wrong.
    user_ok = hmac.compare_digest(user, channel.webhook_username.reveal().encode())
    password_ok = hmac.compare_digest(password, channel.webhook_password.reveal().encode())
    return user_ok and password_ok


def _basic_credentials(header: str | None) -> tuple[bytes, bytes]:
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return b"", b""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return b"", b""
    user, _, password = decoded.partition(b":")
    return user, password


def reject(
    observer: WebhookObserver, channel: str, reason: str, status: int, detail: str | None = None
) -> web.Response:
    log.warning("outbox.webhook.rejected", channel=channel, reason=reason, status=status)
    observer.webhook(channel, reason)
    body = {"error": reason, "detail": detail} if detail else {"error": reason}
    return web.json_response(body, status=status)
