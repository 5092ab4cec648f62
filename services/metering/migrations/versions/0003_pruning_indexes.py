"""Indexes for the sweeper's deletes: sent outbox rows by sent_time, ended reservations by end_time.

Revision ID: 0003_pruning_indexes
Revises: 0002_reserve_refused

Without them every sweep read the whole outbox (its delete filtered on sent_time, which no index covered) and
ended reservations were never deleted. Both are partial: the outbox index leaves out the unsent rows (the relay
reads those through ``outbox_unsent``), the reservations index the active ones (the expiry sweep reads those
through ``reservations_active_expiry``). ``id`` in the outbox index orders ReplayUsageEvents' batches: the
relay marks a whole batch sent at one ``now()``, so sent_time alone does not tell its rows apart.

``IF NOT EXISTS``: an operator with a large table may build them beforehand with ``CREATE INDEX
CONCURRENTLY`` (same names and definitions, docs/deploy.md), which takes no lock that stops Settle or
Reserve; this migration, run in one transaction at start, then has nothing left to build.
"""

from alembic import op

revision = "0003_pruning_indexes"
down_revision = "0002_reserve_refused"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE INDEX IF NOT EXISTS outbox_sent ON outbox (sent_time, id) WHERE sent_time IS NOT NULL;
        CREATE INDEX IF NOT EXISTS reservations_ended ON reservations (end_time) WHERE state <> 'active';
        """
    )


def downgrade() -> None:
    op.execute("DROP INDEX reservations_ended; DROP INDEX outbox_sent;")
