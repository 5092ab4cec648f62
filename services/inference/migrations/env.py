"""Alembic environment of the `inference` schema: the kit's shared logic, nothing copied."""

from parapet.kit.migrations import run_env

run_env()
