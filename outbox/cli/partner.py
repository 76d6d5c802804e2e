"""`outbox channels rotate-key` and `outbox channels import`: 360dialog's Partner API verbs.

They join the `channels` group (outbox/cli/__init__.py) and need `[partner]` in the config, the
database, and the master key (OUTBOX_SECRET_KEY_FILE / _ENV) that seals the keys they store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from outbox.cli.runtime import EXIT_ERROR, EXIT_OK, env_default, run_async, settings
from outbox.errors import ConfigError

if TYPE_CHECKING:
    from outbox.config import PartnerConfig
    from outbox.services.onboarding import ImportReport, Onboarding, Rotation


def add_parsers(
    verbs: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    shared = argparse.ArgumentParser(add_help=False)
    env_default(
        shared,
        "--webhook-url",
        env="PARTNER_WEBHOOK_URL",
        help="where 360dialog posts each channel's webhooks, {channel} standing for the "
        "channel id (default: [partner] webhook_url)",
    )
    shared.add_argument("--json", action="store_true", help="print the outcome as JSON")

    rotate = verbs.add_parser(
        "rotate-key",
        parents=[common, shared],
        help="create a new API key through the Partner API, store it sealed, register the "
        "webhook again, check GET /health_status, then switch traffic to it",
    )
    rotate.add_argument("channel", help="the channel's id in the registry")
    env_default(
        rotate,
        "--settle",
        env="ROTATE_SETTLE",
        default=3.0,
        type=float,
        help="seconds the paused channel is given to reach every replica before the old key "
        "is revoked (the registry's changes arrive within 2 s)",
    )
    rotate.set_defaults(func=_rotate)

    pull = verbs.add_parser(
        "import",
        parents=[common, shared],
        help="add the partner's channels (every page) that the registry does not know yet: a "
        "new key for each, its webhook, one registry row; running it again is safe",
    )
    pull.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="the Partner API's filters (repeatable), e.g. client_id=abcCL or status=running",
    )
    pull.add_argument("--enable", action="store_true", help="add them enabled (default: disabled)")
    pull.add_argument("--id-prefix", default="", help="our channel id: prefix + 360dialog's id")
    pull.add_argument("--page-size", type=int, default=100, help="channels per listing request")
    pull.add_argument("--concurrency", type=int, default=4, help="channels set up at once")
    pull.add_argument("--rate", type=float, default=20.0, help="rate_per_second of new channels")
    pull.set_defaults(func=_import)


def _run(
    args: argparse.Namespace,
    settle: timedelta,
    use: Callable[[Onboarding, PartnerConfig, str], Awaitable[int]],
) -> int:
    from outbox import app
    from outbox.db import migrate
    from outbox.db.engine import create_engine
    from outbox.http.partner_client import create_session

    loaded = settings(args, need_channels=False)
    partner = loaded.partner
    if partner is None:
        raise ConfigError(
            "this verb needs a [partner] section: partner_id and api_key_env or api_key_file"
        )
    template = args.webhook_url or partner.webhook_url
    if not template or "{channel}" not in template:
        raise ConfigError(
            "a webhook URL with {channel} in it is needed: --webhook-url or [partner] webhook_url"
        )

    async def main(_: asyncio.Event) -> int:
        engine = create_engine(loaded.database_url, pool_size=2, role="admin")
        try:
            await migrate.check_schema(engine)
            async with create_session(partner.request_timeout) as session:
                service = app.onboarding(engine, partner, session, settle=settle)
                return await use(service, partner, template)
        finally:
            await engine.dispose()

    return run_async(main)


def _rotate(args: argparse.Namespace) -> int:
    if args.settle < 0:
        raise ConfigError("--settle must be 0 or more seconds")

    async def use(service: Onboarding, _: PartnerConfig, template: str) -> int:
        rotation = await service.rotate_key(args.channel, template)
        print(_rotation_json(rotation) if args.json else _rotation_text(rotation))
        return EXIT_OK if rotation.ok else EXIT_ERROR

    return _run(args, timedelta(seconds=float(args.settle)), use)


def _rotation_text(rotation: Rotation) -> str:
    if rotation.ok:
        state = f"channel {rotation.after.value}"
        return f"{rotation.channel}: rotate-key done, {state} ({rotation.message})"
    assert rotation.failed_step is not None
    return (
        f"{rotation.channel}: rotate-key failed at step '{rotation.failed_step.value}': "
        f"{rotation.message}\nthe channel is now {rotation.after.value}"
    )


def _rotation_json(rotation: Rotation) -> str:
    return json.dumps(
        {
            "channel": rotation.channel,
            "ok": rotation.ok,
            "after": rotation.after.value,
            "failed_step": None if rotation.failed_step is None else rotation.failed_step.name,
            "message": rotation.message,
        },
        indent=2,
    )


def _filters(given: list[str]) -> dict[str, str]:
    filters: dict[str, str] = {}
    for item in given:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ConfigError(f"--filter takes FIELD=VALUE, got {item!r}")
        filters[name] = value
    return filters


# aiohttp's default connection pool (the Partner client's session keeps it).
MAX_CONCURRENCY = 100


def _import(args: argparse.Namespace) -> int:
    from outbox.services.onboarding import ImportOptions, Outcome

    if args.page_size < 1 or args.concurrency < 1 or args.rate <= 0:
        raise ConfigError("--page-size, --concurrency and --rate must be greater than 0")
    if args.concurrency > MAX_CONCURRENCY:
        # More would wait for one of the client's connections inside the request's timeout.
        raise ConfigError(f"--concurrency: at most {MAX_CONCURRENCY}")
    filters = _filters(args.filter)

    async def use(service: Onboarding, _: PartnerConfig, template: str) -> int:
        options = ImportOptions(
            webhook_template=template,
            filters=filters,
            enable=args.enable,
            id_prefix=args.id_prefix,
            page_size=args.page_size,
            concurrency=args.concurrency,
            rate_per_second=args.rate,
        )
        report = await service.import_channels(options)
        print(_report_json(report) if args.json else _report_text(report))
        return EXIT_ERROR if report.count(Outcome.FAILED) else EXIT_OK

    return _run(args, timedelta(0), use)


def _report_text(report: ImportReport) -> str:
    from outbox.services.onboarding import Outcome

    lines = [
        f"listed {report.listed}: " + ", ".join(f"{report.count(o)} {o.value}" for o in Outcome)
    ]
    for result in report.results:
        if result.outcome in (Outcome.SKIPPED, Outcome.FAILED):
            step = "" if result.failed_step is None else f" at '{result.failed_step.value}'"
            lines.append(
                f"  {result.partner_channel_id}: {result.outcome.value}{step}: {result.message}"
            )
    return "\n".join(lines)


def _report_json(report: ImportReport) -> str:
    return json.dumps(
        {
            "listed": report.listed,
            "channels": [
                {
                    "partner_channel_id": r.partner_channel_id,
                    "channel": r.channel,
                    "outcome": r.outcome.value,
                    "failed_step": None if r.failed_step is None else r.failed_step.name,
                    "message": r.message,
                }
                for r in report.results
            ],
        },
        indent=2,
    )
