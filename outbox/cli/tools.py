"""`outbox set-webhook`, `sandbox` (cli/sandbox.py) and `demo`: tools around the daemon."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from outbox.cli import sandbox
from outbox.cli.masking import masked_answer
from outbox.cli.runtime import (
    EXIT_ERROR,
    EXIT_OK,
    collect_for_a_daemon,
    env_default,
    freeze_startup,
    run_async,
    settings,
)
from outbox.errors import ConfigError, OutboxError


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    set_webhook = commands.add_parser(
        "set-webhook",
        parents=[common],
        help="register a channel's webhook URL with the API (POST /v1/configs/webhook), with "
        "the channel's Basic-auth credentials as a header when it has them; prints the answer",
    )
    set_webhook.add_argument("channel", help="the channel's id in the configuration")
    set_webhook.add_argument("url", help="where 360dialog should post, e.g. .../webhooks/CHANNEL")
    set_webhook.add_argument(
        "--waba",
        action="store_true",
        help="register the channel's WABA-level webhook instead (POST /waba_webhook: template, "
        "account and quality events), e.g. .../webhooks; the number's own webhook stays",
    )
    set_webhook.set_defaults(func=_set_webhook)
    sandbox.add_parser(commands, common)

    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="run everything on embedded defaults (PostgreSQL, sandbox API) with sample traffic",
    )
    env_default(
        demo,
        "--messages",
        env="DEMO_MESSAGES",
        default=2000,
        type=int,
        help="how many sample messages to enqueue",
    )
    env_default(
        demo,
        "--latency-ms",
        env="DEMO_LATENCY_MS",
        default=20.0,
        type=float,
        help="sandbox API latency",
    )
    env_default(
        demo,
        "--log-file",
        env="DEMO_LOG_FILE",
        type=Path,
        help="where the daemon's JSON logs go (default: a new outbox-demo-*.log in the "
        "temporary directory); the terminal shows only the demo's own story",
    )
    demo.set_defaults(func=_demo)


def _set_webhook(args: argparse.Namespace) -> int:
    from urllib.parse import urlsplit

    import aiohttp

    from outbox.cli.api_check import other_channel
    from outbox.config_checks import insecure_http_allowed, require_https
    from outbox.http.api_client import ApiClient, create_session

    loaded = settings(args)
    channel = loaded.channel(args.channel)
    if channel is None:
        known = ", ".join(c.id for c in loaded.channels)
        raise ConfigError(f"no channel {args.channel!r} in the configuration (have: {known})")
    if urlsplit(args.url).scheme not in ("http", "https") or not urlsplit(args.url).hostname:
        raise ConfigError(f"URL must be an http(s) URL, got {args.url!r}")
    # Issue 19 §3: 360dialog would post the Basic-auth header to it in clear text.
    require_https(args.url, "the webhook URL", allow_insecure=insecure_http_allowed(os.environ))
    other = None if args.waba else other_channel(channel.id, args.url)
    if other is not None:
        # Issue 19 §4: this channel's reports would reach channel `other`'s endpoint, which
        # refuses them (other credentials) or files them under the wrong channel.
        raise ConfigError(
            f"URL path /webhooks/{other} is channel {other!r}'s webhook, not {channel.id!r}'s:"
            f" use .../webhooks/{channel.id}"
        )

    async def main(_: asyncio.Event) -> int:
        try:
            async with create_session(1, loaded.sender.request_timeout) as session:
                answer = await ApiClient(session).set_webhook(channel, args.url, waba=args.waba)
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise OutboxError(f"cannot reach {channel.base_url}: {reason}") from exc
        body = masked_answer(answer.body, channel)
        print(body if isinstance(body, str) else json.dumps(body, indent=2))
        if answer.location is not None:
            # Never followed: the request carries the key and the webhook credentials.
            print(
                f"error: the API answered HTTP {answer.status}, a redirect to"
                f" {masked_answer(answer.location, channel)!r}, which was not followed: a"
                " request with credentials never is (check base_url)",
                file=sys.stderr,
            )
            return EXIT_ERROR
        if not 200 <= answer.status < 300:
            print(f"error: the API answered HTTP {answer.status}", file=sys.stderr)
            return EXIT_ERROR
        return EXIT_OK

    return run_async(main)


def _demo(args: argparse.Namespace) -> int:
    # The daemon inside runs with `outbox run`'s collector settings, so that the demo's
    # throughput is the daemon's (`--messages 10000`: 386-403 msg/s without them, 688-766 with).
    collect_for_a_daemon()
    from outbox import logconfig
    from outbox.demo import describe_log, say
    from outbox.demo import run as run_demo

    if args.log_file is None:
        fd, name = tempfile.mkstemp(prefix="outbox-demo-", suffix=".log")
        os.close(fd)
        args.log_file = Path(name)
    # The daemon's logs (500 ERROR lines for the rows failed on purpose, at the default size) and
    # the warnings of dependencies would bury the demo's story: they go to the file, as JSON so
    # that they can be counted, and the story ends by naming it.
    with args.log_file.open("w", encoding="utf-8") as log_file:
        logconfig.configure(args.log_level or "info", "json", stream=log_file)
        logging.captureWarnings(True)
        try:
            return run_async(
                lambda stop: run_demo(
                    stop,
                    messages=args.messages,
                    latency=args.latency_ms / 1000,
                    on_started=freeze_startup,
                )
            )
        finally:
            logging.captureWarnings(False)
            logconfig.configure(args.log_level or "warning", args.log_format or "auto")
            say(describe_log(args.log_file))
