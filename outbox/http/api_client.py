"""Posts send requests to 360dialog and describes what happened; it decides nothing."""

from __future__ import annotations

import base64
import json
import ssl
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
import orjson
from yarl import URL

from outbox.config import ChannelConfig
from outbox.domain import parsing
from outbox.domain.codes import Title
from outbox.domain.request import ApiRequest
from outbox.domain.response import (
    ANSWER_LIMIT,
    DETAIL_LIMIT,
    Rejected,
    SendOutcome,
    TransportFailure,
    parse_retry_after,
    parse_send_response,
)
from outbox.http.wire import Wire, WireError


class ApiSession:
    """The sends' own pool (`Wire`: the hot path) and an aiohttp session for the rest (a
    webhook's registration, `outbox check`), both closed together."""

    def __init__(
        self, max_connections: int, timeout: timedelta, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        seconds = timeout.total_seconds()
        connect = min(seconds, 10.0)
        self.wire = Wire(max_connections, seconds, connect, ANSWER_LIMIT, ssl_context)
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=max_connections, limit_per_host=0, ssl=ssl_context or True
            ),
            timeout=aiohttp.ClientTimeout(total=seconds, sock_connect=connect),
            raise_for_status=False,
            # The API sets no cookies worth keeping; skipping the jar saves work on every request.
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def __aenter__(self) -> ApiSession:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.wire.close()
        await self.http.close()


def create_session(
    max_connections: int, timeout: timedelta, ssl_context: ssl.SSLContext | None = None
) -> ApiSession:
    return ApiSession(max_connections, timeout, ssl_context)


def key_headers(channel: ChannelConfig) -> dict[str, str]:
    """A JSON request to the channel's number with its key, built per request: no key is kept
    beyond it (issue 19 §3)."""
    return {"D360-API-KEY": channel.api_key.reveal(), "Content-Type": "application/json"}


@dataclass(frozen=True)
class ApiAnswer:
    status: int
    body: Any  # parsed JSON, or the text when it was not JSON
    location: str | None = None  # where a redirect (3xx, never followed) pointed


def is_redirect(status: int) -> bool:
    return 300 <= status < 400


def redirect_target(location: str | None) -> str:
    """Where a 3xx pointed, cleaned and short: for the row's detail and the operator."""
    return parsing.storable(location or "", 200)


def webhook_config(channel: ChannelConfig, url: str) -> dict[str, Any]:
    """The body of `POST /v1/configs/webhook`: our URL, and the Basic-auth header 360dialog
    must send with every notification when the channel expects one."""
    config: dict[str, Any] = {"url": url}
    if channel.webhook_username is not None and channel.webhook_password is not None:
        pair = f"{channel.webhook_username.reveal()}:{channel.webhook_password.reveal()}"
        token = base64.b64encode(pair.encode()).decode()
        config["headers"] = {"Authorization": f"Basic {token}"}
    return config


