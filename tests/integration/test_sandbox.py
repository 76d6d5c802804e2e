"""The sandbox API over real HTTP on 127.0.0.1, with a real client and a real webhook receiver."""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from outbox.sandbox import Dialect, Fault, Sandbox, serve
from outbox.sandbox.notifications import ATTEMPTS

KEYS = {"key-legacy": "legacy", "key-shop": "shop"}
KEY: dict[Dialect, str] = {"onprem": "key-legacy", "cloud": "key-shop"}
PATH: dict[Dialect, str] = {"onprem": "/v1/messages", "cloud": "/messages"}
DIALECTS: tuple[Dialect, ...] = ("onprem", "cloud")
DELAYS = (0.01, 0.02, 0.03)
TO = "4915112345678"
OTHER = "4915100000002"
NAMESPACE = "d8bcb6bd_2ab2_439c_9d9e_947501266c77"
LINK = "https://example.com/a.pdf"
META = {"api_status": "stable", "version": "2.45.2"}
ONPREM_ID = re.compile(r"gBEG[A-Za-z0-9_-]{24}")
CLOUD_ID = re.compile(r"wamid\.HBgL[A-Za-z0-9_-]+")
BUTTONS = {"buttons": [{"type": "reply", "reply": {"id": "yes", "title": "Yes"}}]}


def message(dialect: Dialect, *, drop: Iterable[str] = (), **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"to": TO, "type": "text", "text": {"body": "hi"}, **fields}
    if dialect == "cloud":
        body = {"messaging_product": "whatsapp", **body}
    for key in drop:
        del body[key]
    return body


def template(dialect: Dialect, *, drop: Iterable[str] = (), **fields: Any) -> dict[str, Any]:
    content: dict[str, Any] = {"name": "order_shipped", "language": {"code": "en"}}
    if dialect == "onprem":
        content["namespace"] = NAMESPACE
    content |= fields
    for key in drop:
        del content[key]
    return {"type": "template", "template": content}


@dataclass
class Reply:
    status: int
    body: Any
    headers: Mapping[str, str]


@dataclass
class Api:
    sandbox: Sandbox
    url: str
    http: aiohttp.ClientSession

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = None,
        give_up_after: float | None = None,
    ) -> Reply:
        headers = {} if key is None else {"D360-API-KEY": key}
        data = body if body is None or isinstance(body, bytes) else orjson.dumps(body)
        async with self.http.request(
            method,
            self.url + path,
            data=data,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=give_up_after),
        ) as response:
            raw = await response.read()
            return Reply(response.status, orjson.loads(raw) if raw else None, response.headers)

    async def send(
        self, dialect: Dialect, body: Any, *, give_up_after: float | None = None
    ) -> Reply:
        return await self.call(
            "POST", PATH[dialect], body, key=KEY[dialect], give_up_after=give_up_after
        )

    async def set_webhook(self, dialect: Dialect, url: str, **headers: str) -> None:
        reply = await self.call(
            "POST", "/v1/configs/webhook", {"url": url, "headers": headers}, key=KEY[dialect]
        )
        assert reply.status == 200


StartSandbox = Callable[..., Awaitable[Api]]


@pytest.fixture
async def start_sandbox() -> AsyncIterator[StartSandbox]:
    started: list[Sandbox] = []
    async with aiohttp.ClientSession() as http:

        async def start(**options: Any) -> Api:
            sandbox = Sandbox(KEYS, **{"status_delays": DELAYS, **options})
            started.append(sandbox)
            return Api(sandbox, await sandbox.start(), http)

        yield start
        for sandbox in started:
            await sandbox.stop()


@pytest.fixture
async def api(start_sandbox: StartSandbox) -> Api:
    return await start_sandbox()


