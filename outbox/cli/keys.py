"""`outbox keys generate | check | rotate`: the master key that seals channel credentials in
the registry."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from outbox.cli.channel_options import registry_store
from outbox.cli.runtime import EXIT_OK, with_engine

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from outbox.config import Settings

    _Parsers = argparse._SubParsersAction[argparse.ArgumentParser]


def add_parsers(commands: _Parsers, common: argparse.ArgumentParser) -> None:
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
        count = await registry_store(engine).check_sealed()
        print(f"master keys open all {count} sealed credentials")
        return EXIT_OK

    return with_engine(args, run)


def _rotate(args: argparse.Namespace) -> int:
    async def run(engine: AsyncEngine, _: Settings) -> int:
        registry = registry_store(engine)
        await registry.check_sealed()  # every row opens before any is rewritten
        count = await registry.reseal()
        print(f"resealed {count} channels under the first master key; old keys may now go")
        return EXIT_OK

    return with_engine(args, run)
