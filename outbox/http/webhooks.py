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
import secrets
from collections.abc import Mapping
from typing import Any, Protocol

import orjson
import structlog
from aiohttp import web

from outbox.config import ChannelConfig, Secret, WebhookOrigin
from outbox.domain.models import Dialect
from outbox.errors import BodyRejected, WriteQueueFull
from outbox.http.guard import WebhookGuard, body_timeout_answer

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
    guard: WebhookGuard,
) -> None:
    async def receive(request: web.Request, source: str) -> web.Response:
        channel_id = request.match_info["channel"]
        channel = channels.get(channel_id)
        problem = _refusal(channel, request.headers.get("Authorization"))
        if problem is not None:
            guard.failed(source)
            # An unknown channel and wrong credentials get the same answer: the channel ids
            # cannot be enumerated from outside (the log and the metric still tell them apart).
            label = channel_id if channel is not None else "unknown"
            return unauthorised(reject(observer, label, problem, 401, peer=source))
        assert channel is not None
        raw = await read_raw(request, observer, channel_id, guard)
        if isinstance(raw, web.Response):
            return raw
        decoded = decode_body(raw, observer, channel_id)
        if isinstance(decoded, web.Response):
            return decoded
        text, _ = decoded
        checked = channel.webhook_origin() is WebhookOrigin.CHECKED
        try:
            stored = await sink.store_webhook(channel_id, text, authenticated=checked)
        except Exception as exc:
            return store_failed(observer, channel_id, exc)
        observer.webhook(channel_id, "stored")
        return web.json_response({"stored": stored})

    app.router.add_post("/webhooks/{channel}", guard.guarded(receive))


def _refusal(channel: ChannelConfig | None, header: str | None) -> str | None:
    """Why the request is refused (None: accepted). The credentials are compared in every
    case, against a dummy when there are none, so the answer's timing tells nothing either."""
    if channel is None:
        authorised(_DUMMY, header)
        return "unknown_channel"
    match channel.webhook_origin():
        case WebhookOrigin.ANYONE:
            return None
        case WebhookOrigin.REFUSED:
            authorised(_DUMMY, header)
            return "unauthorised"
        case WebhookOrigin.CHECKED:
            return None if authorised(channel, header) else "unauthorised"


def unauthorised(response: web.Response) -> web.Response:
    response.headers["WWW-Authenticate"] = 'Basic realm="outbox"'
    return response


_NOT_JSON = object()


async def read_raw(
    request: web.Request, observer: WebhookObserver, label: str, guard: WebhookGuard
) -> bytes | web.Response:
    """The body's bytes as received, or the 413 or 408 answer (counted under `label`)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return reject(observer, label, "too_large", 413)
    try:
        raw = await guard.read(request)
    except web.HTTPRequestEntityTooLarge:
        return reject(observer, label, "too_large", 413)
    if raw is None:
        observer.webhook(label, "body_timeout")
        # Answered and closed now: aiohttp would otherwise linger reading the rest of the
        # body for up to 10 s more, which is what a slow client wants.
        response = body_timeout_answer()
        await response.prepare(request)
        await response.write_eof()
        request.protocol.force_close()
        return response
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
        # Why PostgreSQL refused it is ours to know (logged), not the client's (ASVS 7.4.1).
        log.warning("outbox.webhook.unstorable", channel=label, error=str(exc))
        return reject(observer, label, "unstorable", 400)
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
    user, password = basic_credentials(header)
    # Both comparisons always run, so timing tells nothing about which part was wrong.
    user_ok = hmac.compare_digest(user, channel.webhook_username.reveal().encode())
    password_ok = hmac.compare_digest(password, channel.webhook_password.reveal().encode())
    return user_ok and password_ok


# Compared against when a request has no channel or no credentials to be checked against.
_DUMMY = ChannelConfig(
    id="(none)",
    dialect=Dialect.CLOUD,
    base_url="http://127.0.0.1",
    api_key=Secret("-"),
    webhook_username=Secret(secrets.token_urlsafe(16)),
    webhook_password=Secret(secrets.token_urlsafe(24)),
)


def basic_credentials(header: str | None) -> tuple[bytes, bytes]:
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
    observer: WebhookObserver,
    channel: str,
    reason: str,
    status: int,
    detail: str | None = None,
    *,
    peer: str | None = None,
) -> web.Response:
    log.warning("outbox.webhook.rejected", channel=channel, reason=reason, status=status, peer=peer)
    observer.webhook(channel, reason)
    # A refused authentication says no more than "unauthorised", whatever the reason.
    answer = "unauthorised" if status == 401 else reason
    body = {"error": answer, "detail": detail} if detail else {"error": answer}
    return web.json_response(body, status=status)
