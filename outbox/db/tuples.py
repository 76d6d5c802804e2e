"""Result rows as plain named tuples, for the statements whose rows are read per message.

A SQLAlchemy 2.1 `Row` resolves each attribute by name in Python: about 1 us a read, so a claim
of 100 rows read 1,200 attributes (12 us a row) before any request left (issue 16). A named
tuple's fields are read at C speed. The shape is checked against the result's columns once per
result, so a statement and its tuple cannot drift apart unnoticed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from sqlalchemy.engine import Result

T = TypeVar("T")


def as_tuples(
    result: Result[Any], make: Callable[[Iterable[Any]], T], fields: Sequence[str]
) -> list[T]:
    """`make` and `fields`: a NamedTuple's `_make` and `_fields`."""
    columns = tuple(result.keys())
    if columns != tuple(fields):
        raise AssertionError(f"the statement returns {columns}, the tuple has {tuple(fields)}")
    return [make(row) for row in result]
