"""`outbox set-webhook`, `sandbox` and `demo`: tools around the daemon."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from outbox.cli.masking import masked_answer
from outbox.cli.runtime import EXIT_ERROR, EXIT_OK, env_default, run_async, settings
from outbox.errors import ConfigError, OutboxError

SANDBOX_KEYS_ENV = "OUTBOX_SANDBOX_KEYS"  # the sandbox's KEY=LABEL pairs, when no file is given


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

    sandbox = commands.add_parser(
        "sandbox",
        parents=[common],
        help="run a local imitation of 360dialog's API",
        # The old `--keys KEY=LABEL` must fail, not be taken as an abbreviation of --keys-file.
        allow_abbrev=False,
    )
    env_default(sandbox, "--host", env="SANDBOX_HOST", default="127.0.0.1", help="bind address")
    env_default(sandbox, "--port", env="SANDBOX_PORT", default=8081, type=int, help="port")
    # Issue 19 §3: keys never on the command line, which every local user can read (ps).
    env_default(
        sandbox,
        "--keys-file",
        env="SANDBOX_KEYS_FILE",
        type=Path,
        help="a file of KEY=LABEL pairs (one a line, or comma-separated) the sandbox accepts as "
        f"D360-API-KEY; without it, the pairs in {SANDBOX_KEYS_ENV}, else sandbox-key=sandbox",
    )
    env_default(
        sandbox,
        "--latency-ms",
        env="SANDBOX_LATENCY_MS",
        default=0.0,
        type=float,
        help="delay before answering each send",
    )
    env_default(
        sandbox,
        "--status-delays-ms",
        env="SANDBOX_STATUS_DELAYS_MS",
        default="50,100,150",
        help="delays of the sent, delivered and read notifications after acceptance",
    )
    sandbox.add_argument("--reorder", action="store_true", help="shuffle each message's statuses")
    sandbox.add_argument("--duplicate", action="store_true", help="post every notification twice")
    env_default(
        sandbox,
        "--partner-secret-env",
        env="SANDBOX_PARTNER_SECRET_ENV",
        help="the environment variable holding a partner secret: every body the sandbox posts "
        "is then signed with it (x-360dialog-signature), as 360dialog signs a partner's",
    )
    sandbox.set_defaults(func=_sandbox)

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


def _sandbox(args: argparse.Namespace) -> int:
    from outbox import sandbox

    keys = _sandbox_keys(args.keys_file)
    try:
        delays = tuple(float(d) / 1000 for d in str(args.status_delays_ms).split(","))
    except ValueError:
        raise ConfigError("--status-delays-ms: expected three numbers like 50,100,150") from None
    if len(delays) != 3:
        raise ConfigError("--status-delays-ms: expected three numbers like 50,100,150")
    partner_secret = None
    if args.partner_secret_env:
        partner_secret = os.environ.get(args.partner_secret_env) or None
        if partner_secret is None:
            raise ConfigError(f"--partner-secret-env: {args.partner_secret_env} is not set")

    def announce(base_url: str) -> None:
        print(
            f"sandbox: serving on {base_url} (On-Premise /v1/messages, Cloud /messages)",
            file=sys.stderr,
        )

    async def main(stop: asyncio.Event) -> int:
        try:
            await _serve_sandbox(stop)
        except OSError as exc:
            # A port in use is the usual reason: one line, no traceback (issue 19 §4).
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise OutboxError(
                f"sandbox: cannot listen on {args.host}:{args.port}: {reason}"
            ) from None
        return EXIT_OK

    async def _serve_sandbox(stop: asyncio.Event) -> None:
        await sandbox.serve(
            args.host,
            args.port,
            keys,
            latency=args.latency_ms / 1000,
            status_delays=(delays[0], delays[1], delays[2]),
            reorder=args.reorder,
            duplicate=args.duplicate,
            stop=stop,
            partner_secret=partner_secret,
            announce=announce,
        )

    return run_async(main)


def _sandbox_keys(path: Path | None) -> dict[str, str]:
    """The sandbox's keys, from a file or the environment (never argv, issue 19 §3)."""
    if path is not None:
        try:
            text, where = path.read_text(encoding="utf-8"), f"--keys-file {path}"
        except OSError as exc:
            raise ConfigError(f"cannot read --keys-file {path}: {exc.strerror}") from exc
    else:
        text, where = os.environ.get(SANDBOX_KEYS_ENV, "sandbox-key=sandbox"), SANDBOX_KEYS_ENV
    keys: dict[str, str] = {}
    for pair in text.replace("\n", ",").split(","):
        key, _, label = pair.strip().partition("=")
        if key:
            keys[key] = label or key[:4] + "…"
    if not keys:
        raise ConfigError(f"{where}: no KEY=LABEL pair")
    return keys


def _demo(args: argparse.Namespace) -> int:
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
                lambda stop: run_demo(stop, messages=args.messages, latency=args.latency_ms / 1000)
            )
        finally:
            logging.captureWarnings(False)
            logconfig.configure(args.log_level or "warning", args.log_format or "auto")
            say(describe_log(args.log_file))
