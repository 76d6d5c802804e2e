"""`outbox run`, `migrate` and `check`: the daemon and its schema."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from outbox.cli import as_json
from outbox.cli.runtime import (
    EXIT_ERROR,
    EXIT_OK,
    collect_for_a_daemon,
    env_default,
    freeze_startup,
    run_async,
    settings,
)
from outbox.errors import ConfigError, DatabaseError, OutboxError

if TYPE_CHECKING:
    from outbox.config import ChannelConfig, Settings


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    run = commands.add_parser("run", parents=[common], help="run the daemon")
    env_default(
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
    check.add_argument(
        "--skip-api",
        action="store_true",
        help="do not ask the API whether each channel's key is accepted and its webhook URL is "
        "ours (for a start-up check that must not depend on 360dialog)",
    )
    as_json.add_json_flag(check)
    check.set_defaults(func=_check)


def _run(args: argparse.Namespace) -> int:
    collect_for_a_daemon()  # before the imports: they are start-up's largest part
    from outbox import app
    from outbox.config_loader import load_settings

    # Until `app.run` installs its handler (its first step), a SIGHUP (`systemctl reload`
    # during a start) must not end the process. Ignored: before the settings are read it has
    # nothing to reload; one in the milliseconds between reading them and `app.run` is lost.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    roles = {r.strip() for r in str(args.role).split(",") if r.strip()}
    unknown = roles - set(app.ROLES)
    if unknown or not roles:
        raise ConfigError(f"--role: unknown role {sorted(unknown)[0] if unknown else '(none)'}")
    # Channels may all come from the registry (issue 17): a file without any is fine. Only a
    # sender reads API keys (issue 19): a receiver's host need not hold them at all.
    sends = "sender" in roles
    loaded = settings(args, need_channels=False, api_keys=sends)

    def reload() -> Settings:
        return load_settings(args.config, need_channels=False, api_keys=sends)

    async def main(stop: asyncio.Event) -> int:
        await app.run(
            loaded, stop, roles=roles, reload=reload, on_started=lambda _: freeze_startup()
        )
        return EXIT_OK

    return run_async(main)


def _migrate(args: argparse.Namespace) -> int:
    from outbox.db import migrate
    from outbox.db.engine import create_engine

    loaded = settings(args, need_channels=False)

    async def main(_: asyncio.Event) -> int:
        # Behind PgBouncer, on the direct URL (listen_database_url) when there is one.
        url, pooler = loaded.direct_database()
        engine = create_engine(url, pool_size=1, role="migrate", pooler=pooler)
        try:
            before = await migrate.current_revision(engine)
            if before is not None and before not in migrate.code_revisions():
                # A newer release migrated already (a rollback, or an old Job run again):
                # nothing of ours to apply; say whether this release may run on it.
                print(f"schema: {await migrate.check_schema(engine)}; nothing to migrate")
                return EXIT_OK
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
    from outbox.cli.api_check import ChannelCheck, check_channels

    loaded = settings(args, need_channels=False)
    report: dict[str, Any] = {
        "ok": False,
        "configuration": {"ok": True, "channels": len(loaded.channels)},
        "database": {"ok": False, "schema": None, "error": None},
        "registry": {"ok": False, "sealed_open": None},
        "channels": [],
    }
    say = _quiet if args.json else print
    say(f"configuration: ok ({len(loaded.channels)} channels in the file)")

    async def main(_: asyncio.Event) -> int:
        channels = list(loaded.channels)
        try:
            channels += await _check_database(loaded, report, say)
        except DatabaseError as exc:
            from outbox.db.errors import describe

            report["database"]["error"] = describe(exc)
            print(f"outbox: error: {describe(exc)}", file=sys.stderr)
        checks: list[ChannelCheck] = []
        if not args.skip_api:
            webhook_url = loaded.partner.webhook_url if loaded.partner else None
            checks = await check_channels(channels, loaded.sender.request_timeout, webhook_url)
        for check in checks:
            say(check.line())
        report["channels"] = [c.as_json() for c in checks]
        report["ok"] = report["database"]["ok"] and all(c.ok for c in checks)
        if args.json:
            print(as_json.dump(report))
        return EXIT_OK if report["ok"] else EXIT_ERROR

    return run_async(main)


def _quiet(_: str) -> None:
    """`say` under --json: the one JSON document is all that goes to stdout."""


async def _check_database(
    loaded: Settings, report: dict[str, Any], say: Callable[[str], None]
) -> list[ChannelConfig]:
    """The schema, the sealed credentials, and the registry's enabled channels to check."""
    from outbox.db import migrate
    from outbox.db.engine import create_engine
    from outbox.db.errors import translated_errors
    from outbox.db.registry import ChannelRegistryStore
    from outbox.sealing import keyring_from

    engine = create_engine(
        loaded.database_url, pool_size=1, role="check", pooler=loaded.database.pooler
    )
    try:
        schema = await migrate.check_schema(engine)
        report["database"] = {"ok": True, "schema": schema, "error": None}
        say(f"database: ok, {schema}")
        # A wrong master key fails here as it would fail `outbox run`, naming key ids only.
        with translated_errors():
            registry = ChannelRegistryStore(engine, keyring_from())
            opened = await registry.check_sealed()
            snapshot = await registry.snapshot()
    finally:
        await engine.dispose()
    report["registry"] = {"ok": True, "sealed_open": opened}
    say(f"registry: ok, {opened} sealed credentials open with the master key")
    return [r.config for r in snapshot.channels if r.enabled and not r.from_file]
