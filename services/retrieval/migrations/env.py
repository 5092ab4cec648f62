"""Alembic environment of the `retrieval` schema: the kit's shared logic, nothing copied."""

from parapet.kit.migrations import run_env

run_env()
