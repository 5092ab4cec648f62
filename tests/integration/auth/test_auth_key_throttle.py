"""The per-prefix throttle: wrong secrets for a key's prefix are refused once past the limit, the key itself is
not, and the key's tenant finds the throttling in its audit trail.

A key's prefix is public (ListApiKeys, audit records, `parapet keys list`). Until 2026-12-06 a throttled prefix
refused the right secret too: ten wrong guesses a minute from anywhere kept the key locked out for as long as
the guessing went on (`test_guessing_a_keys_secret_does_not_lock_the_key_out` got RESOURCE_EXHAUSTED
`AUTHENTICATION_THROTTLED` for the real key).
"""

from __future__ import annotations

import grpc
import pytest

from parapet.auth.v1 import auth_service_pb2 as apb
from parapet.auth.v1 import tenant_admin_service_pb2 as tpb
from parapet.kit.errors import error_details
from parapet.kit.testing import refusal, refusal_details
from services.auth.authenticator import AUTHENTICATE_METHOD, UNAUTHENTICATED_ACTOR
from services.auth.store import AuthStore, KeyRecord
from tests.integration.auth.auth_support import audit_records
from tests.integration.auth.conftest import Auth

LIMIT = 10  # auth_throttle_failures' default
CLIENT_LIMIT = 50  # auth_throttle_client_failures' default
ATTACKER = (("x-parapet-client-ip", "203.0.113.9"),)
OWNER = (("x-parapet-client-ip", "198.51.100.20"),)


def _wrong(key: str, n: int) -> str:
    prefix = key[: len("pk_") + 12]
    return f"{prefix}_{str(n).rjust(43, 'Z')}"


async def _guess(auth: Auth, key: str, count: int) -> list[tuple[grpc.StatusCode, str | None]]:
    found = []
    for n in range(count):
        code, reason, _ = await refusal(
            auth.auth.Authenticate(apb.AuthenticateRequest(api_key=_wrong(key, n)), metadata=ATTACKER)
        )
        found.append((code, reason))
    return found


async def test_guessing_a_keys_secret_does_not_lock_the_key_out(auth: Auth) -> None:
    tenant = await auth.new_tenant()
    await auth.new_user(tenant, "svc")
    _, key = await auth.new_key(tenant, "svc")

    reasons = await _guess(auth, key, LIMIT + 1)
    assert reasons[:LIMIT] == [(grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID")] * LIMIT
    assert reasons[LIMIT] == (grpc.StatusCode.RESOURCE_EXHAUSTED, "AUTHENTICATION_THROTTLED")

    # The key itself, never authenticated before (nothing cached): it goes through the throttled prefix.
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=key), metadata=OWNER)
    assert issued.principal.subject == "svc"
    # So does it from the attacker's own address: the prefix's throttle refuses secrets, not clients.
    await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=key), metadata=ATTACKER)

    # Wrong secrets stay refused, from any client, with the wait until the window lets one more through.
    for metadata in (ATTACKER, OWNER):
        try:
            await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=_wrong(key, 99)), metadata=metadata)
        except grpc.aio.AioRpcError as error:
            details = error_details(error)
            assert details.reason == "AUTHENTICATION_THROTTLED"
            assert details.retry_after is not None and 0 < details.retry_after <= 60
        else:
            raise AssertionError("a wrong secret went through a throttled prefix")


async def test_a_revoked_key_is_told_so_through_a_throttled_prefix(auth: Auth) -> None:
    # The right secret of a revoked key passes the prefix throttle too, and then hears why it is refused.
    tenant = await auth.new_tenant()
    await auth.new_user(tenant, "svc")
    key_id, key = await auth.new_key(tenant, "svc")
    await _guess(auth, key, LIMIT)
    await auth.admin.RevokeApiKey(
        tpb.RevokeApiKeyRequest(tenant_id=tenant, api_key_id=key_id), metadata=auth.operator
    )
    assert (await refusal(auth.auth.Authenticate(apb.AuthenticateRequest(api_key=key))))[:2] == (
        grpc.StatusCode.UNAUTHENTICATED,
        "API_KEY_REVOKED",
    )


