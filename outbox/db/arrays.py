"""Many rows in one statement: each column goes over as one array, `unnest()` makes rows again.

One round trip and one plan for a whole batch, whatever its size, instead of one per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import TextClause, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import TypeEngine


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
