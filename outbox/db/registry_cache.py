"""The registry's channels as built at the last read, kept by row version.

Every change to `outbox.channels` makes every replica read the registry again, and building a
row (opening its sealed credentials, validating it as a `[[channels]]` entry) took 0.1 ms: at
10,000 channels about 1 s of the event loop, on every replica, for every `channels add` or
`enable` (issue 16). A row whose version (`xmin`: new with every write, psql's included) is the
one built last time is now taken as built (for a role that may not read `xmin`, a digest of
the columns it reads). A row that names a credential file is built at every
read: the file may hold a new key since (SIGHUP reads the registry again for that).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Column, Row, literal_column
from sqlalchemy.sql.elements import Label

from outbox.db.registry_tables import SECRET_FIELDS
from outbox.errors import ConfigError
from outbox.ports.registry import RegisteredChannel

# Selected beside the columns. `xmin` where the role may read the whole table; a role granted
# some columns only (the receiver's) may not read system columns, and takes a digest of the
# columns it reads instead.
WHOLE_ROW: Label[str] = literal_column("xmin::text").label("row_version")


def digest_of(columns: Iterable[Column[Any]]) -> Label[str]:
    names = ", ".join(c.name for c in columns)
    return literal_column(f"md5(ROW({names})::text)").label("row_version")


class BuiltChannels:
    def __init__(self) -> None:
        self._built: dict[str, tuple[str, RegisteredChannel]] = {}

    def reading(self, build: Callable[[Row[Any]], RegisteredChannel]) -> Reading:
        """One read of the registry, its rows given a page at a time; `build` makes a channel
        of a row that changed."""
        return Reading(self._built, build, self._keep)

    def _keep(self, built: dict[str, tuple[str, RegisteredChannel]]) -> None:
        self._built = built


class Reading:
    def __init__(
        self,
        kept: dict[str, tuple[str, RegisteredChannel]],
        build: Callable[[Row[Any]], RegisteredChannel],
        keep: Callable[[dict[str, tuple[str, RegisteredChannel]]], None],
    ) -> None:
        self._kept = kept  # by the last read
        self._build = build
        self._keep = keep
        self.usable: list[RegisteredChannel] = []
        self.problems: dict[str, str] = {}  # the rows that cannot be built, by id
        self._built: dict[str, tuple[str, RegisteredChannel]] = {}

    def add(self, found: Iterable[Any]) -> None:
        """The registry's own rows (its read leaves the file's mirrors out) as channels."""
        for row in found:
            version = getattr(row, "row_version", None)
            known = self._kept.get(row.id)
            if version is not None and known is not None and known[0] == version:
                channel = known[1]
            else:
                try:
                    channel = self._build(row)
                except ConfigError as exc:
                    self.problems[row.id] = str(exc)
                    continue
            if version is not None and not _names_a_file(row):
                self._built[row.id] = (version, channel)
            self.usable.append(channel)

    def done(self) -> None:
        """The read is whole: what it built is kept for the next, what is gone is forgotten."""
        self._keep(self._built)


def _names_a_file(row: Row[Any]) -> bool:
    return any(getattr(row, f"{name}_file", None) for name in SECRET_FIELDS)
