"""A minimal imitation of 360dialog's send API for benchmarks: answers, records, nothing else.

    python -m tests.bench.fake_api --port 18090 --latency-ms 50

Both dialect paths answer with a message id after `--latency-ms`. Every request is recorded as
(outbox id or recipient, arrival time); `GET /log` returns them (`?count=1`: how many) and `DELETE /log` clears them.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time

import orjson
import uvloop
from aiohttp import web

_LOG = web.AppKey("log", list[tuple[str, float]])
_LATENCY = web.AppKey("latency", float)


async def _send(request: web.Request) -> web.Response:
    arrived = time.time()
    body = orjson.loads(await request.read())
    key = body.get("biz_opaque_callback_data") or body.get("to") or "?"
    request.app[_LOG].append((key, arrived))
    latency = request.app[_LATENCY]
    if latency:
        await asyncio.sleep(latency)
    wamid = f"wamid.{next(_IDS)}"
    if request.path == "/v1/messages":
        return web.Response(
            body=orjson.dumps({"messages": [{"id": wamid}]}),
            status=201,
            content_type="application/json",
        )
    payload = {
        "messaging_product": "whatsapp",
        "contacts": [{"input": body.get("to"), "wa_id": body.get("to")}],
        "messages": [{"id": wamid}],
    }
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


async def _log(request: web.Request) -> web.Response:
    if request.method == "DELETE":
        request.app[_LOG].clear()
        return web.Response(status=204)
    if request.query.get("count"):  # cheap enough to poll during a run
        return web.Response(text=str(len(request.app[_LOG])))
    return web.Response(body=orjson.dumps(request.app[_LOG]), content_type="application/json")


_IDS = itertools.count(1)


def build(latency: float) -> web.Application:
    app = web.Application()
    app[_LOG] = []
    app[_LATENCY] = latency
    app.router.add_post("/v1/messages", _send)
    app.router.add_post("/messages", _send)
    app.router.add_route("*", "/log", _log)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    uvloop.install()
    web.run_app(
        build(args.latency_ms / 1000), host="127.0.0.1", port=args.port, access_log=None, print=None
    )
