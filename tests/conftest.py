"""Shared fixtures: real PostgreSQL (with pgvector) and real NATS, started once per test session.

Set PARAPET_TEST_DATABASE_URL / PARAPET_TEST_NATS_URL to run against external servers instead.
Tests that stop and restart a server (health, fault tests) start their own with ``fresh_postgres`` /
``fresh_nats`` so they never disturb the shared ones.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from parapet.embedded import EmbeddedNats, EmbeddedPostgres, free_port

pytest_plugins = ["tests.hang_report"]

# Durability is irrelevant for throw-away test data; turning it off makes DDL-heavy tests fast.
_TEST_PG_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


@contextlib.contextmanager
def _server_dir() -> Iterator[Path]:
    """A directory for a test server's data, outside pytest's own temporary root.

    As root, PostgreSQL runs as another account that must traverse the path to its data; pytest resets
    its root (/tmp/pytest-of-<user>) to 0700 whenever a pytest run starts, which would cut a running
    server off from its files.
    """
    directory = Path(tempfile.mkdtemp(prefix="parapet-test-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """URL of a PostgreSQL with pgvector (SQLAlchemy form, psycopg 3 driver)."""
    external = os.environ.get("PARAPET_TEST_DATABASE_URL")
    if external:
        yield external
        return
    with _server_dir() as directory:
        server = EmbeddedPostgres(directory / "data", free_port(), settings=_TEST_PG_SETTINGS)
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
def fresh_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this test's own, which the test may stop and start again."""
    with _server_dir() as directory:
        server = EmbeddedPostgres(directory / "pg", free_port(), settings=_TEST_PG_SETTINGS)
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
