"""The `outbox` command: parse, call, exit code. Every option has an OUTBOX_* fallback."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from outbox import __version__
from outbox.config import Settings
from outbox.errors import ConfigError, OutboxError

EXIT_OK, EXIT_ERROR, EXIT_CONFIG = 0, 1, 2


def _env_default(parser: argparse.ArgumentParser, *flags: str, env: str, **kwargs: Any) -> None:
    """Add an option whose default comes from OUTBOX_<env>, and say so in --help."""
    name = f"OUTBOX_{env}"
    default = os.environ.get(name, kwargs.pop("default", None))
    help_text = kwargs.pop("help", "")
    parser.add_argument(*flags, default=default, help=f"{help_text} (env: {name})", **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outbox",
        description="WhatsApp message-outbox daemon: sends rows of outbox.messages via 360dialog.",
    )
    parser.add_argument("--version", action="version", version=f"outbox {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    _env_default(common, "--config", env="CONFIG", type=Path, help="TOML configuration file")
    _env_default(
        common,
        "--log-level",
        env="LOG_LEVEL",
        choices=["debug", "info", "warning", "error"],
        help="log level",
    )
    _env_default(
        common,
        "--log-format",
        env="LOG_FORMAT",
        choices=["auto", "json", "console"],
        help="log format; auto is JSON unless stderr is a terminal",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", parents=[common], help="run the daemon")
    _env_default(
        run,
        "--role",
        env="ROLE",
        default="sender,reconciler,web",
        help="comma-separated parts to run in this process: sender, reconciler, web",
    )
    run.set_defaults(func=_run)

    migrate = commands.add_parser("migrate", parents=[common], help="apply schema migrations")
    migrate.set_defaults(func=_migrate)

    check = commands.add_parser(
        "check",
        parents=[common],
        help="check configuration, database and migrations; exit 0 only if all is well",
    )
    check.set_defaults(func=_check)

    show = commands.add_parser(
        "show",
        parents=[common],
        help="one message: its columns, attempts and status history",
    )
    show.add_argument("id", type=int, help="the message's id (outbox.messages.id)")
    show.set_defaults(func=_show)

    stats = commands.add_parser(
        "stats",
        parents=[common],
        help="per channel: counts per state, sent lately, oldest due row, paused or throttled",
    )
    _env_default(
        stats,
        "--recent-minutes",
        env="STATS_RECENT_MINUTES",
        default=5.0,
        type=float,
        help="the period 'sent lately' counts over",
    )
    stats.set_defaults(func=_stats)

    set_webhook = commands.add_parser(
        "set-webhook",
        parents=[common],
        help="register a channel's webhook URL with the API (POST /v1/configs/webhook), with "
        "the channel's Basic-auth credentials as a header when it has them; prints the answer",
    )
    set_webhook.add_argument("channel", help="the channel's id in the configuration")
    set_webhook.add_argument("url", help="where 360dialog should post, e.g. .../webhooks/CHANNEL")
    set_webhook.set_defaults(func=_set_webhook)

    sandbox = commands.add_parser(
        "sandbox", parents=[common], help="run a local imitation of 360dialog's API"
    )
    _env_default(sandbox, "--host", env="SANDBOX_HOST", default="127.0.0.1", help="bind address")
    _env_default(sandbox, "--port", env="SANDBOX_PORT", default=8081, type=int, help="port")
    _env_default(
        sandbox,
        "--keys",
        env="SANDBOX_KEYS",
        default="sandbox-key=sandbox",
        help="comma-separated KEY=LABEL pairs the sandbox accepts as D360-API-KEY",
    )
    _env_default(
        sandbox,
        "--latency-ms",
        env="SANDBOX_LATENCY_MS",
        default=0.0,
        type=float,
        help="delay before answering each send",
    )
    _env_default(
        sandbox,
        "--status-delays-ms",
        env="SANDBOX_STATUS_DELAYS_MS",
        default="50,100,150",
        help="delays of the sent, delivered and read notifications after acceptance",
    )
    sandbox.add_argument("--reorder", action="store_true", help="shuffle each message's statuses")
    sandbox.add_argument("--duplicate", action="store_true", help="post every notification twice")
    sandbox.set_defaults(func=_sandbox)

    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="run everything on embedded defaults (PostgreSQL, sandbox API) with sample traffic",
    )
    _env_default(
        demo,
        "--messages",
        env="DEMO_MESSAGES",
        default=2000,
        type=int,
        help="how many sample messages to enqueue",
    )
    _env_default(
        demo,
        "--latency-ms",
        env="DEMO_LATENCY_MS",
        default=20.0,
        type=float,
        help="sandbox API latency",
    )
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from outbox import logconfig

    # The demo prints its own progress; only warnings and errors from the parts interrupt it.
    default_level = "warning" if args.command == "demo" else "info"
    logconfig.configure(args.log_level or default_level, args.log_format or "auto")
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"outbox: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OutboxError as exc:
        print(f"outbox: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR
    return code


def run_async(factory: Callable[[asyncio.Event], Coroutine[Any, Any, int]]) -> int:
    """Run a coroutine on uvloop (when installed) with SIGTERM/SIGINT setting a stop event."""
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is absent on Windows only
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        stop = asyncio.Event()
        loop = runner.get_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        return runner.run(factory(stop))


def _settings(args: argparse.Namespace, *, need_channels: bool = True) -> Settings:
    from outbox import logconfig
    from outbox.config import load_settings

    settings = load_settings(args.config, need_channels=need_channels)
    # The file's log settings apply unless the command line (or its environment) set them.
    logconfig.configure(
        args.log_level or settings.log_level, args.log_format or settings.log_format
    )
    return settings


def _run(args: argparse.Namespace) -> int:
    from outbox import app

    settings = _settings(args)
    roles = {r.strip() for r in str(args.role).split(",") if r.strip()}
    unknown = roles - set(app.ROLES)
    if unknown or not roles:
        raise ConfigError(f"--role: unknown role {sorted(unknown)[0] if unknown else '(none)'}")

    async def main(stop: asyncio.Event) -> int:
        await app.run(settings, stop, roles=roles)
        return EXIT_OK

    return run_async(main)


def _migrate(args: argparse.Namespace) -> int:
    from outbox.db import migrate
    from outbox.db.engine import create_engine

    settings = _settings(args, need_channels=False)

    async def main(_: asyncio.Event) -> int:
        engine = create_engine(settings.database_url, pool_size=1, role="migrate")
        try:
            before = await migrate.current_revision(engine)
            await migrate.upgrade(engine)
            after = await migrate.current_revision(engine)
        except OSError as exc:
            raise OutboxError(f"cannot reach the database: {exc}") from exc
        finally:
            await engine.dispose()
        print(f"schema: {before or 'empty'} -> {after}")
        return EXIT_OK

    return run_async(main)


def _check(args: argparse.Namespace) -> int:
    from outbox import app
    from outbox.db.engine import create_engine

    settings = _settings(args)
    print(f"configuration: ok ({len(settings.channels)} channels)")

    async def main(_: asyncio.Event) -> int:
        engine = create_engine(settings.database_url, pool_size=1, role="check")
        try:
            await app.check_database(engine)
        finally:
            await engine.dispose()
        print("database: ok, schema current")
        return EXIT_OK

    return run_async(main)


def _show(args: argparse.Namespace) -> int:
    from outbox.admin import format_message
    from outbox.db.admin_store import AdminStore

    async def read(store: AdminStore, _: Settings) -> int:
        row = await store.message(args.id)
        if row is None:
            print(f"outbox: no message with id {args.id}", file=sys.stderr)
            return EXIT_ERROR
        print(format_message(row, await store.history(args.id)))
        return EXIT_OK

    return _with_admin_store(args, read)


def _stats(args: argparse.Namespace) -> int:
    from outbox.admin import format_stats
    from outbox.db.admin_store import AdminStore

    if not args.recent_minutes > 0:
        raise ConfigError("--recent-minutes must be greater than 0")

    async def read(store: AdminStore, settings: Settings) -> int:
        configured = [c.id for c in settings.channels]
        stats = await store.channel_stats(configured, args.recent_minutes * 60)
        print(format_stats(stats, args.recent_minutes))
        return EXIT_OK

    return _with_admin_store(args, read)


def _with_admin_store(
    args: argparse.Namespace, read: Callable[[Any, Settings], Coroutine[Any, Any, int]]
) -> int:
    """Run `read` against the configured database, schema checked first."""
    from outbox import app
    from outbox.db.admin_store import AdminStore
    from outbox.db.engine import create_engine

    settings = _settings(args, need_channels=False)

    async def main(_: asyncio.Event) -> int:
        engine = create_engine(settings.database_url, pool_size=1, role="admin")
        try:
            await app.check_database(engine)
            return await read(AdminStore(engine), settings)
        finally:
            await engine.dispose()

    return run_async(main)


def _set_webhook(args: argparse.Namespace) -> int:
    from urllib.parse import urlsplit

    import aiohttp

    from outbox.http.api_client import ApiClient, create_session

    settings = _settings(args)
    channel = settings.channel(args.channel)
    if channel is None:
        known = ", ".join(c.id for c in settings.channels)
        raise ConfigError(f"no channel {args.channel!r} in the configuration (have: {known})")
    if urlsplit(args.url).scheme not in ("http", "https") or not urlsplit(args.url).hostname:
        raise ConfigError(f"URL must be an http(s) URL, got {args.url!r}")

    async def main(_: asyncio.Event) -> int:
        try:
            async with create_session(1, settings.sender.request_timeout) as session:
                answer = await ApiClient(session).set_webhook(channel, args.url)
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise OutboxError(f"cannot reach {channel.base_url}: {reason}") from exc
        body = _redact_headers(answer.body)
        print(body if isinstance(body, str) else json.dumps(body, indent=2))
        if not 200 <= answer.status < 300:
            print(f"error: the API answered HTTP {answer.status}", file=sys.stderr)
            return EXIT_ERROR
        return EXIT_OK

    return run_async(main)


def _redact_headers(body: Any) -> Any:
    """The API echoes the registered headers; the Basic-auth one holds the webhook password."""
    if isinstance(body, dict) and isinstance(body.get("headers"), dict):
        return {**body, "headers": dict.fromkeys(body["headers"], "********")}
    return body


def _sandbox(args: argparse.Namespace) -> int:
    from outbox import sandbox

    keys: dict[str, str] = {}
    for pair in str(args.keys).split(","):
        key, _, label = pair.strip().partition("=")
        if not key:
            raise ConfigError("--keys: empty API key")
        keys[key] = label or key[:4] + "…"
    try:
        delays = tuple(float(d) / 1000 for d in str(args.status_delays_ms).split(","))
    except ValueError:
        raise ConfigError("--status-delays-ms: expected three numbers like 50,100,150") from None
    if len(delays) != 3:
        raise ConfigError("--status-delays-ms: expected three numbers like 50,100,150")
    print(
        f"sandbox: serving on http://{args.host}:{args.port} (On-Premise /v1/messages, "
        "Cloud /messages)",
        file=sys.stderr,
    )

    async def main(stop: asyncio.Event) -> int:
        await sandbox.serve(
            args.host,
            args.port,
            keys,
            latency=args.latency_ms / 1000,
            status_delays=(delays[0], delays[1], delays[2]),
            reorder=args.reorder,
            duplicate=args.duplicate,
            stop=stop,
        )
        return EXIT_OK

    return run_async(main)


def _demo(args: argparse.Namespace) -> int:
    from outbox.demo import run as run_demo

    return run_async(
        lambda stop: run_demo(stop, messages=args.messages, latency=args.latency_ms / 1000)
    )
