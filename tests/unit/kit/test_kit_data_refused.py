"""Which database errors mean the data itself is refused (set aside, never redelivered): the consumers' one rule."""

from __future__ import annotations

import psycopg
import psycopg.errors
import pytest
from sqlalchemy.exc import DataError, OperationalError

from parapet.kit.dependency import data_refused


@pytest.mark.parametrize(
    ("exc", "sqlstate"),
    [
        (DataError("INSERT", {}, psycopg.errors.NumericValueOutOfRange("bigint out of range")), "22003"),
        (DataError("INSERT", {}, psycopg.errors.CharacterNotInRepertoire("invalid byte")), "22021"),
        (DataError("INSERT", {}, psycopg.errors.DatetimeFieldOverflow("year 10000")), "22008"),
        (psycopg.errors.StringDataRightTruncation("value too long"), "22001"),
        # psycopg refuses a NUL in a text itself, with no SQLSTATE: the server's own code for it.
        (
            DataError(
                "INSERT", {}, psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
            ),
            "22021",
        ),
        # Not the data's fault, or as likely our own statement's after a regression: redelivered, never set aside.
        (DataError("INSERT", {}, psycopg.errors.InvalidTextRepresentation("invalid input syntax")), None),
        (DataError("INSERT", {}, psycopg.DataError("some other refusal of the driver")), None),
        (OperationalError("SELECT 1", {}, psycopg.OperationalError("connection failed")), None),
        (OperationalError("UPDATE", {}, psycopg.errors.DeadlockDetected("deadlock")), None),
        (OperationalError("UPDATE", {}, psycopg.errors.DiskFull("no space")), None),
        (ValueError("not a database error"), None),
    ],
)
def test_only_a_data_exception_counts_as_data_the_database_refuses(
    exc: BaseException, sqlstate: str | None
) -> None:
    assert data_refused(exc) == sqlstate
