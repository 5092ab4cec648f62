"""Which unexpected exceptions mean a dependency is down, not a bug: the kit answers them UNAVAILABLE.

The contract (docs/contracts.md) promises UNAVAILABLE `DEPENDENCY_UNAVAILABLE` with `RetryInfo` when a service's
database or NATS is down, so that clients retry instead of reporting a bug. Services map the failures they expect
where a better message helps; any other lost or refused connection that reaches the kit's error interceptor, or
a scoped database transaction, is classified here instead of being answered INTERNAL. The drivers are imported
on the failure path only, so a service without a database never loads one.

Only the connection counts, not everything a driver files under "operational": psycopg's OperationalError also
covers a statement timeout, a full disk or a lock not available, which a retry in a second does not cure, so the
database's own errors are told apart by SQLSTATE. A serialization failure or a deadlock is neither an outage nor
a bug but a conflict with a concurrent transaction (``database_conflict``): ABORTED, which a client retries.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

# Connection exceptions (class 08), the server shutting down or starting (57P01-57P03), too many connections.
_CONNECTION_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})


@functools.cache
def _bus_errors() -> tuple[type[BaseException], ...]:
    import nats.errors
    import nats.js.errors

    # Not connected, reconnecting, or no answer; JetStream without a leader or not responding. (A JetStream
    # refusal of a bad request is an APIError of another kind: a bug, answered INTERNAL.)
    return (
        nats.errors.ConnectionClosedError,
        nats.errors.ConnectionReconnectingError,
        nats.errors.NoServersError,
        nats.errors.NoRespondersError,
        nats.errors.StaleConnectionError,
        nats.errors.OutboundBufferLimitError,
        nats.errors.TimeoutError,
        nats.js.errors.NoStreamResponseError,
        nats.js.errors.ServiceUnavailableError,
    )


def _driver_error(exc: BaseException) -> BaseException:
    """psycopg's own exception inside SQLAlchemy's wrapper (or ``exc`` itself)."""
    from sqlalchemy import exc as sqlalchemy_errors

    if isinstance(exc, sqlalchemy_errors.DBAPIError) and isinstance(exc.orig, BaseException):
        return exc.orig
    return exc


def database_down(exc: BaseException) -> bool:
    """Whether ``exc`` (SQLAlchemy's or psycopg's) means the database cannot be reached or is not serving."""
    import psycopg
    from sqlalchemy import exc as sqlalchemy_errors

    if isinstance(exc, sqlalchemy_errors.TimeoutError):  # no pooled connection came free in time
        return True
    if isinstance(exc, sqlalchemy_errors.DBAPIError) and exc.connection_invalidated:
        return True
    exc = _driver_error(exc)
    if isinstance(exc, psycopg.InterfaceError):  # the connection is closed
        return True
    if isinstance(exc, psycopg.OperationalError):
        sqlstate = exc.sqlstate
        # No SQLSTATE: the client could not connect or lost the connection (no server answered).
        return sqlstate is None or sqlstate.startswith("08") or sqlstate in _CONNECTION_SQLSTATES
    return False


# serialization_failure, deadlock_detected: the transaction lost to a concurrent one and was rolled back.
_CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})


def database_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is the database rolling the transaction back for a conflict with a concurrent one."""
    return getattr(_driver_error(exc), "sqlstate", None) in _CONFLICT_SQLSTATES


# Data exceptions that a message's own content causes, whatever our code: a character the database's encoding
# cannot hold or an invalid byte sequence, a number or a date out of range (a sum beyond bigint depends on the
# total stored too, but no retry shrinks that total), a text too long. Not all of class 22: an invalid text
# representation (22P02) or parameter value (22023) is as likely our own statement's fault after a regression,
# which setting messages aside would turn into silent loss.
_REFUSED_DATA = frozenset({"22021", "22P05", "22003", "22008", "22001"})


def data_refused(exc: BaseException) -> str | None:
    """The SQLSTATE when the database will never take the data a statement carried, else None.

    Such an error is a property of the message, not of the moment: a consumer that gets one sets the message
    aside (counted, alerted on) instead of redelivering it forever behind every batch. psycopg refuses a NUL in a
    text itself, before the server would, with no SQLSTATE: reported as the server's
    character_not_in_repertoire.
    """
    import psycopg

    cause = _driver_error(exc)
    if not isinstance(cause, psycopg.Error):
        return None
    sqlstate = cause.sqlstate
    if sqlstate is None:
        return "22021" if isinstance(cause, psycopg.DataError) and "NUL" in str(cause) else None
    return sqlstate if sqlstate in _REFUSED_DATA else None


async def apply_setting_aside_refused(
    batch: Sequence[T],
    apply: Callable[[Sequence[T]], Awaitable[None]],
    set_aside: Callable[[T, str], Awaitable[None]],
) -> None:
    """``apply(batch)`` in one go, as a consumer applies what it fetched in one transaction. When the database
    refuses an item's data (:func:`data_refused`), that transaction fails for the whole batch: the batch is
    halved until the item stands alone, and ``set_aside(item, sqlstate)`` takes it out of the way, the rest
    applied around it (in order). Any other error is raised: the batch is redelivered."""
    try:
        await apply(batch)
    except Exception as error:
        sqlstate = data_refused(error)
        if sqlstate is None:
            raise
        if len(batch) > 1:
            half = len(batch) // 2
            await apply_setting_aside_refused(batch[:half], apply, set_aside)
            await apply_setting_aside_refused(batch[half:], apply, set_aside)
            return
        await set_aside(batch[0], sqlstate)


def dependency_down(exc: BaseException) -> str | None:
    """``"the database"`` or ``"the message bus"`` when ``exc`` means that dependency is down, else None."""
    if database_down(exc):
        return "the database"
    if isinstance(exc, _bus_errors()):
        return "the message bus"
    return None
