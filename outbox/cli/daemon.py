"""`outbox run`, `migrate` and `check`: the daemon and its schema."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import TYPE_CHECKING

from outbox.cli.runtime import EXIT_OK, env_default, run_async, settings
from outbox.errors import ConfigError, OutboxError

if TYPE_CHECKING:
    from outbox.config import Settings


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
    check.set_defaults(func=_check)


def _run(args: argparse.Namespace) -> int:
    from outbox import app
    from outbox.config_loader import load_settings

    # Until `app.run` installs its handler (its first step), a SIGHUP (`systemctl reload`
    # during a start) must not end the process. Ignored: before the settings are read it has
    # nothing to reload; one in the milliseconds between reading them and `app.run` is lost.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Channels may all come from the registry (issue 17): a file without any is fine.
    loaded = settings(args, need_channels=False)
    roles = {r.strip() for r in str(args.role).split(",") if r.strip()}
    unknown = roles - set(app.ROLES)
    if unknown or not roles:
        raise ConfigError(f"--role: unknown role {sorted(unknown)[0] if unknown else '(none)'}")

    def reload() -> Settings:
        return load_settings(args.config, need_channels=False)

    async def main(stop: asyncio.Event) -> int:
        await app.run(loaded, stop, roles=roles, reload=reload)
        return EXIT_OK

    return run_async(main)


def _migrate(args: argparse.Namespace) -> int:
    from outbox import app
    from outbox.db import migrate
    from outbox.db.engine import create_engine

    loaded = settings(args, need_channels=False)

    async def main(_: asyncio.Event) -> int:
        engine = create_engine(loaded.database_url, pool_size=1, role="migrate")
        try:
            before = await migrate.current_revision(engine)
            if before is not None and before not in migrate.code_revisions():
                # A newer release migrated already (a rollback, or an old Job run again):
                # nothing of ours to apply; say whether this release may run on it.
                print(f"schema: {await app.check_database(engine)}; nothing to migrate")
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
    from outbox import app
    from outbox.db.engine import create_engine
    from outbox.db.registry import ChannelRegistryStore
    from outbox.sealing import keyring_from

    loaded = settings(args, need_channels=False)
    print(f"configuration: ok ({len(loaded.channels)} channels in the file)")

    async def main(_: asyncio.Event) -> int:
        engine = create_engine(loaded.database_url, pool_size=1, role="check")
        try:
            schema = await app.check_database(engine)
            print(f"database: ok, {schema}")
            # A wrong master key fails here as it would fail `outbox run`, naming key ids only.
            opened = await ChannelRegistryStore(engine, keyring_from()).check_sealed()
        finally:
            await engine.dispose()
        print(f"registry: ok, {opened} sealed credentials open with the master key")
        return EXIT_OK

    return run_async(main)
