"""Migration ``0005``: the issuer → tenant rows of a database with data become (issuer, audience) → tenant rows,
and the providers they route keep signing in. Run on a database whose tables' owner is no superuser, as in
production: FORCE ROW LEVEL SECURITY applies to it, so a backfill that reads the policies without a tenant's
scope would silently find none (the suite's embedded PostgreSQL connects as a superuser, which would not show it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from alembic import command
from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError

from parapet.auth.v1 import auth_service_pb2 as apb
from parapet.auth.v1 import tenant_policy_pb2
from parapet.kit.migrations import _config
from services.auth.store import APP_ROLE
from tests.integration.auth.conftest import make_idp_key, running_auth
from tests.integration.owned_schema import as_owner, owned_schema

MIGRATIONS = Path(__file__).parents[3] / "services" / "auth" / "migrations"
ISSUER = "https://login.example.org/"
KEY = make_idp_key("EdDSA", "legacy-1")


@pytest.fixture
def owner_database(database_url: str) -> Iterator[tuple[str, str]]:
    with owned_schema(database_url, "auth", APP_ROLE) as owned:
        yield owned


def _as_owner(url: str, owner: str) -> Iterator[Connection]:
    return as_owner(url, owner, "auth")


def _add_tenant(connection: Connection, tenant_id: str, *versions: tenant_policy_pb2.TenantPolicy) -> None:
    """A tenant with ``versions`` of its policy, the last current, and routing rows as 0001 to 0004 wrote
    them: one per issuer of the current policy."""
    connection.execute(text("SELECT set_config('parapet.tenant_id', :t, true)"), {"t": tenant_id})
    connection.execute(
        text("INSERT INTO tenants (tenant_id, display_name) VALUES (:t, :t)"), {"t": tenant_id}
    )
    for version, policy in enumerate(versions, start=1):
        connection.execute(
            text("INSERT INTO policies (tenant_id, version, body) VALUES (:t, :v, :b)"),
            {"t": tenant_id, "v": version, "b": policy.SerializeToString()},
        )
    for provider in versions[-1].identity_providers:
        connection.execute(
            text("INSERT INTO oidc_issuers (issuer, tenant_id) VALUES (:i, :t)"),
            {"i": provider.issuer, "t": tenant_id},
        )


def _provider(issuer: str, *audiences: str) -> tenant_policy_pb2.OidcProvider:
    return tenant_policy_pb2.OidcProvider(
        issuer=issuer, audiences=audiences, jwks_json=json.dumps({"keys": [KEY.jwk]}), roles_claim="roles"
    )


def _routes(connection: Connection) -> list[tuple[str, str, str]]:
    rows = connection.execute(text("SELECT issuer, audience, tenant_id FROM oidc_issuers ORDER BY 1, 2"))
    return [(row[0], row[1], row[2]) for row in rows]


async def test_issuer_rows_become_issuer_and_audience_rows_and_their_providers_keep_working(
    owner_database: tuple[str, str], nats_url: str, signing_key_file: Path
) -> None:
    url, owner = owner_database
    other = "https://corp.example.org/"
    for connection in _as_owner(url, owner):
        command.upgrade(_config(MIGRATIONS, "auth", connection), "0004")
        # Acme's provider had one audience, then two: the current policy's count.
        _add_tenant(
            connection,
            "acme",
            tenant_policy_pb2.TenantPolicy(identity_providers=[_provider(ISSUER, "acme-old")]),
            tenant_policy_pb2.TenantPolicy(
                identity_providers=[
                    _provider(ISSUER, "acme-app", "acme-cli", "acme-app"),
                    _provider(other, "x"),
                ]
            ),
        )
        _add_tenant(connection, "globex", tenant_policy_pb2.TenantPolicy())
    for connection in _as_owner(url, owner):
        command.upgrade(_config(MIGRATIONS, "auth", connection), "head")
    for connection in _as_owner(url, owner):
        assert _routes(connection) == [
            (other, "x", "acme"),
            (ISSUER, "acme-app", "acme"),
            (ISSUER, "acme-cli", "acme"),
        ]
        forced = connection.execute(
            text("SELECT relforcerowsecurity FROM pg_class WHERE oid = 'policies'::regclass")
        )
        assert forced.scalar_one() is True
        assert (
            connection.execute(text("SELECT count(*) FROM policies")).scalar_one() == 0
        )  # policies still apply
        # The service's role may read and replace routes, as before.
        connection.execute(text(f"SET LOCAL ROLE {APP_ROLE}"))
        connection.execute(
            text("INSERT INTO oidc_issuers (issuer, audience, tenant_id) VALUES (:i, 'g', 'globex')"),
            {"i": ISSUER},
        )
        assert len(_routes(connection)) == 4
        connection.execute(text("DELETE FROM oidc_issuers WHERE tenant_id = 'globex'"))
    for connection in _as_owner(url, owner):
        with pytest.raises(IntegrityError):  # a pair belongs to one tenant
            connection.execute(
                text(
                    "INSERT INTO oidc_issuers (issuer, audience, tenant_id) VALUES (:i, 'acme-app', 'globex')"
                ),
                {"i": ISSUER},
            )

    # The service on the upgraded database signs the existing provider's users in, by either audience.
    async with running_auth(url, nats_url, signing_key_file) as auth:
        now = int(time.time())
        for audience in ("acme-app", ["acme-cli"]):
            token = jwt.encode(
                {"iss": ISSUER, "aud": audience, "sub": "alice", "exp": now + 60, "roles": ["analyst"]},
                KEY.private,
                algorithm="EdDSA",
                headers={"kid": KEY.kid},
            )
            issued = await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=token))
            assert (issued.principal.tenant_id, issued.principal.subject) == ("acme", "alice")


def test_the_downgrade_keeps_one_row_per_issuer_and_refuses_an_issuer_two_tenants_share(
    owner_database: tuple[str, str],
) -> None:
    url, owner = owner_database
    for connection in _as_owner(url, owner):
        command.upgrade(_config(MIGRATIONS, "auth", connection), "0004")
        _add_tenant(
            connection,
            "acme",
            tenant_policy_pb2.TenantPolicy(identity_providers=[_provider(ISSUER, "a", "b")]),
        )
        _add_tenant(connection, "globex", tenant_policy_pb2.TenantPolicy())
        command.upgrade(_config(MIGRATIONS, "auth", connection), "head")
        connection.execute(
            text("INSERT INTO oidc_issuers (issuer, audience, tenant_id) VALUES (:i, 'g', 'globex')"),
            {"i": ISSUER},
        )
    with pytest.raises(RuntimeError, match="more than one tenant"):
        for connection in _as_owner(url, owner):
            command.downgrade(_config(MIGRATIONS, "auth", connection), "0004")
    for connection in _as_owner(url, owner):
        connection.execute(text("DELETE FROM oidc_issuers WHERE tenant_id = 'globex'"))
        command.downgrade(_config(MIGRATIONS, "auth", connection), "0004")
        rows = connection.execute(text("SELECT issuer, tenant_id FROM oidc_issuers")).all()
        assert [tuple(row) for row in rows] == [(ISSUER, "acme")]
