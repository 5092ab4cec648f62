"""``parapet bootstrap`` as a real process against the real database, its key then used at a running auth.

Each test has a platform tenant of its own (``PARAPET_AUTH_PLATFORM_TENANT_ID``), so the shared database's
`parapet` tenant and other tests' accounts are never touched. The command migrates auth's schema itself, as
a starting auth does; the auth started afterwards finds it at head.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import pytest
from sqlalchemy import text

from parapet.auth.v1 import auth_service_pb2 as apb
from parapet.auth.v1 import tenant_admin_service_pb2 as tpb
from parapet.cli.failures import EXIT_ALREADY_DONE, EXIT_FAILED, EXIT_PIPE_CLOSED
from parapet.kit.api_key_format import key_prefix
from parapet.kit.database import Database
from parapet.kit.testing import refusal_details
from tests.e2e.support import REPO
from tests.integration.auth.auth_support import audit_records
from tests.integration.auth.conftest import Auth, running_auth


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def _environment(database_url: str, signing_key_file: Path, platform: str) -> dict[str, str]:
    """Auth's settings as its pod has them, and nothing else of this process's PARAPET_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARAPET_")}
    env.update(
        PARAPET_DATABASE_URL=database_url,
        PARAPET_AUTH_SIGNING_KEY_FILE=str(signing_key_file),
        PARAPET_AUTH_PLATFORM_TENANT_ID=platform,
    )
    return env


