"""Result rows as named tuples: the statement's columns must be the tuple's fields, in order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import pytest
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData

from outbox.db.tuples import as_tuples


class _Pair(NamedTuple):
    id: int
    channel: str


def _result(columns: list[str], rows: Sequence[tuple[object, ...]]) -> IteratorResult[Any]:
    return IteratorResult(SimpleResultMetaData(columns), iter(rows))


def test_rows_become_the_tuple_field_by_field() -> None:
    pairs = as_tuples(_result(["id", "channel"], [(1, "a"), (2, "b")]), _Pair._make, _Pair._fields)
    assert pairs == [_Pair(1, "a"), _Pair(2, "b")]
    assert pairs[1].channel == "b"


@pytest.mark.parametrize(
    "columns", [["channel", "id"], ["id"], ["id", "channel", "extra"], ["id", "chanel"]]
)
def test_a_statement_that_drifted_from_its_tuple_is_refused(columns: list[str]) -> None:
    rows = [tuple(range(len(columns)))]
    with pytest.raises(AssertionError, match="the statement returns"):
        as_tuples(_result(columns, rows), _Pair._make, _Pair._fields)
