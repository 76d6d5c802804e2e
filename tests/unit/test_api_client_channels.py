"""The API client holds nothing per channel: a partner's thousands of channels cost it no memory
(issue 16), and each request still carries its own channel's key."""

from __future__ import annotations

import gc
import tracemalloc
from datetime import timedelta

from aiohttp import web

from outbox.config import ChannelConfig, Secret
from outbox.domain.models import Dialect, SentAs
from outbox.domain.request import ApiRequest
from outbox.http.api_client import ApiClient, create_session
from tests.support import loopback_site

CHANNELS = 2_000


async def test_thousands_of_channels_leave_nothing_behind_in_the_client() -> None:
    """Before: a parsed address and a header set per channel, about 0.8 kB each (8 MB at
    10,000 channels)."""
    keys = [f"key-{n:05d}-" + "x" * 24 for n in range(CHANNELS)]
    # Counted, not kept: the server runs in this process, and what it kept would be measured.
    answered, wrong = [0], [0]

    async def messages(request: web.Request) -> web.Response:
        wrong[0] += request.headers["D360-API-KEY"] != keys[answered[0]]
        answered[0] += 1
        return web.json_response({"messages": [{"id": "wamid.1"}]})

    app = web.Application()
    app.router.add_post("/messages", messages)
    runner, base = await loopback_site(app)
    channels = [
        ChannelConfig(f"c{n:05d}", Dialect.CLOUD, base, Secret(key)) for n, key in enumerate(keys)
    ]
    request = ApiRequest("/messages", {"to": "1"}, SentAs.FREEFORM)
    try:
        async with create_session(4, timedelta(seconds=5)) as session:
            client = ApiClient(session)
            await client.send(channels[0], request)  # the session's own first-use allocations
            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for channel in channels[1:]:
                    await client.send(channel, request)
                gc.collect()
                grown = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
    finally:
        await runner.cleanup()
    assert (answered[0], wrong[0]) == (CHANNELS, 0)
    assert grown < 20 * CHANNELS, grown