@dataclass
class Receiver:
    """A webhook endpoint that answers 500 to its first `fail_first` posts."""

    url: str = ""
    fail_first: int = 0
    posts: list[tuple[Mapping[str, str], Any]] = field(default_factory=list)

    def bodies(self) -> list[Any]:
        return [body for _, body in self.posts]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()

    async def hook(request: web.Request) -> web.Response:
        receiver.posts.append((request.headers, await request.json()))
        return web.Response(status=500 if len(receiver.posts) <= receiver.fail_first else 200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    receiver.url = f"http://{host}:{port}/hook"
    yield receiver
    await runner.cleanup()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def eventually(predicate: Callable[[], bool], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def assert_api_error(dialect: Dialect, reply: Reply, code: int, status: int = 400) -> None:
    assert reply.status == status
    if dialect == "onprem":
        [error] = reply.body["errors"]
        assert set(error) == {"code", "title", "details"}
        assert error["code"] == code
        assert reply.body["meta"] == META
        return
    error = reply.body["error"]
    assert set(error) == {"message", "type", "code", "error_data", "fbtrace_id"}
    assert error["code"] == code
    assert error["message"].startswith(f"(#{code}) ")
    assert error["type"] == "OAuthException"
    assert error["error_data"]["messaging_product"] == "whatsapp"
    assert error["fbtrace_id"].startswith("A")


def gateway(status: int, message: str) -> dict[str, Any]:
    return {"meta": {"success": False, "http_code": status, "developer_message": message}}


# --- validation -----------------------------------------------------------------------------------


def shared_rejections(d: Dialect) -> list[tuple[str, dict[str, Any], int]]:
    """Rules both dialects enforce: (case, body, On-Prem code); Cloud answers 100 to each."""
    return [
        ("to-missing", message(d, drop=["to"]), 1008),
        ("recipient-type-not-individual", message(d, recipient_type="group"), 1002),
        ("type-object-missing", message(d, type="image"), 1008),
        ("text-not-an-object", message(d, text="hi"), 1009),
        ("text-body-missing", message(d, text={}), 1008),
        ("text-body-too-long", message(d, text={"body": "x" * 4097}), 1001),
        ("template-name-missing", message(d, **template(d, drop=["name"])), 1008),
        ("template-language-code-missing", message(d, **template(d, language={})), 1008),
        ("media-without-source", message(d, type="image", image={"caption": "c"}), 1008),
        (
            "media-with-both-sources",
            message(d, type="document", document={"id": "1", "link": LINK}),
            1008,
        ),
        ("caption-on-audio", message(d, type="audio", audio={"link": LINK, "caption": "c"}), 1010),
        (
            "caption-on-sticker",
            message(d, type="sticker", sticker={"id": "1", "caption": "c"}),
            1010,
        ),
        (
            "interactive-type-missing",
            message(d, type="interactive", interactive={"action": BUTTONS}),
            1008,
        ),
        (
            "interactive-action-missing",
            message(d, type="interactive", interactive={"type": "button"}),
            1008,
        ),
        ("contacts-not-a-list", message(d, type="contacts", contacts={}), 1009),
    ]


ONPREM_REJECTIONS = [
    ("to-not-digits", message("onprem", to="+4915112345678"), 1009),
    ("messaging-product-present", message("onprem", messaging_product="whatsapp"), 1010),
    ("callback-data-present", message("onprem", biz_opaque_callback_data="row-1"), 1010),
    ("type-reaction", message("onprem", type="reaction", reaction={"emoji": "+"}), 1009),
    ("preview-url-inside-text", message("onprem", text={"body": "hi", "preview_url": True}), 1010),
    (
        "template-namespace-missing",
        message("onprem", **template("onprem", drop=["namespace"])),
        2014,
    ),
]
CLOUD_REJECTIONS = [
    ("messaging-product-missing", message("cloud", drop=["messaging_product"])),
    ("messaging-product-not-whatsapp", message("cloud", messaging_product="sms")),
    ("preview-url-top-level", message("cloud", preview_url=True)),
    ("type-hsm", message("cloud", type="hsm", hsm={"namespace": NAMESPACE})),
    ("template-with-namespace", message("cloud", **template("cloud", namespace=NAMESPACE))),
    ("callback-data-too-long", message("cloud", biz_opaque_callback_data="x" * 513)),
]
REJECTIONS = [
    *(
        pytest.param(d, body, code if d == "onprem" else 100, id=f"{d}-{case}")
        for d in DIALECTS
        for case, body, code in shared_rejections(d)
    ),
    *(
        pytest.param("onprem", body, code, id=f"onprem-{case}")
        for case, body, code in ONPREM_REJECTIONS
    ),
    *(pytest.param("cloud", body, 100, id=f"cloud-{case}") for case, body in CLOUD_REJECTIONS),
]


@pytest.mark.parametrize(("dialect", "body", "code"), REJECTIONS)
async def test_invalid_send_is_rejected_in_the_dialects_shape(
    api: Api, dialect: Dialect, body: dict[str, Any], code: int
) -> None:
    reply = await api.send(dialect, body)

    assert_api_error(dialect, reply, code)
    [record] = api.sandbox.requests
    assert (record.status, record.message_id) == (400, None)


async def test_cloud_names_the_missing_messaging_product(api: Api) -> None:
    reply = await api.send("cloud", message("cloud", drop=["messaging_product"]))

    assert reply.body["error"]["message"] == "(#100) The parameter messaging_product is required."


def shared_acceptances(d: Dialect) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("type-defaults-to-text", message(d, drop=["type"])),
        ("recipient-type-individual", message(d, recipient_type="individual")),
        ("template", message(d, **template(d))),
        ("image-by-link", message(d, type="image", image={"link": LINK, "caption": "c"})),
        ("audio-by-id", message(d, type="audio", audio={"id": "f043afd0"})),
        ("video", message(d, type="video", video={"link": LINK})),
        ("document", message(d, type="document", document={"link": LINK, "filename": "a.pdf"})),
        ("sticker", message(d, type="sticker", sticker={"id": "1"})),
        ("location", message(d, type="location", location={"latitude": 52.5, "longitude": 13.4})),
        ("contacts", message(d, type="contacts", contacts=[{"name": {"formatted_name": "J"}}])),
        (
            "interactive",
            message(
                d,
                type="interactive",
                interactive={"type": "button", "body": {"text": "?"}, "action": BUTTONS},
            ),
        ),
    ]


ACCEPTANCES = [
    *(
        pytest.param(d, body, id=f"{d}-{case}")
        for d in DIALECTS
        for case, body in shared_acceptances(d)
    ),
    pytest.param("onprem", message("onprem", preview_url=True), id="onprem-preview-url-top-level"),
    pytest.param(
        "onprem",
        message("onprem", type="hsm", hsm={"namespace": NAMESPACE, "element_name": "x"}),
        id="onprem-hsm",
    ),
    pytest.param(
        "cloud",
        message("cloud", text={"body": "https://example.com", "preview_url": True}),
        id="cloud-preview-url-inside-text",
    ),
    pytest.param(
        "cloud",
        message("cloud", type="reaction", reaction={"message_id": "wamid.x", "emoji": "+"}),
        id="cloud-reaction",
    ),
    pytest.param("cloud", message("cloud", biz_opaque_callback_data="row-1"), id="cloud-callback"),
    pytest.param("cloud", message("cloud", to="+4915112345678"), id="cloud-to-with-plus"),
    pytest.param("onprem", message("onprem", text={"body": "x" * 4096}), id="onprem-longest-text"),
]


@pytest.mark.parametrize(("dialect", "body"), ACCEPTANCES)
async def test_valid_send_is_accepted(api: Api, dialect: Dialect, body: dict[str, Any]) -> None:
    reply = await api.send(dialect, body)

    assert reply.status == (201 if dialect == "onprem" else 200), reply.body


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("raw", [b"not json", b"[1]", b""], ids=["garbage", "array", "empty"])
async def test_body_that_is_not_a_json_object_is_rejected(
    api: Api, dialect: Dialect, raw: bytes
) -> None:
    reply = await api.send(dialect, raw)

    assert_api_error(dialect, reply, 1009 if dialect == "onprem" else 100)


# --- success and authentication -------------------------------------------------------------------


async def test_onprem_success_shape(api: Api) -> None:
    reply = await api.send("onprem", message("onprem"))

    assert reply.status == 201
    [accepted] = reply.body["messages"]
    assert reply.body == {"messages": [{"id": accepted["id"]}], "meta": META}
    assert ONPREM_ID.fullmatch(accepted["id"])


async def test_cloud_success_shape(api: Api) -> None:
    reply = await api.send("cloud", message("cloud"))

    assert reply.status == 200
    [accepted] = reply.body["messages"]
    assert reply.body == {
        "messaging_product": "whatsapp",
        "contacts": [{"input": TO, "wa_id": TO}],
        "messages": [{"id": accepted["id"]}],
    }
    assert CLOUD_ID.fullmatch(accepted["id"])


async def test_ids_are_unique_and_logged_in_arrival_order(api: Api) -> None:
    replies = await asyncio.gather(*(api.send(d, message(d)) for _ in range(20) for d in DIALECTS))

    ids = [reply.body["messages"][0]["id"] for reply in replies]
    assert len(set(ids)) == len(ids)
    records = api.sandbox.message_requests()
    assert [r.seq for r in records] == list(range(1, len(ids) + 1))
    assert sorted(r.message_id or "" for r in records) == sorted(ids)
    assert all(a.at <= b.at for a, b in itertools.pairwise(records))


async def test_record_describes_the_request(api: Api) -> None:
    body = message("cloud")
    reply = await api.send("cloud", body)

    [record] = api.sandbox.requests
    assert (record.seq, record.method, record.path) == (1, "POST", "/messages")
    assert (record.dialect, record.api_key_label, record.body) == ("cloud", "shop", body)
    assert (record.status, record.message_id) == (200, reply.body["messages"][0]["id"])
    assert record.received_at.utcoffset() is not None


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("key", [None, "key-wrong"], ids=["missing-key", "wrong-key"])
async def test_bad_api_key_is_refused_and_never_stored(
    api: Api, dialect: Dialect, key: str | None
) -> None:
    reply = await api.call("POST", PATH[dialect], message(dialect), key=key)

    assert reply.status == 401
    assert reply.body == gateway(401, "Invalid api_key")
    [record] = api.sandbox.requests
    assert (record.api_key_label, record.status, record.message_id) == (None, 401, None)
    assert b"key-" not in orjson.dumps(api.sandbox.requests)


# --- faults ---------------------------------------------------------------------------------------


async def test_latency_fault_delays_the_answer(api: Api) -> None:
    api.sandbox.faults.add(Fault("latency", delay=0.2))

    started = time.monotonic()
    reply = await api.send("onprem", message("onprem"))

    assert 0.2 <= time.monotonic() - started < 1.0
    assert reply.status == 201


async def test_global_latency_delays_every_send(start_sandbox: StartSandbox) -> None:
    api = await start_sandbox(latency=0.15)

    for dialect in DIALECTS:
        started = time.monotonic()
        await api.send(dialect, message(dialect))
        assert 0.15 <= time.monotonic() - started < 1.0


async def test_hang_times_the_client_out_yet_the_message_is_accepted(api: Api) -> None:
    api.sandbox.faults.add(Fault("hang", delay=0.3))

    with pytest.raises(TimeoutError):
        await api.send("onprem", message("onprem"), give_up_after=0.05)

    [record] = api.sandbox.requests
    assert (record.status, record.message_id) == (0, None)
    await eventually(lambda: api.sandbox.requests[0].message_id is not None)
    [record] = api.sandbox.requests
    assert record.status == 0
    assert ONPREM_ID.fullmatch(record.message_id or "")


@pytest.mark.parametrize(
    ("dialect", "status", "retry_after", "header", "expected"),
    [
        ("onprem", 429, 2.0, "2", {"errors": [{"title": "Too many requests"}]}),
        ("onprem", 503, 0.5, "0.5", None),
        ("cloud", 500, None, None, gateway(500, "Internal error")),
        ("onprem", 502, None, None, gateway(502, "WhatsApp for Business API not available")),
    ],
)
async def test_status_fault_answers_a_realistic_body(
    api: Api,
    dialect: Dialect,
    status: int,
    retry_after: float | None,
    header: str | None,
    expected: Any,
) -> None:
    api.sandbox.faults.add(Fault("status", status=status, retry_after=retry_after))

    reply = await api.send(dialect, message(dialect))

    assert reply.status == status
    assert reply.headers.get("Retry-After") == header
    if expected is None:
        assert reply.body["meta"]["http_code"] == status
        assert reply.body["meta"]["success"] is False
    else:
        assert reply.body == expected


async def test_cloud_429_is_a_graph_rate_limit_error(api: Api) -> None:
    api.sandbox.faults.add(Fault("status", status=429, retry_after=1))

    reply = await api.send("cloud", message("cloud"))

    assert_api_error("cloud", reply, 130429, status=429)
    assert reply.headers["Retry-After"] == "1"


@pytest.mark.parametrize(
    ("dialect", "code", "http_status"), [("cloud", 131026, 400), ("onprem", 1006, 404)]
)
async def test_error_code_fault_hits_only_its_recipients(
    api: Api, dialect: Dialect, code: int, http_status: int
) -> None:
    api.sandbox.faults.add(
        Fault("error_code", recipients=frozenset({TO}), code=code, http_status=http_status)
    )

    failed = await api.send(dialect, message(dialect))
    succeeded = await api.send(dialect, message(dialect, to=OTHER))

    assert_api_error(dialect, failed, code, status=http_status)
    assert succeeded.status in (200, 201)


async def test_fault_applies_only_times_times(api: Api) -> None:
    api.sandbox.faults.add(Fault("status", status=500, times=2))

    statuses = [(await api.send("onprem", message("onprem"))).status for _ in range(3)]

    assert statuses == [500, 500, 201]
    assert len(api.sandbox.faults) == 0


async def test_first_matching_fault_in_insertion_order_applies(api: Api) -> None:
    faults = api.sandbox.faults
    faults.add(Fault("error_code", recipients=frozenset({TO}), code=470, times=1))
    faults.add(Fault("status", status=503))

    first = await api.send("onprem", message("onprem"))
    second = await api.send("onprem", message("onprem"))
    other = await api.send("onprem", message("onprem", to=OTHER))

    assert_api_error("onprem", first, 470)
    assert (second.status, other.status) == (503, 503)


async def test_faults_apply_before_validation(api: Api) -> None:
    api.sandbox.faults.add(Fault("status", status=502))

    reply = await api.send("cloud", message("cloud", drop=["messaging_product"]))

    assert reply.status == 502


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_disconnect_drops_the_connection_after_recording(api: Api, dialect: Dialect) -> None:
    api.sandbox.faults.add(Fault("disconnect", times=1))

    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await api.send(dialect, message(dialect))
    retried = await api.send(dialect, message(dialect))

    first, second = api.sandbox.requests
    assert (first.status, first.message_id, first.body) == (0, None, message(dialect))
    assert second.status == retried.status


# --- webhook configuration ------------------------------------------------------------------------


async def test_webhook_config_is_stored_per_key(api: Api) -> None:
    config = {"url": "https://hooks.example.com/wa/s", "headers": {"Authorization": "Basic dTpw"}}

    stored = await api.call("POST", "/v1/configs/webhook", config, key=KEY["onprem"])
    fetched = await api.call("GET", "/v1/configs/webhook", key=KEY["onprem"])
    unset = await api.call("GET", "/v1/configs/webhook", key=KEY["cloud"])

    assert (stored.status, stored.body) == (200, config)
    assert (fetched.status, fetched.body) == (200, config)
    assert (unset.status, unset.body) == (200, {"url": None})
    assert [(r.dialect, r.api_key_label) for r in api.sandbox.requests] == [
        (None, "legacy")
    ] * 2 + [(None, "shop")]
    assert api.sandbox.message_requests() == []


async def test_webhook_config_without_headers_echoes_empty_headers(api: Api) -> None:
    reply = await api.call("POST", "/v1/configs/webhook", {"url": "http://x/h"}, key=KEY["cloud"])

    assert reply.body == {"url": "http://x/h", "headers": {}}


@pytest.mark.parametrize(
    ("method", "body", "key", "status"),
    [
        ("POST", {"headers": {}}, "key-shop", 400),
        ("POST", {"url": "http://x/h", "headers": ["nope"]}, "key-shop", 400),
        ("POST", {"url": "http://x/h"}, "key-wrong", 401),
        ("GET", None, None, 401),
    ],
    ids=["url-missing", "headers-not-object", "post-bad-key", "get-no-key"],
)
async def test_webhook_config_rejections(
    api: Api, method: str, body: Any, key: str | None, status: int
) -> None:
    reply = await api.call(method, "/v1/configs/webhook", body, key=key)

    assert reply.status == status
    assert reply.body["meta"]["http_code"] == status


# --- status notifications -------------------------------------------------------------------------


def assert_timestamp(status: Mapping[str, Any], delay: float, before: float, after: float) -> None:
    assert int(before + delay) <= int(status["timestamp"]) <= int(after + delay)


async def test_onprem_notifications_are_flat_and_carry_the_webhook_headers(
    api: Api, receiver: Receiver
) -> None:
    await api.set_webhook("onprem", receiver.url, Authorization="Basic dTpw")

    before = time.time()
    reply = await api.send("onprem", message("onprem"))
    after = time.time()
    await api.sandbox.wait_idle()

    message_id = reply.body["messages"][0]["id"]
    assert len(receiver.posts) == 3
    for (headers, body), status, delay in zip(
        receiver.posts, ("sent", "delivered", "read"), DELAYS, strict=True
    ):
        assert headers["Authorization"] == "Basic dTpw"
        assert headers["Content-Type"] == "application/json"
        [item] = body["statuses"]
        assert body == {
            "statuses": [
                {
                    "id": message_id,
                    "recipient_id": TO,
                    "status": status,
                    "timestamp": item["timestamp"],
                    "type": "message",
                }
            ]
        }
        assert_timestamp(item, delay, before, after)
    assert [post.outcome for post in api.sandbox.notifications_sent] == [200] * 3


async def test_cloud_notifications_use_the_meta_envelope_and_echo_callback_data(
    api: Api, receiver: Receiver
) -> None:
    await api.set_webhook("cloud", receiver.url)

    before = time.time()
    tagged = await api.send("cloud", message("cloud", biz_opaque_callback_data="row-42"))
    plain = await api.send("cloud", message("cloud", to=OTHER))
    after = time.time()
    await api.sandbox.wait_idle()

    statuses: dict[str, list[dict[str, Any]]] = {}
    for body in receiver.bodies():
        assert body["object"] == "whatsapp_business_account"
        [entry] = body["entry"]
        [change] = entry["changes"]
        assert change["field"] == "messages"
        value = change["value"]
        assert value["messaging_product"] == "whatsapp"
        assert set(value["metadata"]) == {"display_phone_number", "phone_number_id"}
        [item] = value["statuses"]
        statuses.setdefault(item["id"], []).append(item)
    tagged_id, plain_id = (reply.body["messages"][0]["id"] for reply in (tagged, plain))
    assert set(statuses) == {tagged_id, plain_id}
    for item, delay in zip(statuses[tagged_id], DELAYS, strict=True):
        assert (item["recipient_id"], item["biz_opaque_callback_data"]) == (TO, "row-42")
        assert_timestamp(item, delay, before, after)
    assert [item["status"] for item in statuses[plain_id]] == ["sent", "delivered", "read"]
    assert all("biz_opaque_callback_data" not in item for item in statuses[plain_id])


async def test_reorder_shuffles_delivery_but_keeps_each_timestamp(
    start_sandbox: StartSandbox, receiver: Receiver
) -> None:
    api = await start_sandbox(reorder=True, seed=7, status_delays=(0.01, 0.04, 0.07))
    await api.set_webhook("onprem", receiver.url)

    for _ in range(6):
        await api.send("onprem", message("onprem"))
    await api.sandbox.wait_idle()

    orders: dict[str, list[str]] = {}
    timestamps: dict[str, dict[str, int]] = {}
    for body in receiver.bodies():
        [item] = body["statuses"]
        orders.setdefault(item["id"], []).append(item["status"])
        timestamps.setdefault(item["id"], {})[item["status"]] = int(item["timestamp"])
    assert all(sorted(order) == ["delivered", "read", "sent"] for order in orders.values())
    assert any(order != ["sent", "delivered", "read"] for order in orders.values())
    assert all(t["sent"] <= t["delivered"] <= t["read"] for t in timestamps.values())


async def test_duplicate_posts_every_notification_twice(
    start_sandbox: StartSandbox, receiver: Receiver
) -> None:
    api = await start_sandbox(duplicate=True)
    await api.set_webhook("cloud", receiver.url)

    await api.send("cloud", message("cloud"))
    await api.sandbox.wait_idle()

    bodies = receiver.bodies()
    assert len(bodies) == 6
    assert bodies[0::2] == bodies[1::2]


async def test_failed_notification_is_retried_until_accepted(api: Api, receiver: Receiver) -> None:
    receiver.fail_first = 2
    await api.set_webhook("onprem", receiver.url)

    await api.send("onprem", message("onprem"))
    await api.sandbox.wait_idle()

    outcomes = Counter(post.outcome for post in api.sandbox.notifications_sent)
    assert outcomes == {500: 2, 200: 3}
    delivered = [p.body for p in api.sandbox.notifications_sent if p.outcome == 200]
    assert sorted(b["statuses"][0]["status"] for b in delivered) == ["delivered", "read", "sent"]


async def test_unreachable_webhook_is_given_up_after_a_few_attempts(api: Api) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    await api.set_webhook("cloud", url)

    await api.send("cloud", message("cloud"))
    await api.sandbox.wait_idle()

    posts = api.sandbox.notifications_sent
    assert len(posts) == 3 * ATTEMPTS
    assert {(post.url, post.outcome) for post in posts} == {(url, "ClientConnectorError")}


async def test_no_notifications_without_webhook_or_when_disabled(
    start_sandbox: StartSandbox, receiver: Receiver
) -> None:
    quiet = await start_sandbox(statuses=False)
    await quiet.set_webhook("onprem", receiver.url)

    await quiet.send("onprem", message("onprem"))
    await quiet.send("cloud", message("cloud"))  # no webhook for this key
    await quiet.sandbox.wait_idle()

    assert receiver.posts == []
    assert quiet.sandbox.notifications_sent == []


async def test_notifications_never_delay_the_answer_and_stop_cancels_them(
    start_sandbox: StartSandbox, receiver: Receiver
) -> None:
    api = await start_sandbox(status_delays=(5.0, 5.0, 5.0))
    await api.set_webhook("onprem", receiver.url)

    started = time.monotonic()
    await api.send("onprem", message("onprem"))
    await api.sandbox.stop()

    assert time.monotonic() - started < 1.0
    assert receiver.posts == []


# --- control endpoints and serve ------------------------------------------------------------------


async def test_requests_log_is_served_as_json(api: Api) -> None:
    reply = await api.send("onprem", message("onprem"))

    log = await api.call("GET", "/sandbox/requests")

    [entry] = log.body
    assert entry["seq"] == 1
    assert datetime.fromisoformat(entry["received_at"]).utcoffset() is not None
    assert (entry["path"], entry["dialect"], entry["api_key_label"]) == (
        "/v1/messages",
        "onprem",
        "legacy",
    )
    assert (entry["status"], entry["message_id"]) == (201, reply.body["messages"][0]["id"])
    assert entry["body"] == message("onprem")


async def test_faults_can_be_scripted_over_http(api: Api) -> None:
    fault = {"kind": "error_code", "code": 470, "recipients": [TO], "times": 1}

    added = await api.call("POST", "/sandbox/faults", fault)
    faulted = await api.send("onprem", message("onprem"))
    healthy = await api.send("onprem", message("onprem"))

    assert added.status == 204
    assert_api_error("onprem", faulted, 470)
    assert healthy.status == 201


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"kind": "bogus"}', b'{"kind": "status", "nope": 1}'],
    ids=["garbage", "array", "unknown-kind", "unknown-field"],
)
async def test_invalid_scripted_fault_is_refused(api: Api, body: bytes) -> None:
    reply = await api.call("POST", "/sandbox/faults", body)

    assert reply.status == 400
    assert len(api.sandbox.faults) == 0


