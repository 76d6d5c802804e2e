"""The sandbox's own controls, for tests and for processes in other languages: the requests it
saw, scripted faults, template states and a reset (`/sandbox/...`; 360dialog has none of them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from outbox.sandbox.faults import Fault
from outbox.sandbox.responses import json_response

if TYPE_CHECKING:  # the server adds these routes to itself
    from outbox.sandbox.server import Sandbox


def control_routes(sandbox: Sandbox) -> list[web.RouteDef]:
    async def list_requests(request: web.Request) -> web.Response:
        return json_response(sandbox.requests)

    async def add_fault(request: web.Request) -> web.Response:
        try:
            sandbox.faults.add(Fault.from_json(orjson.loads(await request.read())))
        except (ValueError, TypeError) as exc:
            return json_response({"error": str(exc)}, 400)
        return web.Response(status=204)

    async def clear_faults(request: web.Request) -> web.Response:
        sandbox.faults.clear()
        return web.Response(status=204)

    async def set_template(request: web.Request) -> web.Response:
        try:
            data = orjson.loads(await request.read())
            template = sandbox.templates.set(request.match_info["name"], data)
        except (ValueError, TypeError) as exc:
            return json_response({"error": str(exc)}, 400)
        return json_response(vars(template))

    async def reset(request: web.Request) -> web.Response:
        sandbox.requests.clear()
        sandbox.faults.clear()
        return web.Response(status=204)

    return [
        web.get("/sandbox/requests", list_requests),
        web.post("/sandbox/faults", add_fault),
        web.delete("/sandbox/faults", clear_faults),
        web.post("/sandbox/reset", reset),
        web.post("/sandbox/templates/{name}", set_template),
    ]
