"""What every command shares: OUTBOX_* option defaults, exit codes, the event loop with TERM and
INT, settings with their log configuration, and a checked database engine.

Heavy modules (SQLAlchemy, the composition root) are imported when a command runs, not when the
parser is built, so that `outbox --help` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from outbox.config import Settings

EXIT_OK, EXIT_ERROR, EXIT_CONFIG = 0, 1, 2

# Issue 16: CPython collects its young generation every 700 net allocations, a setting made for
# short scripts. A sender's per-message objects (its task, its request and answer) live for a
# request, so at 200 in flight most outlived that, were promoted, and made the older
# generations collect over the whole heap: ~1,900 young and 15 full collections per 20,000
# messages, a fifth to a quarter of the sender's CPU (`python -m tests.bench.sender_trace`).
YOUNG_GENERATION = 10_000


def env_default(parser: argparse.ArgumentParser, *flags: str, env: str, **kwargs: Any) -> None:
    """Add an option whose default comes from OUTBOX_<env>, and say so in --help; with
    `default=argparse.SUPPRESS` the option sets nothing unless given."""
    name = f"OUTBOX_{env}"
    default = kwargs.pop("default", None)
    if default is not argparse.SUPPRESS:
        default = os.environ.get(name, default)
    help_text = kwargs.pop("help", "")
    parser.add_argument(*flags, default=default, help=f"{help_text} (env: {name})", **kwargs)


def run_async(factory: Callable[[asyncio.Event], Coroutine[Any, Any, int]]) -> int:
    """Run a coroutine on uvloop (when installed) with SIGTERM/SIGINT setting a stop event."""
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is absent on Windows only
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        stop = asyncio.Event()
        loop = runner.get_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        return runner.run(factory(stop))


def collect_for_a_daemon() -> None:
    """Collect the young generation every YOUNG_GENERATION net allocations, not 700: most of a
    request's objects are then freed by their reference counts before a collection sees them.
    The older generations keep their settings."""
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION, middle, oldest)


def freeze_startup() -> None:
    """What start-up made (modules, settings, every channel's configuration) lives as long as
    the process: a full collection no longer walks it (`gc.freeze`). Garbage is collected
    first, so none of it is kept for good."""
    gc.collect()
    gc.freeze()


def settings(
    args: argparse.Namespace, *, need_channels: bool = True, api_keys: bool = True
) -> Settings:
    from outbox import logconfig
    from outbox.config_loader import load_settings

    loaded = load_settings(args.config, need_channels=need_channels, api_keys=api_keys)
    # The file's log settings apply unless the command line (or its environment) set them.
    logconfig.configure(args.log_level or loaded.log_level, args.log_format or loaded.log_format)
    return loaded


def with_engine(
    args: argparse.Namespace, use: Callable[[AsyncEngine, Settings], Awaitable[int]]
) -> int:
    """Run `use(engine, settings)` against the configured database, schema checked first."""
    from outbox.db import migrate
    from outbox.db.engine import create_engine
    from outbox.db.errors import translated_errors

    loaded = settings(args, need_channels=False)

    async def main(_: asyncio.Event) -> int:
        engine = create_engine(
            loaded.database_url, pool_size=1, role="admin", pooler=loaded.database.pooler
        )
        try:
            await migrate.check_schema(engine)
            # A driver error no adapter translated (a privilege missing mid-command) still
            # ends as one line with PostgreSQL's message, never a traceback.
            with translated_errors():
                return await use(engine, loaded)
        finally:
            await engine.dispose()

    return run_async(main)
