"""Registry rows and `ChannelConfig`s: one shape for both directions, no secret in the clear.

A row is read as the `[[channels]]` table it would be in a config file and validated by the
same code (outbox.config_channels.channel_from_entry): a row written by hand in psql is checked
exactly as a file entry is. A sealed credential is opened into a private environment that the
entry names, so that validation reads it as it reads an `_env` reference.
"""

from __future__ import annotations

import os
from collections import ChainMap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Row

from outbox.config import ChannelConfig, Secret
from outbox.config_channels import channel_from_entry
from outbox.config_checks import ALLOW_INSECURE_HTTP_ENV, checked_credential
from outbox.db.registry_tables import (
    PLAIN_FIELDS,
    RECEIVING_SECRETS,
    SECRET_FIELDS,
    SECRET_WAYS,
)
from outbox.errors import ConfigError
from outbox.sealing import Keyring, sealed_parts

# How a credential is held: ("env", variable) or ("file", path) by reference, ("sealed", value).
Holding = tuple[str, str | Secret]


@dataclass(frozen=True)
class Described:
    """A row as `outbox channels list/show` prints it: credentials by how they are held."""

    id: str
    source: str
    enabled: bool
    fields: dict[str, Any]
    credentials: dict[str, str]  # name -> "env:VAR" | "file:PATH" | "sealed (key id K)"


def context(channel_id: str, name: str) -> str:
    """What a sealed value is bound to: it opens only in its own channel and field."""
    return f"channel {channel_id!r} {name}"


def open_sealed(row: Row[Any], names: tuple[str, ...], keyring: Keyring | None) -> int:
    """Open the row's sealed credentials among `names`; returns how many it holds."""
    return sum(1 for _ in _opened(row, names, keyring))


def _opened(
    row: Row[Any], names: tuple[str, ...], keyring: Keyring | None
) -> Iterator[tuple[str, str]]:
    """Each sealed credential of the row among `names`, opened (a `SealError` names the key
    ids, never a value)."""
    for name in names:
        sealed = getattr(row, f"{name}_sealed")
        if sealed is None:
            continue
        if keyring is None:
            raise ConfigError(
                "the registry holds sealed keys and no master key is given: set"
                f" OUTBOX_SECRET_KEY_FILE or OUTBOX_SECRET_KEY_ENV (channel {row.id!r} {name})"
            )
        yield name, keyring.open(sealed, context=context(row.id, name))


def plain_values(channel: ChannelConfig) -> dict[str, Any]:
    values: dict[str, Any] = {name: getattr(channel, name) for name in PLAIN_FIELDS}
    values["dialect"] = channel.dialect.value
    values["unknown_policy"] = channel.unknown_policy.value
    values["webhook_auth"] = channel.webhook_auth.value
    return values


def secret_values(
    channel_id: str, held: Mapping[str, Holding | None], keyring: Keyring | None
) -> dict[str, str | None]:
    """Columns for the given credentials (every way of the field: the others cleared)."""
    values: dict[str, str | None] = {}
    for name, holding in held.items():
        for way in SECRET_WAYS:
            values[f"{name}_{way}"] = None
        if holding is None:
            continue
        way, value = holding
        if way == "sealed":
            if keyring is None:
                raise ConfigError(
                    "storing a key needs a master key: set OUTBOX_SECRET_KEY_FILE or"
                    " OUTBOX_SECRET_KEY_ENV (see `outbox keys generate`)"
                )
            assert isinstance(value, Secret)
            values[f"{name}_sealed"] = keyring.seal(
                value.reveal(), context=context(channel_id, name)
            )
        else:
            values[f"{name}_{way}"] = str(value)
    return values


def sealed_of(channel: ChannelConfig) -> dict[str, Holding | None]:
    return {
        name: None if getattr(channel, name) is None else ("sealed", getattr(channel, name))
        for name in SECRET_FIELDS
    }


