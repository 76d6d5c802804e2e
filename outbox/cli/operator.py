"""`outbox show`, `stats`, `replay`, `cancel` and `purge`: arguments, the confirmation prompt,
progress and printing. What replay, cancel and purge do is outbox.services.operations."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from outbox.cli import as_json
from outbox.cli.render import (
    Progress,
    format_message,
    format_stats,
    format_summary,
    format_tally,
    parse_duration,
)
from outbox.cli.runtime import EXIT_ERROR, EXIT_OK, env_default, with_engine
from outbox.cli.selection import add_selectors, selector, wanted
from outbox.domain.models import State
from outbox.domain.operations import CANCELLABLE, REPLAYABLE, Purged
from outbox.errors import ConfigError
from outbox.ports import Selector, utc_now
from outbox.services.operations import (
    DEFAULT_KEEP_KEYS,
    Cancel,
    Command,
    Operations,
    Purge,
    Replay,
    Retention,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from outbox.config import Settings


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    show = commands.add_parser(
        "show",
        parents=[common],
        help="one message: its columns, attempts and status history",
    )
    show.add_argument("id", type=int, help="the message's id (outbox.messages.id)")
    as_json.add_json_flag(show)
    show.set_defaults(func=_show)

    stats = commands.add_parser(
        "stats",
        parents=[common],
        help="per channel: counts per state, sent lately, oldest due row, paused or throttled",
    )
    env_default(
        stats,
        "--recent-minutes",
        env="STATS_RECENT_MINUTES",
        default=5.0,
        type=float,
        help="the period 'sent lately' counts over",
    )
    as_json.add_json_flag(stats)
    stats.set_defaults(func=_stats)

    _add_replay(commands, common)
    _add_cancel(commands, common)
    _add_purge(commands, common)


def _show(args: argparse.Namespace) -> int:
    from outbox.db.inspection import InspectionStore

    async def read(engine: AsyncEngine, _: Settings) -> int:
        store = InspectionStore(engine)
        row = await store.message(args.id)
        if row is None:
            print(f"outbox: no message with id {args.id}", file=sys.stderr)
            return EXIT_ERROR
        history, actions = await store.history(args.id), await store.actions(args.id)
        waiting, opt_outs = await store.waiting(args.id), await store.opt_outs(args.id)
        if args.json:
            print(as_json.dump(as_json.message(row, history, actions, waiting, opt_outs)))
            return EXIT_OK
        print(format_message(row, history, actions, waiting, opt_outs))
        return EXIT_OK

    return with_engine(args, read)


def _stats(args: argparse.Namespace) -> int:
    from outbox.cli.health import format_health, health_data
    from outbox.db.inspection import InspectionStore

    if not args.recent_minutes > 0:
        raise ConfigError("--recent-minutes must be greater than 0")

    async def read(engine: AsyncEngine, settings: Settings) -> int:
        store = InspectionStore(engine)
        configured = [c.id for c in settings.channels]
        stats = await store.channel_stats(configured, args.recent_minutes * 60)
        health = await health_data(engine)  # templates and accounts (issue 18 §5)
        if args.json:
            print(as_json.dump(as_json.stats(stats, args.recent_minutes, *health)))
            return EXIT_OK
        print(format_stats(stats, args.recent_minutes))
        print(format_health(*health))
        return EXIT_OK

    return with_engine(args, read)


def _add_replay(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
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
    add_selectors(replay, sorted(REPLAYABLE), State.FAILED)
    replay.add_argument(
        "--force", action="store_true", help="replay rows that were sent or delivered too"
    )
    env_default(
        replay,
        "--expires-in",
        env="REPLAY_EXPIRES_IN",
        help="give replayed rows a new expires_at this far ahead (e.g. 2h); needed for rows "
        "whose expires_at has passed",
    )
    replay.set_defaults(func=_replay)


def _add_cancel(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    cancel = commands.add_parser(
        "cancel",
        parents=[common],
        help="cancel queued messages (or unknown ones) by the same selectors as replay",
    )
    add_selectors(cancel, sorted(CANCELLABLE), State.QUEUED)
    cancel.set_defaults(func=_cancel)


def _add_purge(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    purge = commands.add_parser(
        "purge",
        parents=[common],
        help="delete finished messages, processed webhook rows, old orphan statuses and contacts",
        description="Deletes, in small batches that each commit on their own, messages in a "
        "terminal state (read, failed, expired, cancelled) not updated for --older-than, with "
        "their status history and lineage; webhook rows processed before then; orphan "
        "statuses older than that; and contacts (outbox.contacts) whose last inbound message "
        "is older than that and than 24 hours, untouched since. Rows another session holds "
        "are skipped. The idempotency keys of the deleted messages are kept (outbox."
        "idempotency_keys) until --keep-keys after their message was created: a producer's "
        "insert with such a key stays a no-op.",
    )
    env_default(
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
    env_default(
        purge,
        "--batch-size",
        env="PURGE_BATCH_SIZE",
        default=1000,
        type=int,
        help="rows deleted per transaction",
    )
    env_default(
        purge,
        "--keep-keys",
        env="PURGE_KEEP_KEYS",
        default=f"{DEFAULT_KEEP_KEYS.days}d",
        help="how long a purged message's idempotency key still refuses a re-insert, from the "
        "message's creation (at least --older-than; default %(default)s)",
    )
    purge.add_argument("--dry-run", action="store_true", help="count what would go; delete nothing")
    as_json.add_json_flag(purge)
    purge.set_defaults(func=_purge)


def _replay(args: argparse.Namespace) -> int:
    chosen = selector(args, State.FAILED)
    try:
        expires_in = parse_duration(args.expires_in) if args.expires_in else None
    except ValueError as exc:
        raise ConfigError(f"--expires-in: {exc}") from None

    def command(settings: Settings) -> Replay:
        return Replay(
            wanted=wanted(args, State.FAILED),
            actor=args.actor,
            window_margin=settings.sender.window_margin,
            force=args.force,
            expires_in=expires_in,
            note=args.reason,
        )

    return _operate(args, chosen, command)


def _cancel(args: argparse.Namespace) -> int:
    chosen = selector(args, State.QUEUED)

    def command(_: Settings) -> Cancel:
        return Cancel(wanted=wanted(args, State.QUEUED), actor=args.actor, note=args.reason)

    return _operate(args, chosen, command)


def _operate(
    args: argparse.Namespace, chosen: Selector, command_for: Callable[[Settings], Command]
) -> int:
    """Select, decide and show; then (unless a dry run or declined) write with progress."""
    from outbox.db.operator_store import OperatorStore

    async def run(engine: AsyncEngine, settings: Settings) -> int:
        command = command_for(settings)
        operations = Operations(OperatorStore(engine), clock=utc_now)
        tally = await operations.select(command, chosen, show=args.show)
        if args.json and (args.dry_run or not tally.chosen):
            print(as_json.dump(as_json.tally(tally, dry_run=True)))
            return EXIT_OK
        if not tally.acted and not tally.skipped:
            print(f"no message matches; nothing to {command.verb}")
            return EXIT_OK
        if not args.json:
            print(format_tally(tally))
        if args.dry_run or not tally.chosen:
            print(format_summary(tally, dry_run=True))
            return EXIT_OK
        if not args.yes and sys.stdin.isatty() and not args.json:
            prompt = f"{command.verb} {tally.acted} messages? [y/N] "
            answer = await asyncio.to_thread(input, prompt)
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing changed")
                return EXIT_ERROR
        progress = Progress(command.verb, tally.acted, sys.stderr)
        await operations.apply(command, tally, progress.advance)
        progress.close()
        if args.json:
            print(as_json.dump(as_json.tally(tally, dry_run=False)))
            return EXIT_OK
        print(format_summary(tally, dry_run=False))
        return EXIT_OK

    return with_engine(args, run)


def _purge(args: argparse.Namespace) -> int:
    from outbox.db.retention import RetentionStore

    try:
        older_than = parse_duration(str(args.older_than))
    except ValueError as exc:
        raise ConfigError(f"--older-than: {exc}") from None
    if older_than < timedelta(hours=1):
        raise ConfigError("--older-than must be at least 1h")
    if args.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    try:
        keep_keys = parse_duration(str(args.keep_keys))
    except ValueError as exc:
        raise ConfigError(f"--keep-keys: {exc}") from None
    if keep_keys < older_than:
        raise ConfigError("--keep-keys must be at least --older-than")
    purge = Purge(
        older_than, args.batch_size, include_delivered=args.include_delivered, keep_keys=keep_keys
    )

    done: dict[Purged, int] = {}

    def deleted(table: Purged, count: int) -> None:
        done[table] = count
        if not args.json:
            print(f"deleted {count} {table.label}")

    async def run(engine: AsyncEngine, _: Settings) -> int:
        retention = Retention(RetentionStore(engine), clock=utc_now)
        cutoff, counts = await retention.count(purge)
        if not args.json:
            print(f"older than {cutoff.isoformat(timespec='seconds')}:")
            for table, count in counts.items():
                print(f"  {table.label:<16}{count:>10}")
        if args.dry_run:
            print(
                as_json.dump(as_json.purge(cutoff, counts, None))
                if args.json
                else "dry run: nothing deleted"
            )
            return EXIT_OK
        await retention.purge(purge, cutoff, deleted)
        if args.json:
            print(as_json.dump(as_json.purge(cutoff, counts, done)))
        return EXIT_OK

    return with_engine(args, run)
