"""OIDC tokens route to their tenant by (issuer, audience), no longer by issuer alone.

An issuer belonged to one tenant (`oidc_issuers.issuer` was the primary key), so two tenants whose users sign in
with one shared identity provider (Google's `https://accounts.google.com`, a multi-tenant Entra app, a shared
Auth0 domain, an Okta org) could not both configure it. Each tenant's provider names its own OAuth client ids as
its audiences, and the pair is what tells the tenants apart: a pair now belongs to one tenant at most.

Each existing row becomes one row per audience of its issuer's provider in the tenant's current policy, so every
provider keeps signing in after the upgrade. The policies are read in each tenant's scope: the tables' owner is
subject to FORCE ROW LEVEL SECURITY unless it is a superuser, and a read without the scope would find none. A row
whose tenant's current policy has no such provider (or one without audiences) routed no token before either
(sign-in needs the provider and one of its audiences) and is dropped with a warning.

Revision ID: 0005
Revises: 0004
"""

import logging

from alembic import op
from sqlalchemy import text

from parapet.auth.v1 import tenant_policy_pb2

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

log = logging.getLogger(__name__)


def _audiences(tenant_id: str, issuer: str) -> list[str]:
    """The audiences of ``issuer``'s provider in ``tenant_id``'s current policy."""
    connection = op.get_bind()
    connection.execute(text("SELECT set_config('parapet.tenant_id', :t, true)"), {"t": tenant_id})
    # The tenant condition too: a superuser, exempt from the policies, sees every tenant's rows.
    body = connection.execute(
        text("SELECT body FROM policies WHERE tenant_id = :t ORDER BY version DESC LIMIT 1"), {"t": tenant_id}
    ).scalar_one_or_none()
    policy = tenant_policy_pb2.TenantPolicy.FromString(bytes(body)) if body is not None else None
    providers = policy.identity_providers if policy is not None else []
    # A NUL fits in the stored policy (bytes) but in no text column; requests holding one are refused now.
    return sorted(
        {
            audience
            for p in providers
            if p.issuer == issuer
            for audience in p.audiences
            if "\x00" not in audience
        }
    )


def upgrade() -> None:
    op.execute("ALTER TABLE oidc_issuers DROP CONSTRAINT oidc_issuers_pkey")
    op.execute("ALTER TABLE oidc_issuers ADD COLUMN audience text")
    connection = op.get_bind()
    for issuer, tenant_id in connection.execute(text("SELECT issuer, tenant_id FROM oidc_issuers")).all():
        audiences = _audiences(tenant_id, issuer)
        if not audiences:
            log.warning(
                "an OIDC issuer route without a provider audience was dropped",
                extra={"tenant_id": tenant_id, "issuer": issuer},
            )
        for audience in audiences:
            connection.execute(
                text("INSERT INTO oidc_issuers (issuer, audience, tenant_id) VALUES (:i, :a, :t)"),
                {"i": issuer, "a": audience, "t": tenant_id},
            )
    op.execute(
        """
        SELECT set_config('parapet.tenant_id', '', true);
        DELETE FROM oidc_issuers WHERE audience IS NULL;
        ALTER TABLE oidc_issuers ALTER COLUMN audience SET NOT NULL;
        ALTER TABLE oidc_issuers ADD PRIMARY KEY (issuer, audience);
        """
    )


def downgrade() -> None:
    # The earlier revisions route by issuer alone, to one tenant: an issuer two tenants share cannot go back.
    shared = op.get_bind().execute(
        text("SELECT issuer FROM oidc_issuers GROUP BY issuer HAVING count(DISTINCT tenant_id) > 1 LIMIT 1")
    )
    issuer = shared.scalar_one_or_none()
    if issuer is not None:
        raise RuntimeError(
            f"cannot downgrade: the OIDC issuer {issuer!r} is configured by more than one tenant;"
            " remove it from all but one tenant's policy first"
        )
    op.execute(
        """
        DELETE FROM oidc_issuers o USING oidc_issuers k WHERE o.issuer = k.issuer AND o.audience > k.audience;
        ALTER TABLE oidc_issuers DROP CONSTRAINT oidc_issuers_pkey;
        ALTER TABLE oidc_issuers DROP COLUMN audience;
        ALTER TABLE oidc_issuers ADD PRIMARY KEY (issuer);
        """
    )
