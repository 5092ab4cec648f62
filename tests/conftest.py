"""Shared fixtures: real PostgreSQL (with pgvector) and real NATS, started once per test session.

Set PARAPET_TEST_DATABASE_URL / PARAPET_TEST_NATS_URL to run against external servers instead.
Tests that stop and restart a server (health, fault tests) start their own with ``fresh_postgres`` /
``fresh_nats`` so they never disturb the shared ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from parapet.embedded import EmbeddedNats, EmbeddedPostgres, free_port

# Durability is irrelevant for throw-away test data; turning it off makes DDL-heavy tests fast.
_TEST_PG_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a PostgreSQL with pgvector (SQLAlchemy form, psycopg 3 driver)."""
    external = os.environ.get("PARAPET_TEST_DATABASE_URL")
    if external:
        yield external
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data", free_port(), settings=_TEST_PG_SETTINGS)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a NATS server with JetStream."""
    external = os.environ.get("PARAPET_TEST_NATS_URL")
    if external:
        yield external
        return
    server = EmbeddedNats(tmp_path_factory.mktemp("nats") / "store", free_port())
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def fresh_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this test's own, which the test may stop and start again."""
    server = EmbeddedPostgres(tmp_path / "pg", free_port(), settings=_TEST_PG_SETTINGS)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A NATS server of this test's own, which the test may stop and start again."""
    server = EmbeddedNats(tmp_path / "nats", free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
