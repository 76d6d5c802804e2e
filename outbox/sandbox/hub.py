"""360dialog's Partner API (hub.360dialog.io/api/v2) in the sandbox, plus `GET /health_status`.

What it imitates (waba-api.md §7.2, waba-2026.md §1.11):
- Partner auth: the Partner API key in the `X-API-Key` header (the documented default; the
  legacy Bearer token is not imitated). A wrong or missing key gets 401; another partner's id
  in the path gets 403.
- `POST /api/v2/partners/{partner_id}/channels/{channel_id}/api_keys`: a new `D360-API-KEY`
  (`{id, api_key, address, app_id}`, 201). Every older key of that channel stops working at once
  (the message endpoints answer it 401) and the number's webhook configuration is dropped.
  A channel without "partner permission" gets 403; an unknown one 404.
- `GET /api/v2/partners/{partner_id}/channels`: `offset`, `limit` (1 to 100, default 10),
  `filters` (a JSON object of field equalities) and `sort` (a field, `-` for descending), with
  `count`, `total` and the page in `partner_channels`. Anything else is 400 "Wrong payload".
- `GET /health_status` on the numbers' host, with the channel's own key.
- Scripted faults: `fail(status, ...)` answers the next matching hub calls with that status
  (429 with `Retry-After` when given).
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from outbox.sandbox.responses import gateway_body, json_response
from outbox.sandbox.server import API_KEY_HEADER, Sandbox

PARTNER_KEY_HEADER = "X-API-Key"
PREFIX = "/api/v2/partners/{partner_id}"
MAX_LIMIT = 100
_FILTERABLE = ("id", "client_id", "status", "phone_number", "waba_id")
_SORTABLE = ("id", "created_at", "client_id", "status")


@dataclass
class HubChannel:
    id: str
    client_id: str
    phone_number: str
    waba_id: str
    phone_number_id: str
    status: str = "running"
    permission: bool = True  # may the partner create this number's keys?
    health: str = "AVAILABLE"  # AVAILABLE, LIMITED or BLOCKED
    created_at: str = "2026-01-01T00:00:00Z"
    keys: list[str] = field(default_factory=list)  # issued, oldest first; only the last works

    def listed(self) -> dict[str, Any]:
        # Field names beyond id/client_id/status are our reading of the docs [uncertain].
        return {
            "id": self.id,
            "client_id": self.client_id,
            "status": self.status,
            "created_at": self.created_at,
            "external_id": self.phone_number_id,
            "setup_info": {"phone_number": self.phone_number, "phone_name": self.id},
            "waba_account": {"id": f"WA{self.waba_id}", "external_id": self.waba_id},
        }


@dataclass
class HubFault:
    status: int
    path_contains: str = ""
    times: int | None = 1  # None: forever
    retry_after: float | None = None


@dataclass(frozen=True)
class HubCall:
    method: str
    path: str
    status: int


class Hub:
    """The Partner API of one partner, served by `sandbox` (add it before the sandbox starts)."""

    def __init__(self, sandbox: Sandbox, partner_id: str, partner_key: str) -> None:
        self.sandbox = sandbox
        self.partner_id = partner_id
        self._partner_key = partner_key
        self.channels: dict[str, HubChannel] = {}
        self.faults: list[HubFault] = []
        self.calls: list[HubCall] = []
        self._app_ids = itertools.count(1)
        sandbox.app.add_routes(
            [
                web.post(PREFIX + "/channels/{channel_id}/api_keys", self._create_key),
                web.get(PREFIX + "/channels", self._list_channels),
                web.get("/health_status", self._health),
            ]
        )

    def add(self, channel: HubChannel) -> HubChannel:
        self.channels[channel.id] = channel
        return channel

    def populate(self, count: int, *, clients: int = 1, start: int = 0) -> list[HubChannel]:
        """`count` running channels spread over `clients` clients, ids CH00000, CH00001, ..."""
        return [
            self.add(
                HubChannel(
                    id=f"CH{i:05d}",
                    client_id=f"CL{i % clients:03d}",
                    phone_number=f"49151{i:07d}",
                    waba_id=f"1{i:09d}",
                    phone_number_id=f"2{i:09d}",
                    created_at=f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z",
                )
            )
            for i in range(start, start + count)
        ]

    def fail(
        self,
        status: int,
        path_contains: str = "",
        *,
        times: int | None = 1,
        retry_after: float | None = None,
    ) -> None:
        self.faults.append(HubFault(status, path_contains, times, retry_after))

    def current_key(self, channel_id: str) -> str | None:
        keys = self.channels[channel_id].keys
        return keys[-1] if keys else None

    def issue_key(self, channel_id: str) -> str:
        """What POST .../api_keys does: a new key, every older one revoked with its webhook."""
        channel = self.channels[channel_id]
        for old in channel.keys:
            self.sandbox.revoke_key(old)
        key = secrets.token_urlsafe(24)
        channel.keys.append(key)
        self.sandbox.accept_key(key, f"{channel_id}#{len(channel.keys)}")
        return key

    def _fault(self, request: web.Request) -> web.Response | None:
        for fault in self.faults:
            if fault.path_contains not in request.path:
                continue
            if fault.times is not None:
                fault.times -= 1
                if fault.times == 0:
                    self.faults.remove(fault)
            headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            return json_response(
                _error(fault.status, "scripted sandbox fault"), fault.status, headers
            )
        return None

    def _gate(self, request: web.Request) -> web.Response | None:
        """Faults first, then partner auth: the answer to refuse with, or None."""
        refused = self._fault(request)
        if refused is not None:
            return refused
        if not secrets.compare_digest(
            request.headers.get(PARTNER_KEY_HEADER, "").encode(), self._partner_key.encode()
        ):
            return json_response(_error(401, "Invalid or missing API key"), 401)
        if request.match_info["partner_id"] != self.partner_id:
            return json_response(_error(403, "No access to this partner"), 403)
        return None

    def _done(self, request: web.Request, response: web.Response) -> web.Response:
        self.calls.append(HubCall(request.method, request.path, response.status))
        return response

    async def _create_key(self, request: web.Request) -> web.Response:
        refused = self._gate(request)
        if refused is not None:
            return self._done(request, refused)
        channel = self.channels.get(request.match_info["channel_id"])
        if channel is None:
            return self._done(request, json_response(_error(404, "Channel not found"), 404))
        if not channel.permission:
            message = "Partner has no permission to manage this channel's API keys"
            return self._done(request, json_response(_error(403, message), 403))
        key = self.issue_key(channel.id)
        body = {
            "id": f"{channel.id}-{len(channel.keys)}",
            "api_key": key,
            "address": str(request.url.origin()),
            "app_id": str(next(self._app_ids)),
        }
        return self._done(request, json_response(body, 201))

    async def _list_channels(self, request: web.Request) -> web.Response:
        refused = self._gate(request)
        if refused is not None:
            return self._done(request, refused)
        try:
            offset, limit, filters, sort = _query(request)
        except ValueError as exc:
            return self._done(request, json_response(_error(400, f"Wrong payload: {exc}"), 400))
        rows = [
            c.listed() | {"waba_id": c.waba_id, "phone_number": c.phone_number}
            for c in self.channels.values()
        ]
        rows = [r for r in rows if all(str(r.get(k)) == str(v) for k, v in filters.items())]
        rows.sort(key=lambda r: str(r[sort.lstrip("-")]), reverse=sort.startswith("-"))
        page = [
            {k: v for k, v in r.items() if k not in ("waba_id", "phone_number")}
            for r in rows[offset : offset + limit]
        ]
        body = {
            "count": len(page),
            "filters": filters,
            "limit": limit,
            "offset": offset,
            "sort": [sort],
            "total": len(rows),
            "partner_channels": page,
        }
        return self._done(request, json_response(body))

    async def _health(self, request: web.Request) -> web.Response:
        label = self.sandbox.key_label(request.headers.get(API_KEY_HEADER))
        if label is None:
            return self._done(request, json_response(gateway_body(401), 401))
        channel = self.channels.get(label.split("#")[0])
        state = "AVAILABLE" if channel is None else channel.health
        entity: dict[str, Any] = {
            "entity_type": "PHONE_NUMBER",
            "id": None if channel is None else channel.phone_number_id,
            "can_send_message": state,
        }
        if state != "AVAILABLE":
            entity["errors"] = [
                {
                    "error_code": 141006,
                    "error_description": "The number is restricted (scripted in the sandbox)",
                    "possible_solution": "Resolve the restriction in WhatsApp Manager",
                }
            ]
        body = {"health_status": {"can_send_message": state, "entities": [entity]}}
        return self._done(request, json_response(body))


def _query(request: web.Request) -> tuple[int, int, dict[str, Any], str]:
    query = request.query
    try:
        offset = int(query.get("offset", "0"))
        limit = int(query.get("limit", "10"))
    except ValueError:
        raise ValueError("offset and limit are whole numbers") from None
    if offset < 0 or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"offset >= 0, limit between 1 and {MAX_LIMIT}")
    try:
        filters = orjson.loads(query.get("filters", "{}"))
    except orjson.JSONDecodeError:
        raise ValueError("filters is a JSON object") from None
    if not isinstance(filters, dict) or any(k not in _FILTERABLE for k in filters):
        raise ValueError(f"filters is a JSON object of {', '.join(_FILTERABLE)}")
    sort = query.get("sort", "id")
    if sort.lstrip("-") not in _SORTABLE:
        raise ValueError(f"sort by one of {', '.join(_SORTABLE)}")
    return offset, limit, filters, sort


def _error(status: int, message: str) -> dict[str, Any]:
    # The Partner API's error bodies are not documented field by field [uncertain]: a
    # `detail` text and the status, as its OpenAPI reference suggests.
    return {"detail": message, "status": status}
