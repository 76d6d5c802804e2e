"""`outbox purge`: its arguments, the retention period checked, counts and progress printed.
What it deletes is outbox.services.operations.Retention."""

from __future__ import annotations

import argparse
import os
from datetime import timedelta
from typing import TYPE_CHECKING

from outbox.cli import as_json
from outbox.cli.render import (
    parse_duration,
)
from outbox.cli.runtime import EXIT_OK, env_default, with_engine
from outbox.domain.operations import Purged
from outbox.errors import ConfigError
from outbox.ports import utc_now
from outbox.services.operations import (
    DEFAULT_KEEP_KEYS,
    Purge,
    Retention,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from outbox.config import Settings


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    purge = commands.add_parser(
        "purge",
        parents=[common],
        help="delete finished messages, processed webhook rows, old orphan statuses, account "
        "events, contacts and identity pairs",
        description="Deletes, in small batches that each commit on their own, messages in a "
        "terminal state (read, failed, expired, cancelled) not updated for --older-than, with "
        "their status history and lineage; webhook rows processed before then; orphan "
        "statuses and account events older than that; contacts (outbox.contacts) whose last "
        "inbound message is older than that and than 24 hours, untouched since; and phone-BSUID "
        "pairs learned before then that no contact and no open message uses any more. Rows "
        "another session holds are skipped. The idempotency keys of the deleted messages are "
        "kept (outbox.idempotency_keys) until --keep-keys after their message was created: a "
        "producer's insert with such a key stays a no-op.",
    )
    env_default(
        purge,
        "--older-than",
        env="PURGE_OLDER_THAN",
        required="OUTBOX_PURGE_OLDER_THAN" not in os.environ,
        help="retention period, e.g. 30d (at least 1h)",
    )
    purge.add_argument(
        "--include-delivered",
        action="store_true",
        help="also delete accepted, sent and delivered messages past the retention period",
    )
    env_default(
        purge,
        "--batch-size",
        env="PURGE_BATCH_SIZE",
        default=1000,
        type=int,
        help="rows deleted per transaction",
    )
    env_default(
        purge,
        "--keep-keys",
        env="PURGE_KEEP_KEYS",
        default=f"{DEFAULT_KEEP_KEYS.days}d",
        help="how long a purged message's idempotency key still refuses a re-insert, from the "
        "message's creation (at least --older-than; default %(default)s)",
    )
    purge.add_argument("--dry-run", action="store_true", help="count what would go; delete nothing")
    as_json.add_json_flag(purge)
    purge.set_defaults(func=_purge)


def _purge(args: argparse.Namespace) -> int:
    from outbox.db.retention import RetentionStore

    try:
        older_than = parse_duration(str(args.older_than))
    except ValueError as exc:
        raise ConfigError(f"--older-than: {exc}") from None
    if older_than < timedelta(hours=1):
        raise ConfigError("--older-than must be at least 1h")
    if args.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    try:
        keep_keys = parse_duration(str(args.keep_keys))
    except ValueError as exc:
        raise ConfigError(f"--keep-keys: {exc}") from None
    if keep_keys < older_than:
        raise ConfigError("--keep-keys must be at least --older-than")
    purge = Purge(
        older_than, args.batch_size, include_delivered=args.include_delivered, keep_keys=keep_keys
    )

    done: dict[Purged, int] = {}

    def deleted(table: Purged, count: int) -> None:
        done[table] = count
        if not args.json:
            print(f"deleted {count} {table.label}")

    async def run(engine: AsyncEngine, _: Settings) -> int:
        retention = Retention(RetentionStore(engine), clock=utc_now)
        cutoff, counts = await retention.count(purge)
        if not args.json:
            print(f"older than {cutoff.isoformat(timespec='seconds')}:")
            for table, count in counts.items():
                print(f"  {table.label:<16}{count:>10}")
        if args.dry_run:
            print(
                as_json.dump(as_json.purge(cutoff, counts, None))
                if args.json
                else "dry run: nothing deleted"
            )
            return EXIT_OK
        await retention.purge(purge, cutoff, deleted)
        if args.json:
            print(as_json.dump(as_json.purge(cutoff, counts, done)))
        return EXIT_OK

    return with_engine(args, run)
