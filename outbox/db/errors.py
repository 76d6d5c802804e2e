"""The database error boundary: every driver error leaves the adapter as an `outbox.errors` kind.

Three answers to the one question a caller has: is the database away (`DatabaseUnavailable`:
wait and try again), did it refuse the statement for what it carried (`StatementRejected`: the
same input fails the same way on every retry, so set it aside), or did it refuse the statement
itself (`StatementInvalid`: a bug or an unexpected schema; say so loudly, lose nothing)?
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import asyncpg
from sqlalchemy import exc as sa

from outbox.domain import parsing
from outbox.errors import (
    DatabaseError,
    DatabaseUnavailable,
    PrivilegeMissing,
    StatementInvalid,
    StatementRejected,
)

# SQLSTATE classes for data exceptions (22), integrity violations (23) and program limits such
# as an index entry too large (54): what the statement carried is at fault.
_REJECTED_CLASSES = ("22", "23", "54")
# Classes for the statement itself: feature not supported (0A), invalid statement name (26),
# invalid schema name (3F), syntax error or access rule violation (42: a missing table,
# column or privilege too).
_INVALID_CLASSES = ("0A", "26", "3F", "42")
_MESSAGE_LIMIT = 500  # characters of the driver's message kept (it is logged, maybe stored)
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


def _driver_error(exc: BaseException) -> BaseException:
    """The driver's own exception behind SQLAlchemy's wrappers."""
    seen = exc
    for candidate in (
        getattr(exc, "orig", None),
        getattr(getattr(exc, "orig", None), "__cause__", None),
    ):
        if isinstance(candidate, BaseException):
            seen = candidate
    return seen


def driver_message(exc: BaseException) -> str:
    """The first line of the driver's own message (PostgreSQL's, for a server error)."""
    origin = _driver_error(exc)
    return str(origin).split("\n", 1)[0].strip() or type(origin).__name__


def _kind(exc: BaseException) -> type[DatabaseError]:
    state = sqlstate(exc)
    if state and state[:2] in _REJECTED_CLASSES:
        return StatementRejected
    if state and state[:2] in _INVALID_CLASSES:
        return StatementInvalid
    if isinstance(_driver_error(exc), asyncpg.exceptions._base.DataError):
        # The driver could not encode an argument (a lone surrogate, a wrong type): the
        # input again, refused before it left.
        return StatementRejected
    return DatabaseUnavailable


def translate(exc: BaseException) -> DatabaseError:
    """The `outbox.errors` kind of a driver error, with the driver's message: short, and
    never SQLAlchemy's rendering with the whole statement and its parameters."""
    if isinstance(exc, DatabaseError):
        return exc
    origin = _driver_error(exc)
    state = sqlstate(exc)
    words = driver_message(exc)
    message = f"{type(origin).__name__}{f' ({state})' if state else ''}: {words}"
    error = _kind(exc)(parsing.storable(message, _MESSAGE_LIMIT))
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


# --- what an operator reads (issue 19 §4): `outbox check`, every CLI verb and `/readyz` ---
# SQLSTATE classes meaning the server is not (yet, or any more) there to talk to: connection
# exceptions (08) and operator intervention (57: shutting down, starting up). Every other
# answer came from a server that was reached, so "unreachable" would send people the wrong way.
_AWAY_CLASSES = ("08", "57")
_HINTS = {
    "3D000": "create it or fix database_url",
    "28P01": "check the password in database_url",
    "28000": "check the user in database_url",
    "42501": "grant the role what it needs (README: database roles)",
}
# `scheme://user:password@`: a DSN quoted in a driver message keeps its user, loses the password.
_DSN_PASSWORD = re.compile(r"(://[^:/@\s]*):[^@\s]*@")


def describe(exc: BaseException) -> str:
    """One line, no secrets: PostgreSQL's own message when the server answered, and
    "database unreachable" only when it could not be reached at all."""
    if isinstance(exc, DatabaseError):
        cause = exc.__cause__
        if isinstance(exc, PrivilegeMissing) or cause is None or not is_driver_error(cause):
            # Ours already, worded for people: a schema verdict, or which role to use for what.
            return str(exc)
        exc = cause
    origin = _driver_error(exc)
    state = sqlstate(exc)
    words = parsing.storable(driver_message(exc), _MESSAGE_LIMIT)
    words = _DSN_PASSWORD.sub(r"\1:********@", words)
    if state is not None and state[:2] not in _AWAY_CLASSES:
        hint = _HINTS.get(state)
        return f"database: {words} (SQLSTATE {state}{f'; {hint}' if hint else ''})"
    if state is not None or isinstance(
        origin, OSError | TimeoutError | sa.TimeoutError | asyncpg.InterfaceError
    ):
        return f"database unreachable: {words}"
    return f"database error: {type(origin).__name__}: {words}"


# --- a missing privilege, said as such (issue 19 §1) ---
_INSUFFICIENT_PRIVILEGE = "42501"
RUNTIME_HINT = 'grant this role what README "Database roles" lists for it'


@contextmanager
def privileges(hint: str) -> Iterator[None]:
    """A missing privilege as one line that names it and says what to do (no traceback, no
    statement): `permission denied for schema outbox: run migrations as ...`."""
    try:
        yield
    except Exception as exc:
        if is_driver_error(exc) and sqlstate(exc) == _INSUFFICIENT_PRIVILEGE:
            raise PrivilegeMissing(f"{driver_message(exc)}: {hint}") from exc
        raise
