"""The database error boundary: every driver error leaves the adapter as an `outbox.errors` kind.

Two answers to the one question a caller has: is the database away (`DatabaseUnavailable`:
wait and try again), or did it refuse the statement for what it carried (`StatementRejected`:
the same input fails the same way on every retry, so set it aside)?
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import asyncpg
from sqlalchemy import exc as sa

from outbox.errors import DatabaseError, DatabaseUnavailable, StatementRejected

# SQLSTATE classes for data exceptions (22), integrity violations (23) and program limits such
# as an index entry too large (54): what the statement carried is at fault.
_REJECTED_CLASSES = ("22", "23", "54")
_DRIVER_ERRORS = (
    sa.DBAPIError,
    sa.TimeoutError,  # no pooled connection came free in time
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,  # includes ConnectionError and TimeoutError
)

P = ParamSpec("P")
T = TypeVar("T")


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE behind a driver error, whether SQLAlchemy wrapped it or not."""
    for candidate in (exc, getattr(exc, "orig", None)):
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str):
            return state
    return None


def translate(exc: BaseException) -> DatabaseError:
    """The `outbox.errors` kind of a driver error."""
    if isinstance(exc, DatabaseError):
        return exc
    state = sqlstate(exc)
    kind = StatementRejected if state and state[:2] in _REJECTED_CLASSES else DatabaseUnavailable
    error = kind(str(exc) or type(exc).__name__)
    error.__cause__ = exc
    return error


def is_driver_error(exc: BaseException) -> bool:
    return isinstance(exc, _DRIVER_ERRORS)


@contextmanager
def translated_errors() -> Iterator[None]:
    """Re-raise driver errors from the block as `DatabaseUnavailable` or `StatementRejected`."""
    try:
        yield
    except _DRIVER_ERRORS as exc:
        raise translate(exc) from exc


def translated(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """`translated_errors()` around an adapter's coroutine method."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with translated_errors():
            return await method(*args, **kwargs)

    return wrapper
