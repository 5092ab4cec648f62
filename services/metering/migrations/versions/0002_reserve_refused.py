"""Reserve in one round trip: a function that aborts the Reserve statement when a limit refuses it.

Revision ID: 0002_reserve_refused
Revises: 0001_metering
"""

from alembic import op

revision = "0002_reserve_refused"
down_revision = "0001_metering"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Raising inside the statement rolls back everything it did (reservation row, rate counts, holds), so
    # Reserve runs as one autocommitted statement: one round trip. DETAIL carries what the counters said.
    op.execute(
        """
        CREATE FUNCTION reserve_refused(rates jsonb, held jsonb) RETURNS boolean LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'RESERVE_REFUSED' USING ERRCODE = 'PM001', DETAIL = jsonb_build_array(rates, held)::text;
        END $$;
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION reserve_refused(jsonb, jsonb)")
