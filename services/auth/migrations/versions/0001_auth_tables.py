"""Tenants, users, API keys, tenant policies, the audit outbox; row-level security under a non-owner role.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

APP_ROLE = "parapet_auth_app"

# Tables whose rows belong to one tenant. Each gets FORCE ROW LEVEL SECURITY with a policy on the
# transaction's `parapet.tenant_id` setting. `tenants` and `audit_outbox` also admit the platform scope
# (`parapet.scope` = 'platform'), set only by the two code paths that must span tenants (ListTenants and the
# outbox relay, both in services/auth/store.py).
TENANT_TABLES = ("users", "api_keys", "policies")
PLATFORM_TABLES = ("tenants", "audit_outbox")

TENANT = "tenant_id = current_setting('parapet.tenant_id', true)"
PLATFORM = "current_setting('parapet.scope', true) = 'platform'"


def upgrade() -> None:
    # Roles are cluster-wide: another database of the cluster (or a concurrent migration) may have made it.
    op.execute(
        f"""
        DO $$ BEGIN
            CREATE ROLE {APP_ROLE} NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END $$;
        """
    )
    # The migrating user (the tables' owner) switches to the app role per transaction (SET LOCAL ROLE).
    op.execute(f"GRANT {APP_ROLE} TO CURRENT_USER")
    op.execute(
        """
        CREATE TABLE tenants (
            tenant_id text PRIMARY KEY,
            display_name text NOT NULL,
            state text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'disabled')),
            create_time timestamptz NOT NULL DEFAULT now(),
            update_time timestamptz NOT NULL DEFAULT now(),
            disable_time timestamptz
        );
        CREATE TABLE users (
            tenant_id text NOT NULL REFERENCES tenants (tenant_id),
            user_id text NOT NULL,
            display_name text NOT NULL DEFAULT '',
            email text NOT NULL DEFAULT '',
            kind text NOT NULL DEFAULT 'person',
            roles text[] NOT NULL DEFAULT '{}',
            groups text[] NOT NULL DEFAULT '{}',
            state text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'disabled')),
            create_time timestamptz NOT NULL DEFAULT now(),
            update_time timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, user_id)
        );
        CREATE TABLE api_keys (
            tenant_id text NOT NULL,
            api_key_id uuid NOT NULL,
            prefix text NOT NULL UNIQUE,
            secret_hash bytea NOT NULL,
            user_id text NOT NULL,
            display_name text NOT NULL DEFAULT '',
            scopes text[] NOT NULL DEFAULT '{}',
            expire_time timestamptz,
            create_time timestamptz NOT NULL DEFAULT now(),
            revoke_time timestamptz,
            last_use_time timestamptz,
            PRIMARY KEY (tenant_id, api_key_id),
            FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, user_id)
        );
        CREATE INDEX api_keys_by_create ON api_keys (tenant_id, create_time DESC, api_key_id);
        CREATE TABLE policies (
            tenant_id text NOT NULL REFERENCES tenants (tenant_id),
            version bigint NOT NULL CHECK (version > 0),
            body bytea NOT NULL,
            update_time timestamptz NOT NULL DEFAULT now(),
            update_subject text NOT NULL DEFAULT '',
            PRIMARY KEY (tenant_id, version)
        );
        CREATE TABLE audit_outbox (
            record_id uuid PRIMARY KEY,
            tenant_id text NOT NULL,
            subject text NOT NULL,
            payload bytea NOT NULL,
            create_time timestamptz NOT NULL DEFAULT now(),
            sent_time timestamptz
        );
        CREATE INDEX audit_outbox_pending ON audit_outbox (create_time) WHERE sent_time IS NULL;

        -- Lookups that happen before the tenant is known. They hold only what routes a credential to its
        -- tenant (a key's public prefix, an OIDC issuer), never secrets or tenant data, so they have no RLS.
        CREATE TABLE api_key_prefixes (
            prefix text PRIMARY KEY,
            tenant_id text NOT NULL REFERENCES tenants (tenant_id)
        );
        CREATE TABLE oidc_issuers (
            issuer text PRIMARY KEY,
            tenant_id text NOT NULL REFERENCES tenants (tenant_id)
        );
        CREATE INDEX oidc_issuers_by_tenant ON oidc_issuers (tenant_id);
        """
    )
    for table in TENANT_TABLES + PLATFORM_TABLES:
        condition = TENANT if table in TENANT_TABLES else f"{TENANT} OR {PLATFORM}"
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY {table}_tenant ON {table} USING ({condition}) WITH CHECK ({condition})")
    op.execute(f"GRANT USAGE ON SCHEMA auth TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON tenants, users, api_keys, audit_outbox TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT ON policies TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, DELETE ON api_key_prefixes, oidc_issuers TO {APP_ROLE}")


def downgrade() -> None:
    op.execute("DROP TABLE oidc_issuers, api_key_prefixes, audit_outbox, policies, api_keys, users, tenants")
    op.execute(f"REVOKE USAGE ON SCHEMA auth FROM {APP_ROLE}")
