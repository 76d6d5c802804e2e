"""Which rows `outbox replay` and `cancel` touch: the selector options, and the `Selector`
they make."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, datetime

from outbox.cli.as_json import add_json_flag
from outbox.cli.render import parse_time
from outbox.cli.runtime import env_default
from outbox.domain.models import State
from outbox.errors import ConfigError
from outbox.ports import Selector


# Selectors have no OUTBOX_* fallback on purpose: a variable left set in a shell must never
# widen what a replay or cancel touches.
def add_selectors(parser: argparse.ArgumentParser, states: Sequence[State], default: State) -> None:
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
    add_json_flag(parser)
    parser.add_argument("--reason", help="a note kept with each row's lineage")
    env_default(
        parser,
        "--actor",
        env="ACTOR",
        default=_default_actor(),
        help="who is acting, recorded in the row's lineage",
    )
    env_default(
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


def selector(args: argparse.Namespace, default: State) -> Selector:
    """The rows to look at. Rows named by --id are looked at in any state (unless --state is
    given), so that one the command may not touch is listed with the reason."""
    now = datetime.now(UTC)
    try:
        since = parse_time(args.since, now) if args.since else None
        until = parse_time(args.until, now) if args.until else None
    except ValueError as exc:
        raise ConfigError(f"--since/--until: {exc}") from None
    if args.show < 0:
        raise ConfigError("--show must be 0 or more")
    states = wanted(args, default)
    if args.ids and not args.states:
        states = tuple(State)
    chosen = Selector(
        states=states,
        ids=tuple(args.ids),
        channel=args.channel,
        error_codes=tuple(args.error_codes),
        since=since,
        until=until,
        recipient=args.recipient,
    )
    if not chosen.narrows() and not args.all:
        raise ConfigError(
            "no selector given: name --id, --channel, --error-code, --since, --until or "
            "--recipient, or say --all"
        )
    return chosen


def wanted(args: argparse.Namespace, default: State) -> tuple[State, ...]:
    """The states the command acts on: those given by --state, or its default."""
    return tuple(State(s) for s in args.states) if args.states else (default,)
