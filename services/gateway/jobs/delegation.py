"""Callers for jobs: the submitter's fresh internal token, obtained from auth when the job runs.

Nothing of the submitter's credential is kept: the job row holds the ids auth issued the principal under
(tenant, subject, API key id). The worker authenticates as the gateway's own platform service account (its
API key in ``gateway_job_service_key_file``, role ``token-delegator``) and asks auth's
``IssueDelegatedToken`` for a token of that principal, which auth issues only after re-checking the key and
the tenant now: a key revoked while its job waited stops the job (FAILED_PRECONDITION ``API_KEY_REVOKED``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from parapet import clients
from parapet.auth.v1 import auth_service_pb2
from parapet.kit.config import ServiceSettings
from parapet.kit.identity import Principal
from services.gateway.caller import Caller

# A token is renewed once it would expire within this margin: an item must never start with a token that
# dies during its downstream calls.
TOKEN_MARGIN_SECONDS = 60.0


class DelegatedCallers:
    def __init__(self, auth_address: str, key_file: Path, settings: ServiceSettings | None = None) -> None:
        # Read at first use, not at start: auth writes the file on its own first start, which may come after
        # the gateway's (`parapet up` starts the services together); a job meanwhile is retried.
        self._key_file = key_file
        self._key: str | None = None
        self._auth = clients.auth(auth_address, settings)
        self._own: Caller | None = None
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        await self._auth.close()

    async def _own_token(self) -> str:
        """The service account's internal token, renewed before it expires."""
        async with self._lock:
            if self._own is None or self._own.expires_within(TOKEN_MARGIN_SECONDS):
                reply = await self._auth.stub.Authenticate(
                    auth_service_pb2.AuthenticateRequest(api_key=self._service_key()), timeout=10.0
                )
                self._own = _caller(reply)
            return self._own.token

    def _service_key(self) -> str:
        if self._key is None:
            try:
                key = self._key_file.read_text().strip()
            except FileNotFoundError:
                raise RuntimeError(
                    f"{self._key_file} does not exist yet: auth writes the gateway service account's key there "
                    "(PARAPET_AUTH_GATEWAY_KEY_FILE) on its first start"
                ) from None
            if not key:
                raise RuntimeError(
                    f"{self._key_file} is empty: it must hold the gateway service account's API key"
                )
            self._key = key
        return self._key

    async def caller_for(self, tenant_id: str, subject: str, api_key_id: str) -> Caller:
        """A Caller for the stored principal; raises ``grpc.aio.AioRpcError`` as auth answers (e.g.
        FAILED_PRECONDITION with reason ``API_KEY_REVOKED``)."""
        token = await self._own_token()
        reply = await self._auth.stub.IssueDelegatedToken(
            auth_service_pb2.IssueDelegatedTokenRequest(
                tenant_id=tenant_id, subject=subject, api_key_id=api_key_id
            ),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10.0,
        )
        return _caller(reply)


def _caller(
    reply: auth_service_pb2.AuthenticateResponse | auth_service_pb2.IssueDelegatedTokenResponse,
) -> Caller:
    return Caller(
        token=reply.token,
        principal=Principal.from_proto(reply.principal),
        policy_version=reply.policy_version,
        expire_time=float(reply.expire_time.seconds),
    )


class RenewingCaller:
    """The Caller of one job's items, renewed from auth once it nears expiry (a job may run for hours)."""

    def __init__(self, callers: DelegatedCallers, tenant_id: str, subject: str, api_key_id: str) -> None:
        self._callers = callers
        self._ids = (tenant_id, subject, api_key_id)
        self._current: Caller | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Caller:
        async with self._lock:
            if self._current is None or self._current.expires_within(TOKEN_MARGIN_SECONDS):
                self._current = await self._callers.caller_for(*self._ids)
            return self._current
