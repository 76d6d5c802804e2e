"""What the `outbox channels` and `outbox keys` verbs take: a channel's settings as options
(the same names as a [[channels]] table), its credentials by reference or sealed from standard
input, and the registry they act on, with the master keys the environment names.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from outbox.cli.runtime import env_default
from outbox.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from outbox.db.registry import ChannelRegistryStore
    from outbox.db.registry_rows import Holding


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


def env_flag(parser: argparse.ArgumentParser, flag: str, *, env: str, help: str) -> None:
    """A yes/no option whose default comes from OUTBOX_<env> (1, true or yes)."""
    name = f"OUTBOX_{env}"
    default = os.environ.get(name, "").lower() in ("1", "true", "yes")
    parser.add_argument(flag, action="store_true", default=default, help=f"{help} (env: {name})")


def add_channel_settings(parser: argparse.ArgumentParser, verb: str) -> None:
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
    env_flag(
        parser,
        "--secrets-stdin",
        env="CHANNEL_SECRETS_STDIN",
        help="read api_key=, webhook_username=, webhook_password= lines from standard input and "
        "store them sealed under the master key (OUTBOX_SECRET_KEY_FILE or _ENV)",
    )
    if verb == "add":
        env_flag(parser, "--disabled", env="CHANNEL_DISABLED", help="add it disabled")


def plain_settings(args: argparse.Namespace) -> dict[str, Any]:
    values = {name: getattr(args, name) for name, _, _ in _FIELDS}
    values = {k: v for k, v in values.items() if v is not None}
    if "recipient_gap" in values:
        from datetime import timedelta

        values["recipient_gap"] = timedelta(seconds=values["recipient_gap"])
    return values


def held_settings(args: argparse.Namespace) -> dict[str, Holding | None]:
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


def registry_store(engine: AsyncEngine) -> ChannelRegistryStore:
    from outbox.db.registry import ChannelRegistryStore
    from outbox.sealing import keyring_from

    return ChannelRegistryStore(engine, keyring_from())
