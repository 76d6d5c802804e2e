"""Logs, command output, metrics and the database never show a credential; logs are structured.

One module-scoped run drives the real daemon in-process (sender, reconciler, web) against the
sandbox with distinctive secrets: sends accepted on a Cloud and an On-Premise channel, retried and
final failures, a channel whose key the API refuses (it pauses), webhooks with wrong, missing and
right Basic auth, and `outbox set-webhook` as a subprocess. The tests then read what it left
behind. Formats and standard-library lines are checked on their own, without a daemon.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import io
import json
import logging
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
import structlog

# The lazy proxy behind every module-level `structlog.get_logger()`; only its type is needed, to
# find the proxies that cached a previous configuration.
from structlog._config import BoundLoggerLazyProxy

from outbox import app, logconfig
from outbox.config import Settings
from outbox.config_loader import load_settings
from outbox.sandbox import Fault, Sandbox
from tests.support import NAMESPACE, fetch, insert, run_process, running, wait_until

CLOUD_KEY = "k3y-S3CRET-api-0042"
ONPREM_KEY = "k3y-S3CRET-onprem-0043"
REVOKED_KEY = "k3y-S3CRET-revoked-0044"  # unknown to the sandbox: every request gets a 401
HOOK_USER = "hookuser-77"
HOOK_PASSWORD = "p4ss-S3CRET-hook-99"
SECRETS = (CLOUD_KEY, ONPREM_KEY, REVOKED_KEY, HOOK_USER, HOOK_PASSWORD)
# The part every secret but the user name shares: a truncated or partly masked key still shows it.
MARKER = "S3CRET"


def _b64_forms(value: str) -> list[str]:
    raw = value.encode()
    return [base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()]


# What a Basic-auth header or a careless encoder would put in a log.
ENCODED = [
    *_b64_forms(f"{HOOK_USER}:{HOOK_PASSWORD}"),
    *(form for secret in SECRETS for form in _b64_forms(secret)),
]

SANDBOX_KEYS = {CLOUD_KEY: "cloud", ONPREM_KEY: "onprem"}
ENV = {
    "LOGTEST_CLOUD_KEY": CLOUD_KEY,
    "LOGTEST_ONPREM_KEY": ONPREM_KEY,
    "LOGTEST_HOOK_USER": HOOK_USER,
    "LOGTEST_HOOK_PASS": HOOK_PASSWORD,
}

# Recipients, one per case; sandbox faults are scripted per recipient.
CLOUD_OK, ONPREM_OK = "4915100000101", "4915100000102"
RETRIED_ONCE = "4915100000103"  # Cloud: a 503, then accepted
GIVES_UP = "4915100000104"  # On-Premise: 503 until max_attempts (2) is used up
PERMANENT = "4915100000105"  # Cloud: 131026, failed at once
ON_REVOKED = "4915100000106"  # the channel whose key the API refuses
EXPIRES_QUEUED = "4915100000107"  # expires while waiting for its send_after
UNCONFIGURED = "4915100000108"  # a channel nobody is configured for

FINAL_EVENTS = {"outbox.send.failed", "outbox.channel.paused"}


def text(body: str) -> dict[str, Any]:
    return {"type": "text", "text": {"body": body}}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ---------------------------------------------------------------- finding secrets in text


def _base64_decodings(text: str) -> Iterator[str]:
    """Every run of base64 characters decoded, at each of the four alignments, in both alphabets:
    a secret encoded with any prefix (`intruder:<password>`) still shows up."""
    for token in re.findall(r"[A-Za-z0-9+/_-]{8,}", text):
        for start in range(4):
            part = token[start:]
            part = part[: len(part) - len(part) % 4]
            for altchars in (None, b"-_"):
                try:
                    decoded = base64.b64decode(part, altchars=altchars)
                except (binascii.Error, ValueError):
                    continue
                yield decoded.decode("utf-8", errors="ignore")


def leaks(text: str) -> list[str]:
    """Which secrets `text` shows: in any letter case, base64-encoded, or as the shared marker."""
    lowered = text.lower()
    found = [s for s in (*SECRETS, *ENCODED) if s.lower() in lowered]
    if MARKER.lower() in lowered:
        found.append(f"marker {MARKER}")
    for decoded in _base64_decodings(text):
        found += [f"base64 of {s}" for s in SECRETS if s.lower() in decoded.lower()]
    return sorted(set(found))


def test_the_leak_finder_finds_what_it_must() -> None:
    """The assertions below are only as good as this finder, so it gets its own test."""
    assert leaks("nothing to see") == []
    assert leaks(f"key={CLOUD_KEY.upper()}")
    assert leaks("partly masked k3y-s3cret-…")
    assert leaks(f'"Authorization": "{basic(HOOK_USER, HOOK_PASSWORD)}"')
    assert leaks(basic("intruder", HOOK_PASSWORD))
    assert leaks("x" + base64.urlsafe_b64encode(HOOK_USER.encode()).decode())


# ---------------------------------------------------------------- log capture


def _forget_cached_loggers() -> None:
    """`cache_logger_on_first_use` pins each module-level logger to the stream it first wrote
    to; without this, a logger used by an earlier test would never reach our stream."""
    for name, module in list(sys.modules.items()):
        if name == "outbox" or name.startswith("outbox."):
            for value in list(vars(module).values()):
                if isinstance(value, BoundLoggerLazyProxy):
                    value.__dict__.pop("bind", None)


@contextmanager
def logs_into(stream: TextIO, level: str, fmt: str) -> Iterator[None]:
    """Logging as `outbox.logconfig` sets it up, into `stream`; everything restored afterwards
    so that later tests do not write into this stream."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, root_level = list(root.handlers), root.level
    _forget_cached_loggers()
    logconfig.configure(level, fmt, stream=stream)
    try:
        yield
    finally:
        structlog.configure(**saved)
        _forget_cached_loggers()
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(root_level)


