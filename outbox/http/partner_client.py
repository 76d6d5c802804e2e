"""360dialog's Partner API (the hub) and a number's own host, for onboarding and key rotation.

Credentials travel in headers (`X-API-Key` to the hub, `D360-API-KEY` to the number), so no
redirect is ever followed: a 3xx is reported, not obeyed. Answers are read up to a bound, every
call has a timeout, and every failure becomes a `PartnerApiError` with no secret in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import aiohttp
import orjson

from outbox.config import ChannelConfig, PartnerConfig, Secret
from outbox.config_checks import credential_problem
from outbox.domain import parsing
from outbox.domain.partner import CanSend, Health
from outbox.domain.response import parse_retry_after
from outbox.http.api_client import key_headers, webhook_config
from outbox.ports.partner import ChannelPage, IssuedKey, PartnerApiError, PartnerChannel

MAX_ANSWER = 4 * 1024 * 1024  # bytes: a page of 100 channels is some 60 KiB
DETAIL_LIMIT = 200  # characters of an error answer quoted in messages
# Where a key's answer names no host: 360dialog's Cloud API (waba-api.md §0).
DEFAULT_ADDRESS = "https://waba-v2.360dialog.io"


def create_session(timeout: timedelta) -> aiohttp.ClientSession:
    seconds = timeout.total_seconds()
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=seconds, sock_connect=min(seconds, 10.0)),
        cookie_jar=aiohttp.DummyCookieJar(),
        raise_for_status=False,
    )


async def _call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: Mapping[str, str],
    *,
    params: Mapping[str, str] | None = None,
    body: Any = None,
) -> Any:
    """The decoded JSON of a 2xx answer; anything else raises PartnerApiError."""
    data = None if body is None else orjson.dumps(body)
    try:
        async with session.request(
            method, url, headers=headers, params=params, data=data, allow_redirects=False
        ) as response:
            raw = await _bounded(response)
            status = response.status
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            location = response.headers.get("Location", "")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise PartnerApiError(None, f"{type(exc).__name__} calling {url}") from None
    if 300 <= status < 400:
        raise PartnerApiError(status, f"redirect to {location[:DETAIL_LIMIT]!r} not followed")
    try:
        decoded = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        decoded = raw.decode("utf-8", errors="replace")
    if not 200 <= status < 300:
        raise PartnerApiError(status, _detail(decoded), retry_after=retry_after)
    return decoded


async def _bounded(response: aiohttp.ClientResponse) -> bytes:
    if (response.content_length or 0) > MAX_ANSWER:
        raise PartnerApiError(response.status, f"answer larger than {MAX_ANSWER} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER:
            raise PartnerApiError(response.status, f"answer larger than {MAX_ANSWER} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _detail(body: Any) -> str:
    """What an error answer says, in the shapes 360dialog uses, cleaned and short."""
    text: Any = body
    if isinstance(body, dict):
        meta, error = _object(body.get("meta")), _object(body.get("error"))
        text = (
            body.get("detail")
            or body.get("message")
            or meta.get("developer_message")
            or error.get("message")
            or ""
        )
    return parsing.storable(str(text or ""), DETAIL_LIMIT)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _channel(entry: Any) -> PartnerChannel | None:
    if not isinstance(entry, dict) or _text(entry.get("id")) is None:
        return None
    setup, waba = _object(entry.get("setup_info")), _object(entry.get("waba_account"))
    return PartnerChannel(
        id=entry["id"],
        client_id=_text(entry.get("client_id")),
        status=_text(entry.get("status")),
        phone_number=_text(setup.get("phone_number")),
        waba_id=_text(waba.get("external_id")),
        phone_number_id=_text(entry.get("external_id")),
    )


class PartnerClient:
    """The hub, as one partner (`[partner]`)."""

    def __init__(self, session: aiohttp.ClientSession, config: PartnerConfig) -> None:
        self._session = session
        self._base = f"{config.base_url}/partners/{config.partner_id}"
        self._headers = {"X-API-Key": config.api_key.reveal(), "Accept": "application/json"}

    async def list_channels(
        self, filters: Mapping[str, str], *, offset: int, limit: int
    ) -> ChannelPage:
        params = {"offset": str(offset), "limit": str(limit), "sort": "id"}
        if filters:
            params["filters"] = orjson.dumps(dict(filters)).decode()
        body = await _call(
            self._session, "GET", f"{self._base}/channels", self._headers, params=params
        )
        entries = body.get("partner_channels") if isinstance(body, dict) else None
        total = body.get("total") if isinstance(body, dict) else None
        if not isinstance(entries, list) or not isinstance(total, int):
            raise PartnerApiError(200, "a channel listing without partner_channels and total")
        channels = (_channel(e) for e in entries)
        return ChannelPage(tuple(c for c in channels if c is not None), total)

    async def create_api_key(self, partner_channel_id: str) -> IssuedKey:
        url = f"{self._base}/channels/{partner_channel_id}/api_keys"
        body = await _call(self._session, "POST", url, self._headers)
        key = _text(body.get("api_key")) if isinstance(body, dict) else None
        if key is None:
            raise PartnerApiError(200, "a new-key answer without api_key")
        problem = credential_problem(key)
        if problem is not None:  # it could never be sent in a header as it is
            raise PartnerApiError(200, f"the new key {problem}")
        address = _text(body.get("address"))
        return IssuedKey(Secret(key), address or DEFAULT_ADDRESS)


class NumberClient:
    """A number's API host, with the channel's own key."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def set_webhook(self, channel: ChannelConfig, url: str) -> None:
        await _call(
            self._session,
            "POST",
            f"{channel.base_url}/v1/configs/webhook",
            key_headers(channel),
            body=webhook_config(channel, url),
        )

    async def health(self, channel: ChannelConfig) -> Health:
        body = await _call(
            self._session, "GET", f"{channel.base_url}/health_status", key_headers(channel)
        )
        status = body.get("health_status") if isinstance(body, dict) else None
        state = status.get("can_send_message") if isinstance(status, dict) else None
        if state not in tuple(CanSend):
            raise PartnerApiError(200, "a health_status answer without can_send_message")
        assert isinstance(status, dict)
        reasons = [
            parsing.storable(str(error.get("error_description", "")), DETAIL_LIMIT)
            for entity in status.get("entities") or []
            if isinstance(entity, dict)
            for error in entity.get("errors") or []
            if isinstance(error, dict)
        ]
        return Health(CanSend(state), tuple(r for r in reasons if r))
