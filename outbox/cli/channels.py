"""`outbox channels list | show | add | update | disable | enable | remove` and `outbox keys
generate | check | rotate`: the channel registry from the command line.

Credentials are given by reference (`--api-key-env VAR`, `--api-key-file PATH`: read by each
replica) or sealed (`--secrets-stdin`: `api_key=...` lines read from standard input, never from
the command line, where `ps` and shell history would keep them). No output shows a credential:
only how it is held.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from outbox.cli import partner
from outbox.cli.runtime import EXIT_ERROR, EXIT_OK, env_default, with_engine
from outbox.domain.codes import OPEN_STATES
from outbox.errors import ChannelNotFound, ChannelRefused, ConfigError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from outbox.config import Settings
    from outbox.db.registry import ChannelRegistryStore
    from outbox.db.registry_rows import Described, Holding

    _Parsers = argparse._SubParsersAction[argparse.ArgumentParser]


# Channel settings as options: (field, type, help). The same names as a [[channels]] table.
_FIELDS: list[tuple[str, Any, str]] = [
    ("dialect", str, "cloud or onprem"),
    ("base_url", str, "the API's base URL"),
    ("rate_per_second", float, "messages per second (default 20)"),
    ("burst", float, "tokens the shared bucket holds (default a tenth of the rate)"),
    ("namespace", str, "template namespace (on-premise)"),
    ("unknown_policy", str, "resend or hold"),
    ("webhook_auth", str, "basic or none"),
    ("recipient_gap", float, "least seconds between two messages to one recipient"),
    ("max_in_flight", int, "requests in flight per process"),
    ("replay_share", float, "share of the rate replayed rows get (0-1)"),
    ("phone_number_id", str, "Meta's phone number id"),
    ("waba_id", str, "the WhatsApp Business Account id"),
    ("partner_channel_id", str, "360dialog's channel id (Partner API)"),
    ("client_id", str, "the partner's client (tenant)"),
]
_SECRETS = ("api_key", "webhook_username", "webhook_password")


def _flag(parser: argparse.ArgumentParser, flag: str, *, env: str, help: str) -> None:
    """A yes/no option whose default comes from OUTBOX_<env> (1, true or yes)."""
    name = f"OUTBOX_{env}"
    default = os.environ.get(name, "").lower() in ("1", "true", "yes")
    parser.add_argument(flag, action="store_true", default=default, help=f"{help} (env: {name})")


def add_parsers(commands: _Parsers, common: argparse.ArgumentParser) -> None:
    channels = commands.add_parser(
        "channels", parents=[common], help="the channel registry: list, add, change, remove"
    )
    verbs = channels.add_subparsers(dest="verb", required=True, metavar="VERB")
    partner.add_parsers(verbs, common)  # rotate-key, import: the Partner API (cli/partner.py)
    listing = verbs.add_parser("list", parents=[common], help="every channel, one a line")
    _flag(listing, "--json", env="CHANNELS_JSON", help="JSON for scripts")
    listing.set_defaults(func=_list)
    show = verbs.add_parser("show", parents=[common], help="one channel and its open rows")
    show.add_argument("id")
    _flag(show, "--json", env="CHANNELS_JSON", help="JSON for scripts")
    show.set_defaults(func=_show)
    for verb, text in (("add", "add a channel"), ("update", "change a channel's settings")):
        parser = verbs.add_parser(verb, parents=[common], help=text)
        parser.add_argument("id")
        _add_settings(parser, verb)
        _flag(parser, "--json", env="CHANNELS_JSON", help="JSON for scripts")
        parser.set_defaults(func=_add if verb == "add" else _update)
    for verb, text in (
        ("disable", "stop sending: its rows wait, queued, with no attempt charged"),
        ("enable", "send again"),
    ):
        parser = verbs.add_parser(verb, parents=[common], help=text)
        parser.add_argument("id")
        _flag(parser, "--json", env="CHANNELS_JSON", help="JSON for scripts")
        parser.set_defaults(func=_enable if verb == "enable" else _disable)
    remove = verbs.add_parser(
        "remove",
        parents=[common],
        help="delete a channel; refused while it has open rows unless --cancel-open",
    )
    remove.add_argument("id")
    _flag(
        remove,
        "--cancel-open",
        env="CHANNELS_CANCEL_OPEN",
        help="cancel its queued and unknown rows first (disable it and let rows in flight end)",
    )
    _flag(remove, "--json", env="CHANNELS_JSON", help="JSON for scripts")
    remove.set_defaults(func=_remove)
    _add_keys(commands, common)


def _add_settings(parser: argparse.ArgumentParser, verb: str) -> None:
    prefix = "CHANNEL_"
    for name, kind, text in _FIELDS:
        env_default(
            parser, f"--{name.replace('_', '-')}", env=f"{prefix}{name.upper()}", type=kind,
            help=text,
        )  # fmt: skip
    for name in _SECRETS:
        flag = name.replace("_", "-")
        for way, where in (("env", "environment variable"), ("file", "file")):
            env_default(
                parser,
                f"--{flag}-{way}",
                env=f"{prefix}{name.upper()}_{way.upper()}",
                help=f"each replica reads the {name} from this {where}",
            )
    _flag(
        parser,
        "--secrets-stdin",
        env="CHANNEL_SECRETS_STDIN",
        help="read api_key=, webhook_username=, webhook_password= lines from standard input and "
        "store them sealed under the master key (OUTBOX_SECRET_KEY_FILE or _ENV)",
    )
    if verb == "add":
        _flag(parser, "--disabled", env="CHANNEL_DISABLED", help="add it disabled")


def _plain(args: argparse.Namespace) -> dict[str, Any]:
    values = {name: getattr(args, name) for name, _, _ in _FIELDS}
    values = {k: v for k, v in values.items() if v is not None}
    if "recipient_gap" in values:
        from datetime import timedelta

        values["recipient_gap"] = timedelta(seconds=values["recipient_gap"])
    return values


def _held(args: argparse.Namespace) -> dict[str, Holding | None]:
    from outbox.config import Secret

    held: dict[str, Holding | None] = {}
    for name in _SECRETS:
        env, file = getattr(args, f"{name}_env"), getattr(args, f"{name}_file")
        if env and file:
            raise ConfigError(f"give --{name.replace('_', '-')}-env or -file, not both")
        if env:
            held[name] = ("env", env)
        elif file:
            held[name] = ("file", os.path.abspath(file))
    if args.secrets_stdin:
        for number, line in enumerate(sys.stdin.read().splitlines(), start=1):
            if not line.strip():
                continue
            name, sep, value = line.partition("=")
            name = name.strip()
            if not sep or name not in _SECRETS or not value:
                raise ConfigError(
                    f"standard input line {number}: expected api_key=, webhook_username= or"
                    " webhook_password= with a value"
                )
            if name in held:
                raise ConfigError(f"{name} is given twice")
            # As given: whitespace around the value is refused, not trimmed (issue 19 §3).
            held[name] = ("sealed", Secret(value))
    return held


def _registry(engine: AsyncEngine) -> ChannelRegistryStore:
    from outbox.db.registry import ChannelRegistryStore
    from outbox.sealing import keyring_from

    return ChannelRegistryStore(engine, keyring_from())


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
        found = await _registry(engine).described()
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
        found = await _registry(engine).described(args.id)
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
    plain, held = _plain(args), _held(args)
    if "api_key" not in held:
        raise ConfigError("an API key is needed: --api-key-env, --api-key-file or --secrets-stdin")

    async def run(engine: AsyncEngine, _: Settings) -> int:
        registry = _registry(engine)
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
    plain, held = _plain(args), _held(args)
    if not plain and not held:
        raise ConfigError("nothing to change: give at least one setting")

    async def run(engine: AsyncEngine, _: Settings) -> int:
        await _registry(engine).update(args.id, plain, held)
        return _done(args, "updated", changed=sorted([*plain, *held]))

    return with_engine(args, run)


def _enable(args: argparse.Namespace) -> int:
    return _set_enabled(args, True)


def _disable(args: argparse.Namespace) -> int:
    return _set_enabled(args, False)


def _set_enabled(args: argparse.Namespace, enabled: bool) -> int:
    async def run(engine: AsyncEngine, _: Settings) -> int:
        await _registry(engine).set_enabled(args.id, enabled)
        return _done(args, "enabled" if enabled else "disabled")

    return with_engine(args, run)


def _remove(args: argparse.Namespace) -> int:
    from outbox.db.inspection import InspectionStore
    from outbox.db.operator_store import OperatorStore
    from outbox.domain.operations import CANCELLABLE
    from outbox.ports import Selector, utc_now
    from outbox.services.operations import Cancel, Operations

    async def run(engine: AsyncEngine, _: Settings) -> int:
        registry = _registry(engine)
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


def _add_keys(commands: _Parsers, common: argparse.ArgumentParser) -> None:
    keys = commands.add_parser("keys", parents=[common], help="the master key sealing channel keys")
    verbs = keys.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser(
        "generate", parents=[common], help="print a new master key (redirect it to a file)"
    ).set_defaults(func=_generate)
    verbs.add_parser(
        "check", parents=[common], help="open every sealed credential with the given master keys"
    ).set_defaults(func=_check)
    verbs.add_parser(
        "rotate",
        parents=[common],
        help="seal every credential again under the first master key; old keys may then go",
    ).set_defaults(func=_rotate)


def _generate(_: argparse.Namespace) -> int:
    from outbox.sealing import generate_key

    print(generate_key())
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    async def run(engine: AsyncEngine, _: Settings) -> int:
        count = await _registry(engine).check_sealed()
        print(f"master keys open all {count} sealed credentials")
        return EXIT_OK

    return with_engine(args, run)


def _rotate(args: argparse.Namespace) -> int:
    async def run(engine: AsyncEngine, _: Settings) -> int:
        registry = _registry(engine)
        await registry.check_sealed()  # every row opens before any is rewritten
        count = await registry.reseal()
        print(f"resealed {count} channels under the first master key; old keys may now go")
        return EXIT_OK

    return with_engine(args, run)
