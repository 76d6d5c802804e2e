"""Telling a database that is away from a statement it refused for what the statement carried."""

from __future__ import annotations

# SQLSTATE classes for data exceptions (22), integrity violations (23) and program limits such
# as an index entry too large (54): the same input fails the same way on every retry.
_DATA_CLASSES = ("22", "23", "54")


def is_data_error(exc: BaseException) -> bool:
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in _DATA_CLASSES
