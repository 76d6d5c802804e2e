"""The `outbox` command: parse, call, exit code. Every option has an OUTBOX_* fallback."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Collection, Coroutine, Sequence
from pathlib import Path
from typing import Any

from outbox import __version__
from outbox.config import Settings
from outbox.domain.models import State
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

    _add_replay(commands, common)
    _add_cancel(commands, common)
    _add_purge(commands, common)

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

    def reload() -> Settings:
        from outbox.config import load_settings

        return load_settings(args.config)

    async def main(stop: asyncio.Event) -> int:
        await app.run(settings, stop, roles=roles, reload=reload)
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

    async def read(engine: Any, _: Settings) -> int:
        store = AdminStore(engine)
        row = await store.message(args.id)
        if row is None:
            print(f"outbox: no message with id {args.id}", file=sys.stderr)
            return EXIT_ERROR
        print(format_message(row, await store.history(args.id), await store.actions(args.id)))
        return EXIT_OK

    return _with_engine(args, read)


def _stats(args: argparse.Namespace) -> int:
    from outbox.admin import format_stats
    from outbox.db.admin_store import AdminStore

    if not args.recent_minutes > 0:
        raise ConfigError("--recent-minutes must be greater than 0")

    async def read(engine: Any, settings: Settings) -> int:
        store = AdminStore(engine)
        configured = [c.id for c in settings.channels]
        stats = await store.channel_stats(configured, args.recent_minutes * 60)
        print(format_stats(stats, args.recent_minutes))
        return EXIT_OK

    return _with_engine(args, read)


def _with_engine(
    args: argparse.Namespace, use: Callable[[Any, Settings], Coroutine[Any, Any, int]]
) -> int:
    """Run `use(engine, settings)` against the configured database, schema checked first."""
    from outbox import app
    from outbox.db.engine import create_engine

    settings = _settings(args, need_channels=False)

    async def main(_: asyncio.Event) -> int:
        engine = create_engine(settings.database_url, pool_size=1, role="admin")
        try:
            await app.check_database(engine)
            return await use(engine, settings)
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


# Selectors have no OUTBOX_* fallback on purpose: a variable left set in a shell must never
# widen what a replay or cancel touches.
def _add_selectors(
    parser: argparse.ArgumentParser, states: Sequence[State], default: State
) -> None:
    chosen = parser.add_argument_group("selectors (all given ones must match)")
    chosen.add_argument(
        "--id", dest="ids", type=int, action="append", default=[], help="a message id; repeatable"
    )
    chosen.add_argument("--channel", help="the channel id")
    chosen.add_argument(
        "--error-code",
        dest="error_codes",
        action="append",
        default=[],
        help="error_code as stored, e.g. 131026 or http_500; repeatable",
    )
    chosen.add_argument(
        "--since",
        help="created at or after: ISO 8601 (UTC unless a zone is given), or a duration "
        "meaning that long ago, e.g. 2h",
    )
    chosen.add_argument("--until", help="created before: ISO 8601, or a duration ago (e.g. 30m)")
    chosen.add_argument("--recipient", help="the recipient, in any spelling producers use")
    chosen.add_argument(
        "--state",
        dest="states",
        action="append",
        choices=[s.value for s in states],
        help=f"the row's state; repeatable (default: {default.value}; with --id, any state, "
        "so that a row that cannot be acted on is listed with the reason)",
    )
    chosen.add_argument(
        "--all", action="store_true", help="allow no selector but the state: every such row"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would happen; change nothing"
    )
    parser.add_argument("--reason", help="a note kept with each row's lineage")
    _env_default(
        parser,
        "--actor",
        env="ACTOR",
        default=_default_actor(),
        help="who is acting, recorded in the row's lineage",
    )
    _env_default(
        parser,
        "--show",
        env="SHOW_ROWS",
        default=50,
        type=int,
        help="rows listed in the table; the summary counts them all",
    )
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def _default_actor() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _add_replay(commands: Any, common: argparse.ArgumentParser) -> None:
    from outbox.domain.replay import REPLAYABLE

    replay = commands.add_parser(
        "replay",
        parents=[common],
        help="requeue failed, unknown or expired messages (their lineage is kept)",
        description="Requeue selected failed, unknown or expired messages as new. Rows whose "
        "status history shows they were sent, delivered or read are refused unless --force. "
        "The 24-hour window and expires_at are checked again when each is sent. Replayed rows "
        "share their channel's rate with live traffic through a replay lane (channel setting "
        "replay_share, default 0.2), so a large replay never starves live messages.",
    )
    _add_selectors(replay, sorted(REPLAYABLE), State.FAILED)
    replay.add_argument(
        "--force", action="store_true", help="replay rows that were sent or delivered too"
    )
    _env_default(
        replay,
        "--expires-in",
        env="REPLAY_EXPIRES_IN",
        help="give replayed rows a new expires_at this far ahead (e.g. 2h); needed for rows "
        "whose expires_at has passed",
    )
    replay.set_defaults(func=_replay)


def _add_cancel(commands: Any, common: argparse.ArgumentParser) -> None:
    from outbox.domain.replay import CANCELLABLE

    cancel = commands.add_parser(
        "cancel",
        parents=[common],
        help="cancel queued messages (or unknown ones) by the same selectors as replay",
    )
    _add_selectors(cancel, sorted(CANCELLABLE), State.QUEUED)
    cancel.set_defaults(func=_cancel)


def _add_purge(commands: Any, common: argparse.ArgumentParser) -> None:
    purge = commands.add_parser(
        "purge",
        parents=[common],
        help="delete finished messages, processed webhook rows and old orphan statuses",
        description="Deletes, in small batches that each commit on their own, messages in a "
        "terminal state (read, failed, expired, cancelled) not updated for --older-than, with "
        "their status history and lineage; webhook rows processed before then; and orphan "
        "statuses older than that. Rows another session holds are skipped.",
    )
    _env_default(
        purge,
        "--older-than",
        env="PURGE_OLDER_THAN",
        required="OUTBOX_PURGE_OLDER_THAN" not in os.environ,
        help="retention period, e.g. 30d (at least 1h)",
    )
    purge.add_argument(
        "--include-delivered",
        action="store_true",
        help="also delete accepted, sent and delivered messages past the retention period",
    )
    _env_default(
        purge,
        "--batch-size",
        env="PURGE_BATCH_SIZE",
        default=1000,
        type=int,
        help="rows deleted per transaction",
    )
    purge.add_argument("--dry-run", action="store_true", help="count what would go; delete nothing")
    purge.set_defaults(func=_purge)


def _selector(args: argparse.Namespace, default: State) -> Any:
    """The rows to look at. Rows named by --id are looked at in any state (unless --state is
    given), so that one the command may not touch is listed with the reason."""
    from datetime import UTC, datetime

    from outbox.admin import parse_time
    from outbox.db.operator_store import Selector

    now = datetime.now(UTC)
    try:
        since = parse_time(args.since, now) if args.since else None
        until = parse_time(args.until, now) if args.until else None
    except ValueError as exc:
        raise ConfigError(f"--since/--until: {exc}") from None
    if args.show < 0:
        raise ConfigError("--show must be 0 or more")
    states = _wanted(args, default)
    if args.ids and not args.states:
        states = tuple(State)
    selector = Selector(
        states=states,
        ids=tuple(args.ids),
        channel=args.channel,
        error_codes=tuple(args.error_codes),
        since=since,
        until=until,
        recipient=args.recipient,
    )
    if not selector.narrows() and not args.all:
        raise ConfigError(
            "no selector given: name --id, --channel, --error-code, --since, --until or "
            "--recipient, or say --all"
        )
    return selector


def _wanted(args: argparse.Namespace, default: State) -> tuple[State, ...]:
    """The states the command acts on: those given by --state, or its default."""
    return tuple(State(s) for s in args.states) if args.states else (default,)


def _unwanted(candidate: Any, wanted: tuple[State, ...], allowed: Collection[State]) -> Any:
    """A row named by --id in a state the command could act on but was not asked to."""
    from outbox.domain.replay import Decision

    if candidate.state in allowed and candidate.state not in wanted:
        state = candidate.state.value
        return Decision(False, f"state {state} is not selected (--state {state} selects it)")
    return None


def _replay(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from outbox.admin import parse_duration
    from outbox.domain.replay import REPLAYABLE, decide_replay

    selector = _selector(args, State.FAILED)
    # The write re-checks the state: only those asked for that a replay may start from.
    wanted = _wanted(args, State.FAILED)
    states = [s for s in wanted if s in REPLAYABLE]
    try:
        expires_in = parse_duration(args.expires_in) if args.expires_in else None
    except ValueError as exc:
        raise ConfigError(f"--expires-in: {exc}") from None

    def decide(candidate: Any, settings: Settings) -> Any:
        now = datetime.now(UTC)
        return _unwanted(candidate, wanted, REPLAYABLE) or decide_replay(
            candidate,
            now=now,
            force=args.force,
            new_expiry=now + expires_in if expires_in else None,
            window_margin=settings.sender.window_margin,
        )

    async def act(store: Any, ids: list[int]) -> Any:
        expires_at = datetime.now(UTC) + expires_in if expires_in else None
        return await store.replay(
            ids,
            states,
            actor=args.actor,
            forced=args.force,
            expires_at=expires_at,
            note=args.reason,
        )

    return _operate(args, "replay", selector, decide, act)


def _cancel(args: argparse.Namespace) -> int:
    from outbox.domain.replay import CANCELLABLE, decide_cancel

    selector = _selector(args, State.QUEUED)
    wanted = _wanted(args, State.QUEUED)
    states = [s for s in wanted if s in CANCELLABLE]

    def decide(candidate: Any, _: Settings) -> Any:
        return _unwanted(candidate, wanted, CANCELLABLE) or decide_cancel(candidate)

    async def act(store: Any, ids: list[int]) -> Any:
        return await store.cancel(ids, states, actor=args.actor, note=args.reason)

    return _operate(args, "cancel", selector, decide, act)


_ACT_BATCH = 500


def _operate(
    args: argparse.Namespace,
    verb: str,
    selector: Any,
    decide: Callable[[Any, Settings], Any],
    act: Callable[[Any, list[int]], Coroutine[Any, Any, Any]],
) -> int:
    """Select, decide and show; then (unless a dry run) write in batches with progress."""
    from outbox.admin import Progress, Tally
    from outbox.db.operator_store import OperatorStore

    async def run(engine: Any, settings: Settings) -> int:
        store = OperatorStore(engine)
        tally = Tally(verb)
        chosen: list[int] = []
        async for page in store.candidates(selector):
            for candidate in page:
                decision = decide(candidate, settings)
                tally.row(candidate, decision, args.show)
                if decision.act:
                    chosen.append(candidate.id)
        if not tally.acted and not tally.skipped:
            print(f"no message matches; nothing to {verb}")
            return EXIT_OK
        print(tally.table())
        if args.dry_run or not chosen:
            print(tally.summary(dry_run=True))
            return EXIT_OK
        if not args.yes and sys.stdin.isatty():
            answer = await asyncio.to_thread(input, f"{verb} {len(chosen)} messages? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing changed")
                return EXIT_ERROR
        progress = Progress(verb, len(chosen), sys.stderr)
        for start in range(0, len(chosen), _ACT_BATCH):
            applied = await act(store, chosen[start : start + _ACT_BATCH])
            tally.changed += len(applied.changed)
            progress.advance(len(applied.done) + len(applied.changed))
        progress.close()
        print(tally.summary(dry_run=False))
        return EXIT_OK

    return _with_engine(args, run)


def _purge(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from outbox.admin import parse_duration
    from outbox.db.operator_store import PURGE_TABLES, OperatorStore
    from outbox.domain.replay import PURGEABLE, PURGEABLE_ON_REQUEST

    try:
        older_than = parse_duration(str(args.older_than))
    except ValueError as exc:
        raise ConfigError(f"--older-than: {exc}") from None
    if older_than < timedelta(hours=1):
        raise ConfigError("--older-than must be at least 1h")
    if args.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    states = sorted(PURGEABLE | (PURGEABLE_ON_REQUEST if args.include_delivered else set()))

    async def run(engine: Any, _: Settings) -> int:
        store = OperatorStore(engine)
        cutoff = datetime.now(UTC) - older_than
        counts = await store.count_purgeable(states, cutoff)
        print(f"older than {cutoff.isoformat(timespec='seconds')}:")
        for table, count in counts.items():
            print(f"  {table:<16}{count:>10}")
        if args.dry_run:
            print("dry run: nothing deleted")
            return EXIT_OK
        for table in PURGE_TABLES:
            deleted, after = 0, 0
            while True:
                count, after = await store.purge_batch(
                    table, after, cutoff, args.batch_size, states
                )
                deleted += count
                if count < args.batch_size:
                    break
            print(f"deleted {deleted} {table}")
        return EXIT_OK

    return _with_engine(args, run)
