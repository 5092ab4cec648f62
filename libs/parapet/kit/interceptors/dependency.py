"""Which unexpected exceptions mean a dependency is down, not a bug: the kit answers them UNAVAILABLE.

The contract (docs/contracts.md) promises UNAVAILABLE `DEPENDENCY_UNAVAILABLE` with `RetryInfo` when a service's
database or NATS is down, so that clients retry instead of reporting a bug. Services map the failures they expect
where a better message helps (auth's store, audit's Erase); any other lost or refused connection that reaches the
kit's error interceptor is classified here instead of being answered INTERNAL. Imported on that failure path
only, so a service without a database never loads the driver for it.
"""

from __future__ import annotations

import functools


@functools.cache
def _database_errors() -> tuple[type[BaseException], ...]:
    import psycopg
    from sqlalchemy import exc

    # PostgreSQL gone, refusing connections or shut down, the pool exhausted; psycopg's OperationalError also
    # covers serialization failures and deadlocks, which a retry resolves as well.
    return (
        exc.OperationalError,
        exc.InterfaceError,
        exc.TimeoutError,
        psycopg.OperationalError,
        psycopg.InterfaceError,
    )


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


def dependency_down(exc: BaseException) -> str | None:
    """``"the database"`` or ``"the message bus"`` when ``exc`` means that dependency is down, else None."""
    if isinstance(exc, _database_errors()):
        return "the database"
    if isinstance(exc, _bus_errors()):
        return "the message bus"
    return None