def entry_of(row: Row[Any], secrets: tuple[str, ...] = SECRET_FIELDS) -> dict[str, Any]:
    """The row as a `[[channels]]` table, credentials (those in `secrets`) by reference;
    sealed ones left out."""
    entry: dict[str, Any] = {"id": row.id}
    for name in PLAIN_FIELDS:
        value = getattr(row, name)
        if isinstance(value, timedelta):
            value = value.total_seconds()
        if value is not None:
            entry[name] = value
    for name in secrets:
        for way in ("env", "file"):
            if getattr(row, f"{name}_{way}") is not None:
                entry[f"{name}_{way}"] = getattr(row, f"{name}_{way}")
    return entry


def config_of(
    row: Row[Any],
    keyring: Keyring | None,
    environ: Mapping[str, str] | None = None,
    *,
    api_key: bool = True,
) -> ChannelConfig:
    """The row as a usable channel; ConfigError (naming no secret) if it cannot be. Without
    `api_key` the row need not hold the key's columns (RECEIVING_COLUMNS), and no key is read."""
    secrets = SECRET_FIELDS if api_key else RECEIVING_SECRETS
    entry = entry_of(row, secrets)
    opened: dict[str, str] = {}
    for name, value in _opened(row, secrets, keyring):
        variable = f"\0sealed {name}"  # no real environment variable can be named so
        opened[variable] = value
        entry[f"{name}_env"] = variable
    # The process's environment itself, not a copy of it per channel (a fifth of a read).
    env = ChainMap(opened, os.environ if environ is None else dict(environ))
    return channel_from_entry(entry, "registry channel", env, api_keys=api_key)


def checked(
    channel_id: str, plain: Mapping[str, Any], held: Mapping[str, Holding | None]
) -> ChannelConfig:
    """Validate a channel about to be stored, without reading its referenced credentials (they
    live on the replicas, not necessarily where the command runs). Its settings as stored come
    from the result: normalised as a file's are, defaults filled in."""
    entry: dict[str, Any] = {"id": channel_id}
    entry.update({k: v for k, v in plain.items() if v is not None})
    if isinstance(entry.get("recipient_gap"), timedelta):
        entry["recipient_gap"] = entry["recipient_gap"].total_seconds()
    # A value given here (sealed) is checked as a file's would be (a weak webhook password is
    # refused at `channels add`); a referenced one is checked where a replica reads it.
    env = {
        "CHECK": "referenced-value-checked-on-load",
        # The https opt-out is the environment's, as when the replicas load the row.
        ALLOW_INSECURE_HTTP_ENV: os.environ.get(ALLOW_INSECURE_HTTP_ENV, ""),
    }
    for name, holding in held.items():
        if holding is None:
            continue
        entry[f"{name}_env"] = "CHECK"
        way, value = holding
        if way == "sealed":  # issue 19 §3: refused before it is stored, not when it is used
            assert isinstance(value, Secret)
            checked_credential(value.reveal(), f"channel {channel_id!r}: the given {name}")
            entry[f"{name}_env"] = f"CHECK {name}"
            env[f"CHECK {name}"] = value.reveal()
    return channel_from_entry(entry, "channel", env)


def describe(row: Row[Any]) -> Described:
    credentials: dict[str, str] = {}
    for name in SECRET_FIELDS:
        env, file, sealed = (getattr(row, f"{name}_{way}") for way in SECRET_WAYS)
        if env is not None:
            credentials[name] = f"env:{env}"
        elif file is not None:
            credentials[name] = f"file:{file}"
        elif sealed is not None:
            credentials[name] = f"sealed (key id {sealed_parts(sealed)[1]})"
    fields = {
        name: (v.total_seconds() if isinstance(v := getattr(row, name), timedelta) else v)
        for name in PLAIN_FIELDS
    }
    fields["created_at"] = row.created_at.isoformat()
    fields["updated_at"] = row.updated_at.isoformat()
    return Described(row.id, row.source, row.enabled, fields, credentials)