async def _bootstrap(env: dict[str, str], *args: str, stdout: int = asyncio.subprocess.PIPE) -> Ran:
    """``parapet bootstrap ARGS`` in a process of its own (the event loop keeps serving meanwhile)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "parapet.cli",
        "bootstrap",
        *args,
        env=env,
        cwd=REPO,
        stdout=stdout,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return Ran(process.returncode, (out or b"").decode(), err.decode())


def _secret_of(key: str) -> str:
    """The secret part of ``key``: everything after ``pk_<prefix>_``. Not ``split("_")``: the secret is base64url,
    so it may hold or begin with ``_`` itself (a secret starting with one made this check compare ``''``)."""
    prefix = key_prefix(key)
    assert prefix is not None, key
    return key.removeprefix(f"pk_{prefix}_")


def _printed_key(ran: Ran) -> str:
    """The key a successful run printed: alone on stdout, on one line, and never on stderr."""
    assert ran.returncode == 0, ran.stderr
    key = ran.stdout.removesuffix("\n")
    assert "\n" not in key and key_prefix(key) is not None, ran.stdout
    assert key not in ran.stderr and _secret_of(key) not in ran.stderr
    assert len(ran.stderr.splitlines()) == 1, ran.stderr
    return key


def _refused_as_done(ran: Ran) -> None:
    assert ran.returncode == EXIT_ALREADY_DONE, ran.stderr
    assert ran.stdout == ""
    assert len(ran.stderr.splitlines()) == 1, ran.stderr
    assert "already has an active API key" in ran.stderr and "--replace" in ran.stderr


async def _sign_in(auth: Auth, key: str) -> apb.AuthenticateResponse:
    response: apb.AuthenticateResponse = await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=key))
    return response


async def _refusal(auth: Auth, key: str) -> str:
    """The reason auth refuses ``key`` with."""
    details = await refusal_details(_sign_in(auth, key))
    assert details.code == grpc.StatusCode.UNAUTHENTICATED and details.error_info is not None
    reason: str = details.error_info.reason
    return reason


def _platform() -> str:
    return f"ops-{uuid.uuid4().hex[:8]}"


async def test_the_operator_key_is_printed_once_works_and_is_audited(
    database_url: str, nats_url: str, signing_key_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    platform = _platform()
    env = _environment(database_url, signing_key_file, platform)
    key = _printed_key(await _bootstrap(env, "operator"))
    again = await _bootstrap(env, "operator")
    _refused_as_done(again)

    async with running_auth(
        database_url, nats_url, signing_key_file, auth_platform_tenant_id=platform
    ) as auth:
        issued = await _sign_in(auth, key)
        assert (issued.principal.tenant_id, issued.principal.subject) == (platform, "operator")
        assert list(issued.principal.roles) == ["platform-admin"]
        operator = (("authorization", f"Bearer {issued.token}"),)
        # A platform operator's right: the one thing no tenant's key can do.
        listed = await auth.admin.ListTenants(tpb.ListTenantsRequest(page_size=1000), metadata=operator)
        assert platform in {t.tenant_id for t in listed.tenants}
        keys = await auth.admin.ListApiKeys(
            tpb.ListApiKeysRequest(tenant_id=platform, user_id="operator"), metadata=operator
        )
        assert [k.api_key_id for k in keys.api_keys] == [issued.principal.api_key_id]
        assert issued.principal.api_key_id in again.stderr  # the refusal names the key that exists
        # The running auth's relay publishes the record the command left in the outbox.
        [(record, _headers)] = await audit_records(nats_url, platform, 1)

    action = record.admin_action
    assert (action.method, action.target) == ("parapet bootstrap", issued.principal.api_key_id)
    assert (action.actor.tenant_id, action.actor.subject) == (platform, "parapet-bootstrap")
    assert action.attributes["user_id"] == "operator" and action.attributes["role"] == "platform-admin"
    assert action.attributes["prefix"] == "pk_" + key.split("_")[1]
    assert "revoked_api_key_ids" not in action.attributes
    secret = _secret_of(key)
    assert secret.encode() not in record.SerializeToString()
    assert secret not in caplog.text


async def test_the_gateway_key_can_be_replaced_when_lost(
    database_url: str, nats_url: str, signing_key_file: Path
) -> None:
    platform = _platform()
    env = _environment(database_url, signing_key_file, platform)
    first = _printed_key(await _bootstrap(env, "gateway"))
    _refused_as_done(await _bootstrap(env, "gateway"))
    replaced = await _bootstrap(env, "gateway", "--replace")
    second = _printed_key(replaced)
    assert second != first and "revoked in its favour" in replaced.stderr

    # Started after the replacement, so no cache of its own remembers the first key.
    async with running_auth(
        database_url, nats_url, signing_key_file, auth_platform_tenant_id=platform
    ) as auth:
        assert await _refusal(auth, first) == "API_KEY_REVOKED"
        issued = await _sign_in(auth, second)
        assert (issued.principal.subject, list(issued.principal.roles)) == ("gateway", ["token-delegator"])
        records = [record for record, _ in await audit_records(nats_url, platform, 2)]
    first_id, second_id = (record.admin_action.target for record in records)
    assert second_id == issued.principal.api_key_id
    assert records[1].admin_action.attributes["revoked_api_key_ids"] == first_id
    assert first_id in replaced.stderr


async def test_two_runs_at_once_issue_one_key(
    database_url: str, nats_url: str, signing_key_file: Path
) -> None:
    platform = _platform()
    env = _environment(database_url, signing_key_file, platform)
    runs = await asyncio.gather(_bootstrap(env, "operator"), _bootstrap(env, "operator"))
    won = [run for run in runs if run.returncode == 0]
    lost = [run for run in runs if run.returncode != 0]
    assert len(won) == 1 and len(lost) == 1, [r.stderr for r in runs]
    _refused_as_done(lost[0])
    key = _printed_key(won[0])

    async with running_auth(
        database_url, nats_url, signing_key_file, auth_platform_tenant_id=platform
    ) as auth:
        issued = await _sign_in(auth, key)
        operator = (("authorization", f"Bearer {issued.token}"),)
        keys = await auth.admin.ListApiKeys(
            tpb.ListApiKeysRequest(tenant_id=platform, user_id="operator"), metadata=operator
        )
        assert len(keys.api_keys) == 1


async def test_a_key_that_cannot_be_printed_is_never_stored(
    database_url: str, nats_url: str, signing_key_file: Path
) -> None:
    platform = _platform()
    env = _environment(database_url, signing_key_file, platform)
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will ever read what the command prints
    try:
        closed = await _bootstrap(env, "operator", stdout=write_end)
    finally:
        os.close(write_end)
    assert closed.returncode == EXIT_PIPE_CLOSED, closed.stderr
    assert "Traceback" not in closed.stderr

    # Not "already has a key": the transaction that made the unprinted key was rolled back.
    key = _printed_key(await _bootstrap(env, "operator"))
    async with running_auth(
        database_url, nats_url, signing_key_file, auth_platform_tenant_id=platform
    ) as auth:
        assert (await _sign_in(auth, key)).principal.subject == "operator"


async def test_a_disabled_account_gets_no_key(database_url: str, signing_key_file: Path) -> None:
    platform = _platform()
    env = _environment(database_url, signing_key_file, platform)
    _printed_key(await _bootstrap(env, "operator"))
    database = Database(database_url, "auth")
    try:
        async with database.connect() as connection:  # as the tables' owner: no admin RPC may do this to it
            await connection.execute(
                text("UPDATE users SET state = 'disabled' WHERE tenant_id = :t AND user_id = 'operator'"),
                {"t": platform},
            )
    finally:
        await database.close()
    refused = await _bootstrap(env, "operator", "--replace")
    assert (refused.returncode, refused.stdout) == (EXIT_FAILED, "")
    assert (
        refused.stderr.strip()
        == "parapet bootstrap: the user operator is disabled: a key of it would not authenticate"
    )
