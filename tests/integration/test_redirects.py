"""Issue 19 §3: no request that carries a credential follows a redirect.

The "API" answers every request with a 307 to a second loopback server on another port (another
origin), which records whatever reaches it. It must receive nothing: no `D360-API-KEY`, no Basic
header, no message body; the send is not taken as accepted, and `set-webhook` says why.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp import web

from outbox.config import ChannelConfig, PartnerConfig, Secret
from outbox.domain import retry
from outbox.domain.models import Dialect, SentAs
from outbox.domain.request import ApiRequest
from outbox.domain.response import Rejected
from outbox.http.api_client import ApiClient, create_session
from outbox.http.partner_client import NumberClient, PartnerClient
from outbox.http.partner_client import create_session as partner_session
from outbox.ports.partner import PartnerApiError
from tests.support import (
    config_toml,
    enqueue_in_window,
    fetch,
    loopback_site,
    outbox_command,
    running,
    settings_for,
    wait_until,
)

KEY = "SECRETKEY-should-stay-home"


@dataclass
class Servers:
    redirecting: str  # base URL of the server that answers 307
    trap: str  # base URL of the server the 307 points at
    seen: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)  # paths the redirecting server was asked


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    holder: list[Servers] = []

    async def record(request: web.Request) -> web.Response:
        body = await request.read()
        holder[0].seen.append((request.method, request.path, dict(request.headers), body))
        return web.json_response({"messages": [{"id": "wamid.from-attacker"}]})

    async def redirect(request: web.Request) -> web.Response:
        holder[0].asked.append(request.path)
        raise web.HTTPTemporaryRedirect(f"{holder[0].trap}{request.path_qs}")

    trap_app = web.Application()
    trap_app.router.add_route("*", "/{tail:.*}", record)
    api_app = web.Application()
    api_app.router.add_route("*", "/{tail:.*}", redirect)
    trap_runner, trap = await loopback_site(trap_app)
    api_runner, api = await loopback_site(api_app)
    holder.append(Servers(api, trap))
    try:
        yield holder[0]
    finally:
        await api_runner.cleanup()
        await trap_runner.cleanup()


def _channel(base_url: str) -> ChannelConfig:
    return ChannelConfig(
        "cloud",
        Dialect.CLOUD,
        base_url,
        Secret(KEY),
        webhook_username=Secret("hook-user"),
        webhook_password=Secret("hook-password-that-is-long-enough"),
    )


async def test_a_send_is_not_redirected_and_is_a_channel_error(servers: Servers) -> None:
    request = ApiRequest("/messages", {"to": "4915112345678", "type": "text"}, SentAs.FREEFORM)
    async with create_session(4, timedelta(seconds=5)) as session:
        outcome = await ApiClient(session).send(_channel(servers.redirecting), request)
    assert servers.asked == ["/messages"]
    assert servers.seen == []
    assert isinstance(outcome, Rejected)
    assert outcome.http_status == 307
    assert "redirect" in outcome.title
    assert servers.trap in (outcome.detail or "")
    # Not the message's fault, and every row of the channel would meet it: the breaker pauses
    # the channel and the row keeps its attempt.
    assert retry.classify(outcome) is retry.ErrorClass.CHANNEL


async def test_set_webhook_is_not_redirected(servers: Servers) -> None:
    async with create_session(1, timedelta(seconds=5)) as session:
        answer = await ApiClient(session).set_webhook(
            _channel(servers.redirecting), "https://hooks.example.com/webhooks/cloud"
        )
    assert answer.status == 307
    assert servers.seen == []


async def test_partner_and_number_clients_are_not_redirected(servers: Servers) -> None:
    partner = PartnerConfig("abcPA", Secret(KEY), base_url=servers.redirecting)
    async with partner_session(timedelta(seconds=5)) as session:
        with pytest.raises(PartnerApiError, match="redirect"):
            await PartnerClient(session, partner).create_api_key("ch1")
        with pytest.raises(PartnerApiError, match="redirect"):
            await NumberClient(session).set_webhook(_channel(servers.redirecting), "https://x/y")
    assert servers.seen == []


async def test_the_daemon_does_not_charge_or_accept_a_redirected_send(
    db_url: str, servers: Servers
) -> None:
    settings = settings_for(db_url, servers.redirecting)
    await enqueue_in_window(db_url, 1, channel="cloud")
    async with running(settings):

        async def answered() -> bool:
            rows = await fetch(db_url, "SELECT error_code FROM outbox.messages")
            return bool(rows[0]["error_code"] == "http_307")

        await wait_until(answered)
    [row] = await fetch(db_url, "SELECT state, wamid, attempts FROM outbox.messages")
    assert row["state"] == "queued"
    assert row["wamid"] is None
    assert row["attempts"] == 0
    assert servers.seen == []


async def test_set_webhook_command_prints_the_refusal(
    db_url: str, servers: Servers, tmp_path: Path
) -> None:
    config = tmp_path / "outbox.toml"
    config.write_text(config_toml(db_url, servers.redirecting, cloud_hook_auth=True))
    code, out, err = await outbox_command(
        "set-webhook",
        "cloud",
        "https://hooks.example.com/webhooks/cloud",
        "--config",
        str(config),
        env={"TEST_HOOK_USER": "hook-user", "TEST_HOOK_PASS": "hook-password-that-is-long-enough"},
    )
    assert code == 1, (out, err)
    assert "redirect" in err
    assert servers.trap in err
    assert servers.seen == []