async def test_a_throttled_prefix_is_recorded_once_in_the_keys_tenants_trail(
    auth: Auth, nats_url: str
) -> None:
    tenant = await auth.new_tenant()
    await auth.new_user(tenant, "svc")
    key_id, key = await auth.new_key(tenant, "svc")
    await _guess(auth, key, LIMIT + 5)  # five more past the limit: one episode, one record

    # CreateTenant, CreateUser, CreateApiKey, then the throttling.
    record = (await audit_records(nats_url, tenant, 4))[3][0]
    action = record.admin_action
    assert (action.method, action.target) == (AUTHENTICATE_METHOD, key_id)
    assert (action.status_code, action.error_reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
        "AUTHENTICATION_THROTTLED",
    )
    assert (action.actor.tenant_id, action.actor.subject) == (tenant, UNAUTHENTICATED_ACTOR)
    assert dict(action.attributes) == {
        "prefix": key[: len("pk_") + 12],
        "user_id": "svc",
        "client": "203.0.113.9",
        "last_reason": "API_KEY_INVALID",
    }

    # The next record of the tenant is the next change, not a second report of the same episode.
    await auth.admin.RevokeApiKey(
        tpb.RevokeApiKeyRequest(tenant_id=tenant, api_key_id=key_id), metadata=auth.operator
    )
    following = (await audit_records(nats_url, tenant, 5))[4][0]
    assert following.admin_action.method.endswith("/RevokeApiKey")

    # The secret is in no record of the tenant's (the prefix is public).
    secret = key[len("pk_") + 13 :].encode()
    for stored, _ in await audit_records(nats_url, tenant, 5):
        assert secret not in stored.SerializeToString()


async def _throttled_subject(auth: Auth, key: str, metadata: tuple[tuple[str, str], ...]) -> str | None:
    """What the refusal of ``key`` from ``metadata``'s client is throttled by (`client`, `api_key`), or None
    when it is no throttling."""
    details = await refusal_details(
        auth.auth.Authenticate(apb.AuthenticateRequest(api_key=key), metadata=metadata)
    )
    if details.reason != "AUTHENTICATION_THROTTLED" or details.quota_failure is None:
        return None
    subject: str = details.quota_failure.violations[0].subject
    return subject


async def test_guesses_at_a_throttled_prefix_count_against_the_guessing_client(auth: Auth) -> None:
    """A throttled prefix refuses wrong secrets before any database read; until the fix those refusals counted
    nowhere, so one client guessed without limit (300 guesses all answered by the prefix, then the right key
    went through from that very client). Each refusal counts against the client: past its limit (50) the
    client is refused outright, while the key's owner, from its own address, still gets in."""
    tenant = await auth.new_tenant()
    await auth.new_user(tenant, "svc")
    _, key = await auth.new_key(tenant, "svc")
    subjects = [await _throttled_subject(auth, _wrong(key, n), ATTACKER) for n in range(CLIENT_LIMIT + 5)]
    assert subjects[:LIMIT] == [None] * LIMIT  # wrong secrets, told so, until the prefix is throttled
    assert subjects[CLIENT_LIMIT:] == ["client"] * 5  # then the client itself
    assert await _throttled_subject(auth, key, ATTACKER) == "client"
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=key), metadata=OWNER)
    assert issued.principal.subject == "svc"


async def test_a_revoked_keys_fleet_reads_the_database_only_until_its_prefix_is_throttled(
    auth: Auth, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clients still configured with a revoked key (each from its own address) present its right secret,
    which passes a throttled prefix: until the fix each such call read the key from the database, with no
    cap. The refusal is remembered with the key's hash, and the throttled prefix answers it from memory,
    with the same reason."""
    lookups: list[str] = []
    read = AuthStore.key_record

    async def counted(store: AuthStore, tenant_id: str, prefix: str) -> KeyRecord | None:
        lookups.append(prefix)  # the real read still happens: this only counts it
        return await read(store, tenant_id, prefix)

    monkeypatch.setattr(AuthStore, "key_record", counted)
    tenant = await auth.new_tenant()
    await auth.new_user(tenant, "svc")
    key_id, key = await auth.new_key(tenant, "svc")
    await auth.admin.RevokeApiKey(
        tpb.RevokeApiKeyRequest(tenant_id=tenant, api_key_id=key_id), metadata=auth.operator
    )
    fleet = [(("x-parapet-client-ip", f"198.51.100.{i}"),) for i in range(4 * LIMIT)]
    answers = [
        (await refusal(auth.auth.Authenticate(apb.AuthenticateRequest(api_key=key), metadata=client)))[:2]
        for client in fleet
    ]
    assert answers == [(grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED")] * len(fleet)
    assert len(lookups) == LIMIT
