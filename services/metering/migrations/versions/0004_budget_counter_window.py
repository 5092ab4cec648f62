"""An index for the sweeper's delete of budget counters whose window ended long ago.

Revision ID: 0004_budget_counter_window
Revises: 0003_pruning_indexes

A counter row per budget, subject and window was kept for ever (docs/metering.md, "Keeping the tables small").
Its window start is the last column of the primary key, which no range delete can read, so without this index
every sweep would read the whole table. Reserve and Settle update ``used`` and ``reserved`` only, never
``window_start``: their updates stay HOT, and the index costs one entry per new counter row (a subject's first
request of a day or month).

``IF NOT EXISTS``: an operator with a large table may build it beforehand with ``CREATE INDEX CONCURRENTLY`` (same
name and definition), which takes no lock that stops Reserve or Settle, as for migration 0003.
"""

from alembic import op

revision = "0004_budget_counter_window"
down_revision = "0003_pruning_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX IF NOT EXISTS budget_counters_window ON budget_counters (window_start)")


def downgrade() -> None:
    op.execute("DROP INDEX budget_counters_window")