# ---------------------------------------------------------------- the module's one daemon run


@dataclass(frozen=True)
class Capture:
    log: str
    cli: list[tuple[int, str, str]]  # (exit code, stdout, stderr) of set-webhook cloud, revoked
    metrics: str
    database: dict[str, str]  # table -> every row as text
    settings: Settings
    ids: dict[str, int]  # recipient -> message id
    rows: dict[int, asyncpg.Record]
    webhook_answers: dict[str, int]

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.splitlines()]

    def about(self, recipient: str) -> list[dict[str, Any]]:
        """The lines about one message, in order."""
        message_id = self.ids[recipient]
        return [r for r in self.records() if r.get("message_id") == message_id]


def _config_toml(db_url: str, base_url: str, revoked_key_file: Path) -> str:
    return f"""
database_url = {json.dumps(db_url)}
log_level = "debug"
log_format = "json"

[http]
host = "127.0.0.1"
port = 0

[sender]
poll_interval = 0.05
backoff_base = 0.05
max_attempts = 2
maintenance_interval = 0.1
unknown_channel_grace = 0.01
breaker_cooldown = 300  # the paused channel sends no probe, however slow the machine

[[channels]]
id = "cloud"
dialect = "cloud"
base_url = {json.dumps(base_url)}
api_key_env = "LOGTEST_CLOUD_KEY"
webhook_username_env = "LOGTEST_HOOK_USER"
webhook_password_env = "LOGTEST_HOOK_PASS"
rate_per_second = 5000

[[channels]]
id = "onprem"
dialect = "onprem"
base_url = {json.dumps(base_url)}
api_key_env = "LOGTEST_ONPREM_KEY"
namespace = "{NAMESPACE}"
rate_per_second = 5000
webhook_auth = "none"

[[channels]]
id = "revoked"
dialect = "cloud"
base_url = {json.dumps(base_url)}
api_key_file = {json.dumps(str(revoked_key_file))}
rate_per_second = 5000
webhook_auth = "none"
"""