class ApiClient:
    """Every request carries the channel's key, so none follows a redirect (aiohttp's with
    `allow_redirects=False`; the sends' pool never does): a 3xx is an answer, reported, never
    obeyed."""

    def __init__(self, session: ApiSession) -> None:
        self._session = session.http
        self._wire = session.wire
        # Parsed once per address, not per request: this is the hot path. By address, not by
        # channel: a partner's 10,000 channels share one or a few (issue 16: a parsed address
        # and a header set per channel held about 1 kB each), and no channel's key is kept here,
        # so a rotated-out one is not kept alive in memory (issue 19 §3).
        self._urls: dict[str, URL] = {}

    def _target(self, channel: ChannelConfig, path: str) -> tuple[URL, dict[str, str]]:
        address = channel.base_url + path
        url = self._urls.get(address)
        if url is None:
            url = self._urls[address] = URL(address)
        return url, key_headers(channel)

    async def set_webhook(
        self, channel: ChannelConfig, url: str, *, waba: bool = False
    ) -> ApiAnswer:
        """Register `url` as the channel's webhook (the same path in both dialects), or with
        `waba` as its account's WABA-level webhook (`POST /waba_webhook`: template, account and
        quality events), leaving the numbers' own webhooks as they are."""
        config = webhook_config(channel, url)
        if waba:
            config["override_all"] = False
        path = "/waba_webhook" if waba else "/v1/configs/webhook"
        async with self._session.post(
            f"{channel.base_url}{path}",
            data=orjson.dumps(config),
            headers=key_headers(channel),
            allow_redirects=False,
        ) as response:
            raw, cut = await _read(response)
            body = _text(raw) if cut else _decode(raw)
            where = response.headers.get("Location")
            location = redirect_target(where) if is_redirect(response.status) else None
            return ApiAnswer(response.status, body, location)

    # --- `outbox check` (issue 19 §4): is the key accepted, and where do webhooks go? ---
    async def get_webhook(self, channel: ChannelConfig) -> ApiAnswer:
        """`GET /v1/configs/webhook` (the same path in both dialects): 401 when the key is
        refused, else the registered `{url, headers}`. Never follows a redirect: the key
        must not reach another origin."""
        async with self._session.get(
            f"{channel.base_url}/v1/configs/webhook",
            headers={"D360-API-KEY": channel.api_key.reveal()},
            allow_redirects=False,
        ) as response:
            raw, cut = await _read(response)
            body = _text(raw) if cut else _decode(raw)
            return ApiAnswer(response.status, body)

    async def send(self, channel: ChannelConfig, request: ApiRequest) -> SendOutcome:
        url, headers = self._target(channel, request.path)
        try:
            answer = await self._wire.post(url, headers, orjson.dumps(request.body))
        except WireError as exc:
            # The reason can quote a garbled answer (the parser's complaint): stored, so cleaned.
            reason = parsing.storable(exc.reason, DETAIL_LIMIT)
            return TransportFailure(ambiguous=exc.ambiguous, reason=reason)
        except TimeoutError:
            return TransportFailure(ambiguous=True, reason="timed out waiting for the answer")
        if is_redirect(answer.status):
            where = redirect_target(answer.location)
            return Rejected(answer.status, None, Title.REDIRECT_REFUSED, f"Location: {where!r}")
        retry_after = parse_retry_after(answer.retry_after)
        if answer.cut:
            # What was read is a prefix: never JSON, but it may still name the message id.
            return parse_send_response(answer.status, _text(answer.body), retry_after, cut=True)
        return parse_send_response(answer.status, _decode(answer.body), retry_after)


async def _read(response: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    """The body up to ANSWER_LIMIT bytes, and whether there was more. The rest is never read:
    the connection is closed instead of returned to the pool."""
    chunks: list[bytes] = []
    size = 0
    while size <= ANSWER_LIMIT:
        chunk = await response.content.read(ANSWER_LIMIT + 1 - size)
        if not chunk:
            return b"".join(chunks), False
        chunks.append(chunk)
        size += len(chunk)
    response.close()
    return b"".join(chunks)[:ANSWER_LIMIT], True


def _decode(raw: bytes) -> Any:
    """The answer's JSON, or its text when it is not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    # orjson is strict where an answer can still be JSON, and a success read as no answer is
    # sent again. The standard decoder takes a byte order mark (RFC 8259 §8.1) and UTF-16 or
    # UTF-32 behind one, lone surrogates (cleaned later, `parsing.storable`), numbers beyond a
    # double and nesting to several hundred levels. Only answers orjson refused pay for it.
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return _text(raw)


def _text(raw: bytes) -> str:
    """An answer's bytes as text, in the encoding its byte order mark (or, without one, its NUL
    pattern) names, as the JSON decoder reads them (RFC 8259 §8.1), else UTF-8: a success that
    is not JSON is searched for its message id in this text, and read as UTF-8, UTF-16 put a
    NUL between every letter of it (found by the hostile answers' property, session p)."""
    return raw.decode(json.detect_encoding(raw), errors="replace")
