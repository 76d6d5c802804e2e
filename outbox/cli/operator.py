"""`outbox show`, `stats`, `replay` and `cancel`: arguments, the confirmation prompt, progress
and printing (`purge` is cli/purge.py). What replay and cancel do is outbox.services.operations."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from outbox.cli import as_json, purge
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
from outbox.domain.operations import CANCELLABLE, REPLAYABLE
from outbox.errors import ConfigError
from outbox.ports import Selector, utc_now
from outbox.services.operations import (
    Cancel,
    Command,
    Operations,
    Replay,
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
    purge.add_parsers(commands, common)


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