async def test_faults_can_be_cleared_and_everything_reset_over_http(api: Api) -> None:
    api.sandbox.faults.add(Fault("status", status=503))
    await api.send("onprem", message("onprem"))

    cleared = await api.call("DELETE", "/sandbox/faults")
    after_clear = await api.send("onprem", message("onprem"))
    api.sandbox.faults.add(Fault("status", status=503))
    reset = await api.call("POST", "/sandbox/reset")

    assert (cleared.status, after_clear.status, reset.status) == (204, 201, 204)
    assert api.sandbox.requests == []
    assert len(api.sandbox.faults) == 0
    assert (await api.send("onprem", message("onprem"))).status == 201
    assert [r.seq for r in api.sandbox.requests] == [3]


async def test_serve_runs_until_stop_is_set() -> None:
    port = free_port()
    stop = asyncio.Event()
    server = asyncio.create_task(
        serve(
            "127.0.0.1",
            port,
            KEYS,
            latency=0.0,
            status_delays=DELAYS,
            reorder=False,
            duplicate=False,
            stop=stop,
        )
    )
    url = f"http://127.0.0.1:{port}/messages"
    body = orjson.dumps(message("cloud"))
    async with aiohttp.ClientSession(headers={"D360-API-KEY": KEY["cloud"]}) as http:
        for _ in range(200):
            try:
                async with http.post(url, data=body) as response:
                    assert response.status == 200
                    break
            except aiohttp.ClientConnectorError:
                await asyncio.sleep(0.01)
        else:
            pytest.fail("serve() never started listening")

        stop.set()
        await asyncio.wait_for(server, 2.0)
        with pytest.raises(aiohttp.ClientConnectorError):
            await http.post(url, data=body)
