"""`outbox channels list | show | add | update | disable | enable | remove` and `outbox keys
generate | check | rotate` (cli/keys.py): the channel registry from the command line.

Credentials are given by reference (`--api-key-env VAR`, `--api-key-file PATH`: read by each
replica) or sealed (`--secrets-stdin`: `api_key=...` lines read from standard input, never from
the command line, where `ps` and shell history would keep them). No output shows a credential:
only how it is held.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from outbox.cli import keys, partner
from outbox.cli.channel_options import (
    add_channel_settings,
    env_flag,
    held_settings,
    plain_settings,
    registry_store,
)
from outbox.cli.runtime import EXIT_ERROR, EXIT_OK, with_engine
from outbox.domain.codes import OPEN_STATES
from outbox.errors import ChannelNotFound, ChannelRefused, ConfigError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from outbox.config import Settings
    from outbox.db.registry_rows import Described

    _Parsers = argparse._SubParsersAction[argparse.ArgumentParser]


def add_parsers(commands: _Parsers, common: argparse.ArgumentParser) -> None:
    channels = commands.add_parser(
        "channels", parents=[common], help="the channel registry: list, add, change, remove"
    )
    verbs = channels.add_subparsers(dest="verb", required=True, metavar="VERB")
    partner.add_parsers(verbs, common)  # rotate-key, import: the Partner API (cli/partner.py)
    listing = verbs.add_parser("list", parents=[common], help="every channel, one a line")
    env_flag(listing, "--json", env="CHANNELS_JSON", help="JSON for scripts")
    listing.set_defaults(func=_list)
    show = verbs.add_parser("show", parents=[common], help="one channel and its open rows")
    show.add_argument("id")
    env_flag(show, "--json", env="CHANNELS_JSON", help="JSON for scripts")
    show.set_defaults(func=_show)
    for verb, text in (("add", "add a channel"), ("update", "change a channel's settings")):
        parser = verbs.add_parser(verb, parents=[common], help=text)
        parser.add_argument("id")
        add_channel_settings(parser, verb)
        env_flag(parser, "--json", env="CHANNELS_JSON", help="JSON for scripts")
        parser.set_defaults(func=_add if verb == "add" else _update)
    for verb, text in (
        ("disable", "stop sending: its rows wait, queued, with no attempt charged"),
        ("enable", "send again"),
    ):
        parser = verbs.add_parser(verb, parents=[common], help=text)
        parser.add_argument("id")
        env_flag(parser, "--json", env="CHANNELS_JSON", help="JSON for scripts")
        parser.set_defaults(func=_enable if verb == "enable" else _disable)
    remove = verbs.add_parser(
        "remove",
        parents=[common],
        help="delete a channel; refused while it has open rows unless --cancel-open",
    )
    remove.add_argument("id")
    env_flag(
        remove,
        "--cancel-open",
        env="CHANNELS_CANCEL_OPEN",
        help="cancel its queued and unknown rows first (disable it and let rows in flight end)",
    )
    env_flag(remove, "--json", env="CHANNELS_JSON", help="JSON for scripts")
    remove.set_defaults(func=_remove)
    keys.add_parsers(commands, common)


def _as_json(described: Described) -> dict[str, Any]:
    return {
        "id": described.id,
        "source": described.source,
        "enabled": described.enabled,
        **described.fields,
        "credentials": described.credentials,
    }


def _list(args: argparse.Namespace) -> int:
    async def run(engine: AsyncEngine, _: Settings) -> int:
        found = await registry_store(engine).described()
        if args.json:
            print(json.dumps([_as_json(d) for d in found], indent=2))
            return EXIT_OK
        if not found:
            print("no channels in the registry")
            return EXIT_OK
        print(f"{'id':<24} {'source':<9} {'enabled':<8} {'dialect':<7} {'rate':>8}  api key")
        for d in found:
            print(
                f"{d.id:<24} {d.source:<9} {'yes' if d.enabled else 'no':<8} "
                f"{d.fields['dialect']:<7} {d.fields['rate_per_second']:>8g}  "
                f"{d.credentials.get('api_key', '(in the config file)')}"
            )
        return EXIT_OK

    return with_engine(args, run)


def _show(args: argparse.Namespace) -> int:
    from outbox.db.inspection import InspectionStore

    async def run(engine: AsyncEngine, _: Settings) -> int:
        found = await registry_store(engine).described(args.id)
        if not found:
            raise ChannelNotFound(f"no channel {args.id!r} in the registry")
        shown = _as_json(found[0])
        # Every open state, 0 when none: --json keys stay the same (issue 19 §4).
        found_open = await InspectionStore(engine).open_rows(args.id)
        shown["open_rows"] = {s.value: found_open.get(s.value, 0) for s in OPEN_STATES}
        if args.json:
            print(json.dumps(shown, indent=2))
            return EXIT_OK
        for key, value in shown.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
            print(f"{key:<20} {'-' if value is None else value}")
        return EXIT_OK

    return with_engine(args, run)


def _done(args: argparse.Namespace, action: str, **extra: Any) -> int:
    if args.json:
        print(json.dumps({"id": args.id, "action": action, **extra}))
    else:
        print(f"channel {args.id!r} {action}" + "".join(f", {k}: {v}" for k, v in extra.items()))
    return EXIT_OK


def _add(args: argparse.Namespace) -> int:
    plain, held = plain_settings(args), held_settings(args)
    if "api_key" not in held:
        raise ConfigError("an API key is needed: --api-key-env, --api-key-file or --secrets-stdin")

    async def run(engine: AsyncEngine, _: Settings) -> int:
        registry = registry_store(engine)
        existing = await registry.described(args.id)
        if existing:
            raise ChannelRefused(
                f"channel {args.id!r} exists already ({existing[0].source}): use `outbox"
                " channels update`"
            )
        await registry.add_held(args.id, plain, held, enabled=not args.disabled)
        return _done(args, "added", enabled=not args.disabled)

    return with_engine(args, run)


def _update(args: argparse.Namespace) -> int:
    plain, held = plain_settings(args), held_settings(args)
    if not plain and not held:
        raise ConfigError("nothing to change: give at least one setting")

    async def run(engine: AsyncEngine, _: Settings) -> int:
        await registry_store(engine).update(args.id, plain, held)
        return _done(args, "updated", changed=sorted([*plain, *held]))

    return with_engine(args, run)


def _enable(args: argparse.Namespace) -> int:
    return _set_enabled(args, True)


def _disable(args: argparse.Namespace) -> int:
    return _set_enabled(args, False)


def _set_enabled(args: argparse.Namespace, enabled: bool) -> int:
    async def run(engine: AsyncEngine, _: Settings) -> int:
        await registry_store(engine).set_enabled(args.id, enabled)
        return _done(args, "enabled" if enabled else "disabled")

    return with_engine(args, run)


def _remove(args: argparse.Namespace) -> int:
    from outbox.db.inspection import InspectionStore
    from outbox.db.operator_store import OperatorStore
    from outbox.domain.operations import CANCELLABLE
    from outbox.ports import Selector, utc_now
    from outbox.services.operations import Cancel, Operations

    async def run(engine: AsyncEngine, _: Settings) -> int:
        registry = registry_store(engine)
        inspection = InspectionStore(engine)
        if not await registry.described(args.id):
            raise ChannelNotFound(f"no channel {args.id!r} in the registry")
        cancelled = 0
        if args.cancel_open:
            operations = Operations(OperatorStore(engine), clock=utc_now)
            command = Cancel(tuple(CANCELLABLE), actor="outbox channels remove", note="removed")
            chosen = Selector(tuple(CANCELLABLE), channel=args.id)
            tally = await operations.select(command, chosen, show=0)
            await operations.apply(command, tally, lambda _: None)
            cancelled = len(tally.chosen)
        still = await inspection.open_rows(args.id)
        if still:
            counts = ", ".join(f"{n} {state}" for state, n in sorted(still.items()))
            hint = (
                "rows in flight: disable the channel, let them finish, then run this again"
                if args.cancel_open
                else "give --cancel-open to cancel them, or disable the channel instead"
            )
            print(f"outbox: error: channel {args.id!r} has open rows ({counts}): {hint}",
                  file=sys.stderr)  # fmt: skip
            return EXIT_ERROR
        await registry.remove(args.id)
        return _done(args, "removed", cancelled=cancelled)

    return with_engine(args, run)
