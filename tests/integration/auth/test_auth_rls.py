"""Row-level security is real: the service role owns nothing, and without a tenant it sees nothing."""

from __future__ import annotations

import psycopg
import pytest

from services.auth.invalidation import libpq_url
from tests.integration.auth.conftest import Auth

TENANT_TABLES = ("tenants", "users", "api_keys", "policies", "audit_outbox", "oidc_subjects")


async def _connect(database_url: str) -> psycopg.AsyncConnection[tuple[object, ...]]:
    return await psycopg.AsyncConnection.connect(libpq_url(database_url))


async def test_every_tenant_table_forces_rls_and_the_app_role_owns_none(
    auth: Auth, database_url: str
) -> None:
    async with await _connect(database_url) as conn:
        rows = await (
            await conn.execute(
                "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, pg_get_userbyid(c.relowner)"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'auth' AND c.relkind = 'r'"
            )
        ).fetchall()
        tables = {name: (rls, force, owner) for name, rls, force, owner in rows}
        for table in TENANT_TABLES:
            assert tables[table][:2] == (True, True), table
        assert all(owner != "parapet_auth_app" for _, _, owner in tables.values())
        role = await (
            await conn.execute(
                "SELECT rolsuper, rolbypassrls, rolcanlogin FROM pg_roles WHERE rolname = 'parapet_auth_app'"
            )
        ).fetchone()
        assert role == (False, False, False)


async def test_without_a_tenant_setting_the_service_role_sees_zero_rows(
    auth: Auth, database_url: str
) -> None:
    tenant = await auth.new_tenant()
    await auth.new_user(tenant, "svc", roles=("admin",))
    await auth.new_key(tenant, "svc")
    other = await auth.new_tenant()
    await auth.new_user(other, "someone-else")

    async with await _connect(database_url) as conn:
        # The superuser of the kit's URL bypasses RLS: that is why the service never queries as it.
        superuser_sees = await (await conn.execute("SELECT count(*) FROM auth.users")).fetchone()
        assert superuser_sees is not None and int(str(superuser_sees[0])) >= 2

        async with conn.transaction():
            await conn.execute("SET LOCAL ROLE parapet_auth_app")
            for table in TENANT_TABLES:
                counted = await (await conn.execute(f"SELECT count(*) FROM auth.{table}")).fetchone()
                assert counted == (0,), table

        async with conn.transaction():
            await conn.execute("SELECT set_config('parapet.tenant_id', %s, true)", (tenant,))
            await conn.execute("SET LOCAL ROLE parapet_auth_app")
            users = await (await conn.execute("SELECT DISTINCT tenant_id FROM auth.users")).fetchall()
            keys = await (await conn.execute("SELECT DISTINCT tenant_id FROM auth.api_keys")).fetchall()
            assert users == [(tenant,)] and keys == [(tenant,)]

    # Writing into another tenant from a tenant's transaction is refused by the policy's WITH CHECK.
    async with await _connect(database_url) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            async with conn.transaction():
                await conn.execute("SELECT set_config('parapet.tenant_id', %s, true)", (tenant,))
                await conn.execute("SET LOCAL ROLE parapet_auth_app")
                await conn.execute(
                    "INSERT INTO auth.users (tenant_id, user_id) VALUES (%s, 'intruder')", (other,)
                )


async def test_only_a_keyed_hash_of_the_api_key_is_stored(auth: Auth, database_url: str) -> None:
    tenant = await auth.new_tenant()
    await auth.new_user(tenant, "svc")
    key_id, key = await auth.new_key(tenant, "svc")
    async with await _connect(database_url) as conn:
        row = await (
            await conn.execute(
                "SELECT prefix, secret_hash FROM auth.api_keys WHERE api_key_id = %s", (key_id,)
            )
        ).fetchone()
        assert row is not None
        prefix, stored = str(row[0]), bytes(row[1])  # type: ignore[call-overload]
        assert key.startswith(f"pk_{prefix}_")
        secret = key.split("_", 2)[2]
        assert len(stored) == 32 and secret.encode() not in stored
        dump = await (await conn.execute("SELECT string_agg(t::text, '') FROM auth.api_keys t")).fetchone()
        assert dump is not None and secret not in str(dump[0])