@pytest.fixture(scope="module")
async def module_db_url(pg_server: Any, template_url: str) -> AsyncIterator[str]:
    """A fresh copy of the migrated template for this module's single daemon run."""
    admin = pg_server.get_uri("postgres")
    template = urlsplit(template_url).path.lstrip("/")
    name = f"logs_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(admin)
    try:
        await connection.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    finally:
        await connection.close()
    yield pg_server.get_uri(name)
    connection = await asyncpg.connect(admin)
    try:
        await connection.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await connection.close()


async def _cli(*args: str) -> tuple[int, str, str]:
    return await run_process(sys.executable, "-m", "outbox", *args, env={**os.environ, **ENV})


async def _post_webhook(url: str, auth: str | None) -> int:
    headers = {"Content-Type": "application/json", **({"Authorization": auth} if auth else {})}
    body = {"object": "whatsapp_business_account", "entry": []}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers) as response,
    ):
        await response.read()
        return response.status


async def _get(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return await response.text()


async def _dump(db_url: str) -> dict[str, str]:
    tables = await fetch(
        db_url,
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'outbox' AND table_type = 'BASE TABLE' ORDER BY table_name",
    )
    dump = {}
    for (table,) in tables:
        rows = await fetch(db_url, f'SELECT t::text FROM outbox."{table}" AS t')
        dump[table] = "\n".join(r[0] for r in rows)
    return dump


async def _insert_all(db_url: str) -> dict[str, int]:
    now = datetime.now(UTC)
    return {
        CLOUD_OK: await insert(db_url, "cloud", CLOUD_OK, text("hi")),
        ONPREM_OK: await insert(db_url, "onprem", ONPREM_OK, text("hi")),
        RETRIED_ONCE: await insert(db_url, "cloud", RETRIED_ONCE, text("hi")),
        GIVES_UP: await insert(db_url, "onprem", GIVES_UP, text("hi")),
        PERMANENT: await insert(db_url, "cloud", PERMANENT, text("hi")),
        ON_REVOKED: await insert(db_url, "revoked", ON_REVOKED, text("hi")),
        "12": await insert(db_url, "onprem", "12", text("hi")),  # invalid recipient
        EXPIRES_QUEUED: await insert(
            db_url,
            "cloud",
            EXPIRES_QUEUED,
            text("hi"),
            send_after=now + timedelta(minutes=5),
            expires_at=now + timedelta(milliseconds=300),
        ),
        UNCONFIGURED: await insert(db_url, "nowhere", UNCONFIGURED, text("hi")),
    }


EXPECTED_STATES = {
    CLOUD_OK: {"read"},  # its statuses came back through the receiver with the right password
    ONPREM_OK: {"accepted"},
    RETRIED_ONCE: {"accepted", "sent", "delivered", "read"},
    GIVES_UP: {"failed"},
    PERMANENT: {"failed"},
    ON_REVOKED: {"queued"},
    "12": {"failed"},
    EXPIRES_QUEUED: {"expired"},
    UNCONFIGURED: {"failed"},
}


async def _drive(settings: Settings, config: Path, db_url: str) -> Capture:
    async with running(settings, roles={"web", "sender", "reconciler"}) as started:
        receiver = f"http://127.0.0.1:{started.http_port}"
        # The Cloud channel's statuses then arrive with the Basic-auth header set-webhook sent.
        cli = list(
            await asyncio.gather(
                _cli("set-webhook", "cloud", f"{receiver}/webhooks/cloud", "--config", str(config)),
                _cli(
                    "set-webhook",
                    "revoked",
                    f"{receiver}/webhooks/revoked",
                    "--config",
                    str(config),
                ),
            )
        )
        ids = await _insert_all(db_url)
        hook = f"{receiver}/webhooks/cloud"
        webhook_answers = {
            "wrong password": await _post_webhook(hook, basic(HOOK_USER, "not-the-password")),
            "wrong user": await _post_webhook(hook, basic("intruder", HOOK_PASSWORD)),
            "no auth": await _post_webhook(hook, None),
            "not base64": await _post_webhook(hook, f"Basic {HOOK_USER}:{HOOK_PASSWORD}"),
            "bearer": await _post_webhook(hook, f"Bearer {HOOK_PASSWORD}"),
            "right": await _post_webhook(hook, basic(HOOK_USER, HOOK_PASSWORD)),
        }

        async def settled() -> bool:
            states = await fetch(db_url, "SELECT id, state FROM outbox.messages")
            by_id = {r["id"]: r["state"] for r in states}
            paused = await fetch(
                db_url,
                "SELECT 1 FROM outbox.channel_state "
                "WHERE channel = 'revoked' AND paused_until IS NOT NULL",
            )
            return bool(paused) and all(
                by_id[ids[recipient]] in wanted for recipient, wanted in EXPECTED_STATES.items()
            )

        await wait_until(settled, within=30)
        metrics = await _get(f"{receiver}/metrics")
    rows = {r["id"]: r for r in await fetch(db_url, "SELECT * FROM outbox.messages")}
    return Capture("", cli, metrics, await _dump(db_url), settings, ids, rows, webhook_answers)


@pytest.fixture(scope="module")
async def capture(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Capture:
    tmp = tmp_path_factory.mktemp("logs")
    revoked_key_file = tmp / "revoked.key"
    revoked_key_file.write_text(REVOKED_KEY + "\n")
    api = Sandbox(SANDBOX_KEYS, status_delays=(0.01, 0.02, 0.03))
    base_url = await api.start()
    api.faults.add(Fault("status", status=503, times=1, recipients=frozenset({RETRIED_ONCE})))
    api.faults.add(Fault("status", status=503, recipients=frozenset({GIVES_UP})))
    api.faults.add(
        Fault("error_code", code=131026, http_status=400, recipients=frozenset({PERMANENT}))
    )
    try:
        config = tmp / "outbox.toml"
        config.write_text(_config_toml(module_db_url, base_url, revoked_key_file))
        settings = load_settings(config, environ=ENV)
        stream = io.StringIO()
        with logs_into(stream, "debug", "json"):
            result = await _drive(settings, config, module_db_url)
    finally:
        await api.stop()
    return dataclasses.replace(result, log=stream.getvalue())


# ---------------------------------------------------------------- 1. no secret anywhere


def test_no_secret_in_the_logs(capture: Capture) -> None:
    assert capture.webhook_answers == {
        "wrong password": 401,
        "wrong user": 401,
        "no auth": 401,
        "not base64": 401,
        "bearer": 401,
        "right": 200,
    }
    records = capture.records()
    events = {(r["event"], r.get("channel")) for r in records}
    # The capture saw the whole run, so an empty or partial log cannot pass for a clean one.
    assert {
        ("outbox.started", None),
        ("outbox.send.accepted", "cloud"),
        ("outbox.send.accepted", "onprem"),
        ("outbox.channel.paused", "revoked"),
        ("outbox.stopped", None),
    } <= events
    rejected = [r for r in records if r["event"] == "outbox.webhook.rejected"]
    assert len(rejected) == 5
    assert leaks(capture.log) == []


def test_no_secret_in_set_webhook_output(capture: Capture) -> None:
    (code, out, err), (revoked_code, revoked_out, revoked_err) = capture.cli
    assert code == 0, err
    assert '"Authorization": "********"' in out
    assert revoked_code == 1
    assert "HTTP 401" in revoked_err
    assert leaks(out + err + revoked_out + revoked_err) == []


def test_no_secret_in_metrics(capture: Capture) -> None:
    assert 'outbox_webhooks_total{channel="cloud",outcome="unauthorised"} 5.0' in capture.metrics
    assert 'outbox_channel_paused{channel="revoked"} 1.0' in capture.metrics
    assert leaks(capture.metrics) == []


def test_no_secret_in_the_database(capture: Capture) -> None:
    dump = capture.database
    assert {"webhook_events", "messages", "channel_state"} <= dump.keys()
    assert "whatsapp_business_account" in dump["webhook_events"]
    assert "Invalid api_key" in dump["channel_state"]
    assert str(capture.ids[CLOUD_OK]) in dump["messages"]
    assert {table: leaks(rows) for table, rows in dump.items() if leaks(rows)} == {}


def test_settings_and_channels_never_show_secrets(capture: Capture) -> None:
    settings = capture.settings
    cloud = settings.channel("cloud")
    assert cloud is not None
    assert cloud.webhook_password is not None
    # The secrets did load: the masking is not hiding an empty value.
    assert (cloud.api_key.reveal(), cloud.webhook_password.reveal()) == (CLOUD_KEY, HOOK_PASSWORD)
    shown = [repr(settings), str(settings), repr(dataclasses.asdict(settings))]
    for channel in settings.channels:
        secrets = [channel.api_key, channel.webhook_username, channel.webhook_password]
        shown += [repr(channel), str(channel), f"{channel}", *(f"{s} {s!r}" for s in secrets)]
    # A settings object handed to a logger by mistake goes through the JSON renderer, which
    # serialises dataclasses field by field rather than through repr.
    stream = io.StringIO()
    with logs_into(stream, "info", "json"):
        structlog.get_logger("outbox.test").info(
            "outbox.test.settings", settings=settings, channel=cloud
        )
    shown.append(stream.getvalue())
    assert "********" in stream.getvalue()
    assert leaks("\n".join(shown)) == []


# ---------------------------------------------------------------- 2. structure


def test_every_line_is_json_with_event_level_and_timestamp(capture: Capture) -> None:
    lines = capture.log.splitlines()
    assert len(lines) >= 15
    for line in lines:
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert {"event", "level", "timestamp"} <= record.keys(), line
        assert record["level"] in {"debug", "info", "warning", "error", "critical"}, line
        assert datetime.fromisoformat(record["timestamp"]).utcoffset() == timedelta(0), line


def test_send_results_name_channel_message_and_wamid(capture: Capture) -> None:
    channels = {
        CLOUD_OK: "cloud",
        ONPREM_OK: "onprem",
        RETRIED_ONCE: "cloud",
        GIVES_UP: "onprem",
        PERMANENT: "cloud",
        ON_REVOKED: "revoked",
    }
    for recipient, channel in channels.items():
        results = [r for r in capture.about(recipient) if r["event"].startswith("outbox.send.")]
        assert results, recipient
        assert {r["channel"] for r in results} == {channel}, recipient
    for recipient in (CLOUD_OK, ONPREM_OK, RETRIED_ONCE):
        [accepted] = [r for r in capture.about(recipient) if r["event"] == "outbox.send.accepted"]
        wamid = capture.rows[capture.ids[recipient]]["wamid"]
        assert wamid
        assert accepted["wamid"] == wamid, recipient
    per_message = [
        r for r in capture.records() if r["event"].startswith("outbox.send.") and "count" not in r
    ]
    assert per_message
    for record in per_message:
        assert record.get("channel"), record
        assert isinstance(record.get("message_id"), int), record


def test_a_row_failed_without_a_request_is_logged(capture: Capture) -> None:
    """Invalid recipients, payloads and closed windows are final too, though no request went."""
    assert capture.rows[capture.ids["12"]]["error_code"] == "invalid_recipient"
    [failed] = [r for r in capture.about("12") if r["event"] == "outbox.send.failed"]
    assert (failed["level"], failed["channel"]) == ("error", "onprem")


def test_a_row_expired_in_the_queue_is_logged_with_channel_and_id(capture: Capture) -> None:
    assert capture.rows[capture.ids[EXPIRES_QUEUED]]["state"] == "expired"
    [expired] = [r for r in capture.records() if r["event"] == "outbox.send.expired"]
    assert (expired.get("channel"), expired.get("message_id")) == (
        "cloud",
        capture.ids[EXPIRES_QUEUED],
    )


def test_a_row_of_an_unknown_channel_is_logged_with_its_id(capture: Capture) -> None:
    assert capture.rows[capture.ids[UNCONFIGURED]]["error_code"] == "unknown_channel"
    [failed] = [
        r
        for r in capture.records()
        if r["event"] == "outbox.send.failed" and r.get("channel") == "nowhere"
    ]
    assert failed.get("message_id") == capture.ids[UNCONFIGURED]


# ---------------------------------------------------------------- 3. format


def parses_as_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stream_type", "fmt", "as_json"),
    [
        (io.StringIO, "auto", True),
        (_Terminal, "auto", False),
        (io.StringIO, "console", False),
        (_Terminal, "json", True),
    ],
    ids=["auto-not-a-tty", "auto-tty", "console", "json-on-a-tty"],
)
def test_format_follows_the_setting_and_the_stream(
    stream_type: type[io.StringIO], fmt: str, as_json: bool
) -> None:
    stream = stream_type()
    with logs_into(stream, "info", fmt):
        # A daemon module's own logger, as the daemon logs.
        app.log.info("outbox.test.format", channel="cloud", message_id=7)
    [line] = stream.getvalue().splitlines()
    assert "outbox.test.format" in line
    assert parses_as_json_object(line) is as_json, line
    if as_json:
        assert json.loads(line)["message_id"] == 7


def test_standard_library_lines_are_json_too() -> None:
    root = logging.getLogger()
    # The daemon starts with no handlers on the root logger; pytest's capture handlers would
    # see the record too, so they are set aside.
    pytest_handlers = list(root.handlers)
    for handler in pytest_handlers:
        root.removeHandler(handler)
    stream = io.StringIO()
    try:
        with logs_into(stream, "info", "json"):
            logging.getLogger("aiohttp.server").error("Error handling request")
    finally:
        for handler in pytest_handlers:
            root.addHandler(handler)
    [line] = stream.getvalue().splitlines()
    assert parses_as_json_object(line), line
    record = json.loads(line)
    assert (record["event"], record["level"]) == ("Error handling request", "error")


# ---------------------------------------------------------------- 4. ERROR only when final


def test_errors_are_logged_at_error_only_when_final(capture: Capture) -> None:
    def levels(recipient: str, event: str) -> list[str]:
        return [r["level"] for r in capture.about(recipient) if r["event"] == event]

    # A 5xx that will be retried is not an error yet, even on the attempt before the last.
    assert levels(RETRIED_ONCE, "outbox.send.retry_scheduled") in (["info"], ["warning"])
    assert levels(RETRIED_ONCE, "outbox.send.failed") == []
    assert levels(GIVES_UP, "outbox.send.retry_scheduled") in (["info"], ["warning"])
    # The final word on a row, and a paused channel, are.
    assert levels(GIVES_UP, "outbox.send.failed") == ["error"]
    assert levels(PERMANENT, "outbox.send.failed") == ["error"]
    assert "gave up after 2 attempts" in capture.rows[capture.ids[GIVES_UP]]["error_detail"]
    paused = [r for r in capture.records() if r["event"] == "outbox.channel.paused"]
    assert [(r["level"], r["channel"]) for r in paused] == [("error", "revoked")]
    # The refused row itself waits in line for the probe: not final, so not an error.
    assert set(levels(ON_REVOKED, "outbox.send.retry_scheduled")) <= {"info", "warning"}
    assert levels(ON_REVOKED, "outbox.send.retry_scheduled")
    errors = {r["event"] for r in capture.records() if r["level"] == "error"}
    assert errors <= FINAL_EVENTS
