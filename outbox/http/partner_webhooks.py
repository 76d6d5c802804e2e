"""`POST /webhooks`: partner- and WABA-level webhooks, routed to their channels and stored.

360dialog posts a partner's events (and a WABA webhook its account's events) to one URL, not one
per number. Each body is checked, split by channel (`outbox.domain.routing`) and stored, one row
per channel, answered 200 only once every part is committed; a part no channel claims is stored
under `(unrouted)` and counted, never refused, so 360dialog does not retry it for a week.

Who may post: with `[partner] webhook_secret_*` set, only a body signed with it
(`x-360dialog-signature`, `outbox.domain.signature`); a missing, malformed or wrong signature is
401 and counted. Without a secret, the Basic-auth credentials of a configured channel (what
`outbox set-webhook --waba` registers): the parts routed to that channel are stored as
authenticated, any others as unauthenticated, so one channel's credentials cannot vouch for
another channel's account events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

import orjson
import structlog
from aiohttp import web

from outbox.config import ChannelConfig, Secret
from outbox.domain import routing, signature
from outbox.http.guard import WebhookGuard
from outbox.http.partner_index import PartnerIndex
from outbox.http.webhooks import (
    WebhookObserver,
    WebhookSink,
    decode_body,
    read_raw,
    reject,
    store_failed,
    unauthorised,
)

log = structlog.get_logger("outbox.webhooks")

LABEL = "(partner)"  # the `channel` label of answers that no single channel owns


class PartnerObserver(WebhookObserver, Protocol):
    def signature_refused(self, verdict: str) -> None: ...

    def unrouted(self, missed: str) -> None: ...


def add_partner_route(
    app: web.Application,
    channels: Mapping[str, ChannelConfig],
    secret: Secret | None,
    sink: WebhookSink,
    observer: PartnerObserver,
    guard: WebhookGuard,
) -> None:
    index = PartnerIndex(channels)

    async def receive(request: web.Request, source: str) -> web.Response:
        raw = await read_raw(request, observer, LABEL, guard)
        if isinstance(raw, web.Response):
            return raw
        partners = index.current()
        vouched: frozenset[str] | None  # None: every part is authenticated (signed)
        if secret is not None:
            verdict = signature.verify(
                secret.reveal().encode(), raw, request.headers.get(signature.HEADER)
            )
            if verdict is not signature.Verdict.VALID:
                # The header's value is the attacker's: only what was wrong with it is logged.
                observer.signature_refused(verdict.value)
                log.warning("outbox.webhook.bad_signature", verdict=verdict.value)
                guard.failed(source)
                return reject(observer, LABEL, "bad_signature", 401, peer=source)
            vouched = None
        else:
            vouched = partners.vouched(request.headers.get("Authorization"))
            if not vouched:
                guard.failed(source)
                return unauthorised(reject(observer, LABEL, "unauthorised", 401, peer=source))
        decoded = decode_body(raw, observer, LABEL)
        if isinstance(decoded, web.Response):
            return decoded
        text, body = decoded
        parts = routing.route(body, partners.directory)
        try:
            # Queued together, so the store writes them in one INSERT and one commit.
            stored = await asyncio.gather(
                *(
                    sink.store_webhook(
                        part.channel,
                        text if len(parts) == 1 else orjson.dumps(part.body).decode(),
                        authenticated=vouched is None or part.channel in vouched,
                    )
                    for part in parts
                )
            )
        except Exception as exc:
            return store_failed(observer, LABEL, exc)
        for part in parts:
            observer.webhook(part.channel, "stored")
            if part.missed is not None:
                observer.unrouted(part.missed)
                log.warning("outbox.webhook.unrouted", missed=part.missed)
        return web.json_response({"stored": list(stored)})

    app.router.add_post("/webhooks", guard.guarded(receive))
