"""The subjects the tenant's identity providers have signed in, with the roles their last sign-in asserted.

An OIDC-only user has no row in `users`, so the rule that no admin may act on a user who holds more than it
saw nothing of what the provider asserts: a lesser admin could create a (disabled) row for a greater admin's
subject, or one with a lesser role and mint a key under that subject. Authenticate records here, per
issuer, each subject a provider signs in and the roles its token asserted (written when first seen and when
they change, never per call), and the admin checks count those roles too.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

APP_ROLE = "parapet_auth_app"
TENANT = "tenant_id = current_setting('parapet.tenant_id', true)"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE oidc_subjects (
            tenant_id text NOT NULL REFERENCES tenants (tenant_id),
            subject text NOT NULL,
            issuer text NOT NULL,
            roles text[] NOT NULL DEFAULT '{}',
            first_sign_in_time timestamptz NOT NULL DEFAULT now(),
            roles_time timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, subject, issuer)
        )
        """
    )
    op.execute("ALTER TABLE oidc_subjects ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE oidc_subjects FORCE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY oidc_subjects_tenant ON oidc_subjects USING ({TENANT}) WITH CHECK ({TENANT})")
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON oidc_subjects TO {APP_ROLE}")


def downgrade() -> None:
    op.execute("DROP TABLE oidc_subjects")
