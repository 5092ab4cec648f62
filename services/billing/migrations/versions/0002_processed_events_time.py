"""An index on processed_events.process_time, for the sweeper's delete of ids past their retention.

Revision ID: 0002_processed_events_time
Revises: 0001_billing

Without it each sweep would read the whole table (days of event ids at thousands a second). process_time only
grows, so each insert lands at the index's right edge (cheap on the consumer's path). ``IF NOT EXISTS``: an
operator with a large table may build it beforehand with ``CREATE INDEX CONCURRENTLY`` (docs/deploy.md); this
migration, run in one transaction at start, then has nothing left to build.
"""

from alembic import op

revision = "0002_processed_events_time"
down_revision = "0001_billing"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX IF NOT EXISTS processed_events_process_time ON processed_events (process_time)")


def downgrade() -> None:
    op.execute("DROP INDEX processed_events_process_time")
