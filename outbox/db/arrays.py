"""Many rows in one statement: each column goes over as one array and `unnest()` makes rows
again (ArrayColumns), or the rows go over as one JSON document (JsonRows, for the hot statement
with many columns).

One round trip and one plan for a whole batch, whatever its size, instead of one per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import TextClause, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import TypeEngine

from outbox.errors import StatementRejected


@dataclass(frozen=True)
class ArrayColumns:
    columns: tuple[tuple[str, TypeEngine[Any]], ...]

    @property
    def names(self) -> str:
        return ", ".join(name for name, _ in self.columns)

    def unnest(self, alias: str, *, ordinality: str | None = None) -> str:
        """`unnest(:a, :b) AS alias(a, b)`, for a FROM clause; `ordinality` names a column
        numbering the rows in array order."""
        arrays = ", ".join(f":{name}" for name, _ in self.columns)
        if ordinality is None:
            return f"unnest({arrays}) AS {alias}({self.names})"
        return f"unnest({arrays}) WITH ORDINALITY AS {alias}({self.names}, {ordinality})"

    def statement(self, sql: str) -> TextClause:
        return text(sql).bindparams(
            *(bindparam(name, type_=ARRAY(kind)) for name, kind in self.columns)
        )

    def params(self, rows: Sequence[Sequence[object]]) -> dict[str, list[Any]]:
        """Rows (tuples in column order) as one list per column."""
        if not rows:
            return {name: [] for name, _ in self.columns}
        transposed = zip(*rows, strict=True)
        return {
            name: list(values) for (name, _), values in zip(self.columns, transposed, strict=True)
        }


@dataclass(frozen=True)
class JsonRows:
    """Many rows as one `json` parameter, made rows again by `json_to_recordset()`: one round
    trip and one plan a batch, as with ArrayColumns, for batches of many columns (issue 16).
    asyncpg checks every element of an array parameter against `collections.abc` before it
    encodes it, and SQLAlchemy copies each array (and converts its booleans one by one): the
    sender's result statement, 17 columns of about 76 answers, cost its event loop 1.1-1.5 ms a
    write that way and 0.76-0.82 ms as JSON, while PostgreSQL spends 0.15-0.3 ms more on parsing
    it (issue 16's notes, session m; README "Benchmarks"). Values are what orjson writes: str,
    int, bool, None, and datetimes in RFC 3339 with their offset (a naive one is taken as UTC)."""

    columns: tuple[tuple[str, str], ...]  # name, SQL type
    name: str = "rows"

    def recordset(self, alias: str) -> str:
        """`json_to_recordset(:rows) AS alias(a type, ...)`, for a FROM clause."""
        typed = ", ".join(f"{column} {kind}" for column, kind in self.columns)
        return f"json_to_recordset(CAST(:{self.name} AS json)) AS {alias}({typed})"

    def params(self, rows: Sequence[Sequence[object]]) -> dict[str, str]:
        """Rows (tuples in column order) as the one parameter. A value JSON cannot carry (a
        lone surrogate, which the arrays' encoder refused too) is what the statement carried
        at fault: StatementRejected, as the driver's refusal would be."""
        names = [column for column, _ in self.columns]
        objects = [dict(zip(names, row, strict=True)) for row in rows]
        try:
            return {self.name: orjson.dumps(objects, option=orjson.OPT_NAIVE_UTC).decode()}
        except orjson.JSONEncodeError as exc:
            raise StatementRejected(f"a value the database cannot take: {exc}") from exc
