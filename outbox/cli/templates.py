"""`outbox templates list` and `outbox templates resume NAME`: the template registry (issue 18).

`resume` tells every replica that a template paused at Meta is active again (unpaused in
WhatsApp Manager, say, when no webhook reported it): its held rows go back to the queue at once.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from outbox.cli import as_json
from outbox.cli.runtime import EXIT_ERROR, EXIT_OK, env_default, with_engine

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from outbox.config import Settings


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    templates = commands.add_parser(
        "templates", parents=[common], help="the template registry: list, resume"
    )
    verbs = templates.add_subparsers(dest="templates_command", required=True, metavar="VERB")
    listing = verbs.add_parser(
        "list", parents=[common], help="templates, held ones first, with the rows each holds"
    )
    as_json.add_json_flag(listing)
    listing.set_defaults(func=_list)
    resume = verbs.add_parser(
        "resume",
        parents=[common],
        help="mark a template active again: the rows it holds go back to the queue",
    )
    resume.add_argument("name", help="the template's name")
    env_default(resume, "--language", env="TEMPLATE_LANGUAGE", help="only this language code")
    env_default(resume, "--waba", env="TEMPLATE_WABA", help="only this WABA id (or channel id)")
    resume.set_defaults(func=_resume)


def _list(args: argparse.Namespace) -> int:
    from outbox.db.templates import TemplateStore

    async def read(engine: AsyncEngine, _: Settings) -> int:
        found = await TemplateStore(engine).health()
        if args.json:
            print(as_json.dump(as_json.templates(found)))
            return EXIT_OK
        for t in found:
            print(
                f"{t.key.waba_id}  {t.key.name}  {t.key.language}  status={t.status or '-'}"
                f"  category={t.category or '-'}  quality={t.quality or '-'}"
                f"  held_rows={t.held_rows}  updated={t.updated_at.isoformat()}"
            )
        return EXIT_OK

    return with_engine(args, read)


def _resume(args: argparse.Namespace) -> int:
    from outbox.db.templates import TemplateStore

    async def run(engine: AsyncEngine, _: Settings) -> int:
        resumed = await TemplateStore(engine).resume(
            args.name, language=args.language, waba_id=args.waba
        )
        if not resumed:
            print(f"outbox: no template {args.name!r} in the registry", file=sys.stderr)
            return EXIT_ERROR
        for recorded in resumed:
            print(
                f"resumed {args.name} (id {recorded.info.id}, was {recorded.previous_status}):"
                f" {recorded.released} held rows back in the queue"
            )
        return EXIT_OK

    return with_engine(args, run)
