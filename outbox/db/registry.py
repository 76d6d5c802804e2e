"""The channel registry (`outbox.channels`): the port's adapter, and what replicas read.

Credentials are sealed here, before they are stored, and opened here, after they are read:
callers hand over and get back `Secret`s. Every statement that changes a row fires the table's
NOTIFY triggers, which every running replica listens for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from sqlalchemy import Row, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from outbox.config import ChannelConfig, Secret
from outbox.db import registry_cache
from outbox.db import registry_rows as rows
from outbox.db.errors import translated
from outbox.db.registry_tables import (
    ALL_IDS,
    MIRROR,
    PLAIN_FIELDS,
    RECEIVING_COLUMNS,
    RECEIVING_SECRETS,
    SECRET_FIELDS,
    VERSION,
    channels,
)
from outbox.errors import ChannelNotFound, ChannelRefused, ConfigError
from outbox.ports.registry import RegisteredChannel, RegistrySnapshot
from outbox.sealing import Keyring

MIRROR_PAGE = 500  # file channels mirrored per statement
READ_PAGE = 250  # registry entries read at a time


class ChannelRegistryStore:
    def __init__(
        self,
        engine: AsyncEngine,
        keyring: Keyring | None,
        environ: Mapping[str, str] | None = None,
        *,
        api_keys: bool = True,
    ) -> None:
        """Without `api_keys` (a process that sends nothing) the replicas' reads leave the API
        key columns out: its database role needs no grant on them, and it holds no key."""
        self._engine = engine
        self._keyring = keyring
        self._environ = environ
        self._api_keys = api_keys
        read = (
            select(*channels.c, registry_cache.WHOLE_ROW)
            if api_keys
            else select(*RECEIVING_COLUMNS, registry_cache.digest_of(RECEIVING_COLUMNS))
        )
        self._own = read.where(channels.c.source == "registry")  # the entries it holds
        self._built = registry_cache.BuiltChannels()

    # --- the port (outbox.ports.registry.ChannelRegistry) ---

    async def get(self, channel_id: str) -> RegisteredChannel | None:
        row = await self._row(channels.c.id == channel_id)
        return None if row is None else self._registered(row)

    async def by_partner_channel(self, partner_channel_id: str) -> RegisteredChannel | None:
        row = await self._row(channels.c.partner_channel_id == partner_channel_id)
        return None if row is None else self._registered(row)

    async def add(self, channel: ChannelConfig, *, enabled: bool) -> None:
        """Raises `StatementRejected` if the id is taken."""
        await self.add_held(
            channel.id, rows.plain_values(channel), rows.sealed_of(channel), enabled
        )

    async def set_api_key(self, channel_id: str, api_key: Secret) -> None:
        await self.set_credentials(channel_id, {"api_key": ("sealed", api_key)})

    async def set_enabled(self, channel_id: str, enabled: bool) -> None:
        await self._change(channel_id, {"enabled": enabled})

    # --- beyond the port: the CLI's writes and the replicas' reads ---

    async def add_held(
        self,
        channel_id: str,
        plain: Mapping[str, Any],
        held: Mapping[str, rows.Holding | None],
        enabled: bool,
    ) -> None:
        config = rows.checked(channel_id, plain, held)
        values = {
            "id": channel_id,
            "source": "registry",
            "enabled": enabled,
            **rows.plain_values(config),
            **rows.secret_values(channel_id, held, self._keyring),
        }
        await self._insert(values)

    async def update(
        self,
        channel_id: str,
        plain: Mapping[str, Any],
        held: Mapping[str, rows.Holding | None],
    ) -> None:
        """Change the given fields; `None` in `plain` clears an optional field (burst,
        namespace, ...), in `held` removes the credential."""
        row = await self._writable(channel_id)
        merged = {name: getattr(row, name) for name in PLAIN_FIELDS}
        merged.update(plain)
        kept: dict[str, rows.Holding | None] = {
            name: ("env", "kept") if _holds(row, name) else None for name in SECRET_FIELDS
        }
        kept.update(held)
        values: dict[str, Any] = rows.plain_values(rows.checked(channel_id, merged, kept))
        values.update(rows.secret_values(channel_id, held, self._keyring))
        await self._change(channel_id, values)

    async def set_credentials(
        self, channel_id: str, held: Mapping[str, rows.Holding | None]
    ) -> None:
        await self._writable(channel_id)
        await self._change(channel_id, rows.secret_values(channel_id, held, self._keyring))

    @translated
    async def remove(self, channel_id: str) -> None:
        """Delete the entry. A file channel's mirror may go too (one no replica's file holds
        any more); a replica that still has it records it again when it starts."""
        if await self._row(channels.c.id == channel_id) is None:
            raise ChannelNotFound(f"no channel {channel_id!r} in the registry")
        async with self._engine.begin() as connection:
            await connection.execute(channels.delete().where(channels.c.id == channel_id))

    @translated
    async def described(self, channel_id: str | None = None) -> list[rows.Described]:
        query = select(channels).order_by(channels.c.id)
        if channel_id is not None:
            query = query.where(channels.c.id == channel_id)
        async with self._engine.connect() as connection:
            return [rows.describe(r) for r in (await connection.execute(query)).all()]

    @translated
    async def snapshot(self) -> RegistrySnapshot:
        # The file's mirrored channels by id alone: their columns are the file's, read from
        # it (read whole, 10,000 of them were the daemon's peak at start). One snapshot for
        # both statements, so that the ids and the entries agree.
        reading = self._built.reading(self._registered)
        async with self._engine.connect() as connection:
            await connection.execution_options(isolation_level="REPEATABLE READ")
            async with connection.begin():
                ids = (await connection.execute(ALL_IDS)).scalar_one()
                async for page in self._pages(connection):
                    reading.add(page)
        reading.done()
        return RegistrySnapshot(tuple(reading.usable), frozenset(ids), reading.problems)

    @translated
    async def version(self) -> str:
        async with self._engine.connect() as connection:
            return str((await connection.execute(VERSION)).scalar_one())

    @translated
    async def mirror_file(self, file_channels: Sequence[ChannelConfig]) -> list[str]:
        """Record this replica's file channels as read-only entries (no credential: those stay
        in the file). Returns the ids the registry holds as its own entries: the file's
        definition wins in this replica, and the registry's entry is left as it is."""
        if not file_channels:
            return []
        async with self._engine.begin() as connection:
            # One statement, many parameter sets (issue 16). With RETURNING, SQLAlchemy sends
            # them as multi-row VALUES within PostgreSQL's 32,767 parameters, the statement
            # compiled once; without it, asyncpg ran the statement once per channel (10,000
            # executions and 0.5-0.6 s at a 10,000-channel start, 0.2-0.26 s now). A page of
            # channels at a time: the whole file's parameters at once were the daemon's peak
            # memory at 10,000 channels (12 MB of its 28 MB above one); a page of 500 holds
            # 2.6 MB at most (1,000 held 5 MB as VALUES).
            for start in range(0, len(file_channels), MIRROR_PAGE):
                values = [
                    {"id": c.id, "source": "file", "enabled": True, **rows.plain_values(c)}
                    for c in file_channels[start : start + MIRROR_PAGE]
                ]
                await connection.execute(MIRROR, values)
            registry = await connection.execute(
                select(channels.c.id).where(channels.c.source == "registry")
            )
            ids = {c.id for c in file_channels}
            return [id_ for id_ in registry.scalars().all() if id_ in ids]

    @translated
    async def check_sealed(self) -> int:
        """Open every sealed credential; raise `SealError` (naming key ids, not values) on the
        first the master keys cannot open. Returns how many were checked."""
        names = SECRET_FIELDS if self._api_keys else RECEIVING_SECRETS
        count = 0
        async with self._engine.begin() as connection:
            async for page in self._pages(connection):  # a file's entry seals nothing
                count += sum(rows.open_sealed(row, names, self._keyring) for row in page)
        return count

    async def _pages(self, connection: AsyncConnection) -> AsyncIterator[Sequence[Any]]:
        """The registry's own entries, a page at a time (a cursor, in the caller's
        transaction): every change to the registry has every replica read it all, and 10,000
        entries read whole held 13 MB of rows at once."""
        pages = await connection.stream(self._own, execution_options={"yield_per": READ_PAGE})
        async for page in pages.partitions():
            yield page

    @translated
    async def reseal(self) -> int:
        """Seal every credential again under the first master key (`outbox keys rotate`).
        Each row in its own short transaction, locked, so a concurrent change is not lost."""
        if self._keyring is None:
            raise ConfigError("set OUTBOX_SECRET_KEY_FILE or OUTBOX_SECRET_KEY_ENV")
        async with self._engine.connect() as connection:
            ids = (await connection.execute(select(channels.c.id))).scalars().all()
        resealed = 0
        for channel_id in ids:
            async with self._engine.begin() as connection:
                row = (
                    await connection.execute(
                        select(channels).where(channels.c.id == channel_id).with_for_update()
                    )
                ).one_or_none()
                if row is None:
                    continue
                values: dict[str, str] = {}
                for name in SECRET_FIELDS:
                    sealed = getattr(row, f"{name}_sealed")
                    if sealed is None or sealed.split(".")[1] == self._keyring.primary:
                        continue
                    where = rows.context(channel_id, name)
                    plain = self._keyring.open(sealed, context=where)
                    values[f"{name}_sealed"] = self._keyring.seal(plain, context=where)
                if values:
                    await connection.execute(
                        update(channels).where(channels.c.id == channel_id).values(values)
                    )
                    resealed += 1
        return resealed

    # --- internals ---

    def _registered(self, row: Row[Any]) -> RegisteredChannel:
        if row.source == "file":
            raise ConfigError(f"channel {row.id!r} is defined in a replica's config file")
        config = rows.config_of(row, self._keyring, self._environ, api_key=self._api_keys)
        return RegisteredChannel(config, row.enabled, from_file=False)

    @translated
    async def _row(self, condition: Any) -> Row[Any] | None:
        async with self._engine.connect() as connection:
            return (await connection.execute(select(channels).where(condition))).one_or_none()

    async def _writable(self, channel_id: str) -> Row[Any]:
        row = await self._row(channels.c.id == channel_id)
        if row is None:
            raise ChannelNotFound(f"no channel {channel_id!r} in the registry")
        if row.source == "file":
            raise ChannelRefused(
                f"channel {channel_id!r} is defined in a config file ([[channels]]): change it"
                " there (the registry's copy is read-only)"
            )
        return row

    @translated
    async def _insert(self, values: Mapping[str, Any]) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(insert(channels).values(dict(values)))

    async def _change(self, channel_id: str, values: Mapping[str, Any]) -> None:
        await self._writable(channel_id)
        await self._update(channel_id, values)

    @translated
    async def _update(self, channel_id: str, values: Mapping[str, Any]) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                update(channels)
                .where(channels.c.id == channel_id)
                .values({**values, "updated_at": func.now()})
            )


def _holds(row: Row[Any], name: str) -> bool:
    return any(getattr(row, f"{name}_{way}") is not None for way in ("env", "file", "sealed"))
