"""`outbox check`'s API part (issue 19 §4): per channel, is the key accepted, and does the
registered webhook URL point at this channel of ours? A key rotation drops the webhook at
360dialog (waba-api.md §4.6): caught here, before delivery reports go missing."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from outbox.config import ChannelConfig

if TYPE_CHECKING:
    from outbox.http.api_client import ApiClient

_CHANNEL_PATH = re.compile(r"/webhooks/([^/]+)/?$")
# Requests at a time: 10,000 channels at 200 ms a request take about two minutes.
CONNECTIONS = 16


@dataclass(frozen=True)
class ChannelCheck:
    channel: str
    key: str  # ok | refused | error
    webhook: str  # ours | other | none | unknown (when the key was not accepted)
    url: str | None  # the registered URL, user information removed
    detail: str | None

    @property
    def ok(self) -> bool:
        return self.key == "ok" and self.webhook == "ours"

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def line(self) -> str:
        key = {"ok": "key ok", "refused": "key REFUSED"}.get(self.key, "key not checked")
        hook = f"webhook {self.webhook if self.webhook == 'ours' else self.webhook.upper()}"
        where = f" ({self.url})" if self.url else ""
        why = f": {self.detail}" if self.detail else ""
        return f"channel {self.channel}: {key}, {hook}{where}{why}"


def other_channel(channel_id: str, url: str) -> str | None:
    """The channel whose webhook path (`/webhooks/<id>`) `url` names, when it is not
    `channel_id`: registering it would deliver this channel's reports to another one."""
    found = _CHANNEL_PATH.search(urlsplit(url).path)
    if found is None or unquote(found.group(1)) == channel_id:
        return None
    return unquote(found.group(1))


def judge(
    channel: ChannelConfig, status: int, body: Any, expected_url: str | None = None
) -> ChannelCheck:
    """The verdict on one `GET /v1/configs/webhook` answer. `expected_url`, when known (the
    [partner] webhook_url), must match whole; otherwise the path must be this channel's."""
    if status in (401, 403):
        return ChannelCheck(channel.id, "refused", "unknown", None, f"HTTP {status}")
    if not 200 <= status < 300:
        return ChannelCheck(channel.id, "error", "unknown", None, f"HTTP {status}")
    config = body if isinstance(body, dict) else {}
    url = config.get("url")
    if not isinstance(url, str) or not url:
        return ChannelCheck(channel.id, "ok", "none", None, "no webhook URL is registered")
    shown = _without_userinfo(url)
    if expected_url is not None:
        if url.rstrip("/") != expected_url.rstrip("/"):
            return ChannelCheck(channel.id, "ok", "other", shown, f"expected {expected_url}")
    elif _CHANNEL_PATH.search(urlsplit(url).path) is None or other_channel(channel.id, url):
        expected = f"/webhooks/{channel.id}"
        return ChannelCheck(channel.id, "ok", "other", shown, f"expected a path {expected}")
    if _credentials_differ(channel, config.get("headers")):
        detail = "registered with other Basic-auth credentials: run set-webhook again"
        return ChannelCheck(channel.id, "ok", "other", shown, detail)
    return ChannelCheck(channel.id, "ok", "ours", shown, None)


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _credentials_differ(channel: ChannelConfig, headers: Any) -> bool:
    """True when the API echoes an Authorization header that is not the channel's own (our
    webhooks would then be refused); an answer that echoes none proves nothing either way."""
    from outbox.http.api_client import webhook_config

    if not isinstance(headers, dict):
        return False
    echoed = {str(k).lower(): v for k, v in headers.items()}.get("authorization")
    ours = webhook_config(channel, "").get("headers", {}).get("Authorization")
    return echoed is not None and ours is not None and echoed != ours


async def check_channels(
    channels: Sequence[ChannelConfig],
    request_timeout: timedelta,
    webhook_url: str | None = None,
) -> list[ChannelCheck]:
    """Every channel, CONNECTIONS at a time; `webhook_url` is the [partner] template with
    `{channel}`."""
    from outbox.http.api_client import ApiClient, create_session

    # A request starts only when a connection is free: aiohttp's timeout counts the wait for
    # one, so with every channel's request started at once, a partner's thousands of channels
    # timed out behind the first few hundred ("not checked") however healthy the API was.
    free = asyncio.Semaphore(CONNECTIONS)

    async def one(channel: ChannelConfig) -> ChannelCheck:
        async with free:
            return await _one(client, channel, webhook_url)

    async with create_session(CONNECTIONS, request_timeout) as session:
        client = ApiClient(session)
        return list(await asyncio.gather(*(one(c) for c in channels)))


async def _one(client: ApiClient, channel: ChannelConfig, webhook_url: str | None) -> ChannelCheck:
    import aiohttp

    expected = webhook_url.replace("{channel}", channel.id) if webhook_url else None
    try:
        answer = await client.get_webhook(channel)
    except (aiohttp.ClientError, TimeoutError) as exc:
        reason = f"cannot reach {channel.base_url}: {str(exc) or type(exc).__name__}"
        return ChannelCheck(channel.id, "error", "unknown", None, reason)
    return judge(channel, answer.status, answer.body, expected)
