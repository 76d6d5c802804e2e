"""`outbox set-webhook` prints the API's answer: no credential may survive in it, wherever the
API (or a proxy's error page) echoes it."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from outbox.cli.masking import masked_answer
from outbox.config import ChannelConfig, Secret
from outbox.domain.models import Dialect

USER, PASSWORD, KEY = "hook-user", "s3cret-hook-pass", "the-api-key-123"
TOKEN = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
CHANNEL = ChannelConfig(
    "cloud",
    Dialect.CLOUD,
    "http://127.0.0.1:9",
    Secret(KEY),
    webhook_username=Secret(USER),
    webhook_password=Secret(PASSWORD),
)
HEADERS = {"Authorization": f"Basic {TOKEN}"}


@pytest.mark.parametrize(
    "answer",
    [
        {"url": "https://x/webhooks/cloud", "headers": HEADERS},
        {"data": {"webhook": {"url": "https://x", "headers": HEADERS}}},
        {"webhooks": [{"url": "https://x", "headers": HEADERS}]},
        {"error": {"message": f"bad request: headers={HEADERS}", "request": {"headers": HEADERS}}},
        {"config": {"authorization": f"Basic {TOKEN}"}},
        {"echo": f"password was {PASSWORD}", "key": f"D360-API-KEY: {KEY}"},
        {f"Basic {TOKEN}": "a secret as a key"},
        f"<html>502: upstream said Authorization: Basic {TOKEN}</html>",
        [{"headers": {"X-Other": "Basic " + TOKEN}}],
    ],
    ids=[
        "top-level",
        "nested",
        "in-a-list",
        "echoed-request-in-an-error",
        "lower-case-key",
        "raw-values-in-text",
        "as-a-key",
        "text-body",
        "list-body",
    ],
)
def test_no_credential_survives_anywhere_in_the_answer(answer: Any) -> None:
    shown = json.dumps(masked_answer(answer, CHANNEL))
    for secret in (TOKEN, PASSWORD, KEY, f"{USER}:{PASSWORD}"):
        assert secret not in shown
    assert "********" in shown


def test_everything_else_is_kept() -> None:
    answer = {"url": "https://x/webhooks/cloud", "headers": HEADERS, "meta": {"n": 1, "ok": True}}
    assert masked_answer(answer, CHANNEL) == {
        "url": "https://x/webhooks/cloud",
        "headers": {"Authorization": "********"},
        "meta": {"n": 1, "ok": True},
    }
