"""Posts send requests to 360dialog and describes what happened; it decides nothing."""

from __future__ import annotations

from datetime import timedelta

import aiohttp
import orjson

from outbox.config import ChannelConfig
from outbox.domain.request import ApiRequest
from outbox.domain.response import (
    SendOutcome,
    TransportFailure,
    parse_retry_after,
    parse_send_response,
)


def create_session(max_connections: int, timeout: timedelta) -> aiohttp.ClientSession:
    seconds = timeout.total_seconds()
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=0),
        timeout=aiohttp.ClientTimeout(total=seconds, sock_connect=min(seconds, 10.0)),
        json_serialize=lambda value: orjson.dumps(value).decode(),
        raise_for_status=False,
    )


class ApiClient:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def send(self, channel: ChannelConfig, request: ApiRequest) -> SendOutcome:
        try:
            async with self._session.post(
                channel.base_url + request.path,
                data=orjson.dumps(request.body),
                headers={
                    "D360-API-KEY": channel.api_key.reveal(),
                    "Content-Type": "application/json",
                },
            ) as response:
                raw = await response.read()
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                status = response.status
        except aiohttp.ClientConnectorError as exc:
            return TransportFailure(ambiguous=False, reason=f"connect failed: {exc.os_error}")
        except aiohttp.ConnectionTimeoutError:
            return TransportFailure(ambiguous=False, reason="connect timed out")
        except TimeoutError:
            return TransportFailure(ambiguous=True, reason="timed out waiting for the answer")
        except aiohttp.ClientError as exc:
            return TransportFailure(ambiguous=True, reason=f"{type(exc).__name__}: {exc}")
        try:
            body: object = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", errors="replace")
        return parse_send_response(status, body, retry_after)
