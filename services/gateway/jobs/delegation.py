"""Callers for jobs: the submitter's fresh internal token, obtained from auth when the job runs.

Nothing of the submitter's credential is kept: the job row holds the ids auth issued the principal under
(tenant, subject, API key id). The worker authenticates as the gateway's own platform service account (its
API key in ``gateway_job_service_key_file``, role ``token-delegator``) and asks auth's
``IssueDelegatedToken`` for a token of that principal, which auth issues only after re-checking the key and
the tenant now: a key revoked while its job waited stops the job (FAILED_PRECONDITION ``API_KEY_REVOKED``).

Auth tells the two parties apart by the code (docs/contracts.md): UNAUTHENTICATED, and PERMISSION_DENIED
``PERMISSION_MISSING``, are about the caller, the gateway's own account (its key revoked or replaced with
``parapet bootstrap gateway --replace``, its user disabled, its role gone); FAILED_PRECONDITION,
PERMISSION_DENIED ``PRIVILEGE_ESCALATION`` and INVALID_ARGUMENT are about the principal named. The first are
raised as :class:`DelegatorRefused`, after the token and key held are dropped, so that the next call reads
the key file again: the job is not at fault and waits (the worker gives it back). Until 2026-12-06 the worker
took them for the job's, so after a key rotation every job it claimed failed at once, and the gateway kept the
old key until it restarted.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import grpc.aio

from parapet import clients
from parapet.auth.v1 import auth_service_pb2
from parapet.kit.config import ServiceSettings
from parapet.kit.errors import error_details
from parapet.kit.identity import Principal
from services.gateway.caller import Caller

log = logging.getLogger(__name__)

# A token is renewed once it would expire within this margin: an item must never start with a token that
# dies during its downstream calls.
TOKEN_MARGIN_SECONDS = 60.0


class DelegatorRefused(Exception):
    """The gateway's own credential cannot act at auth: its key file is missing or empty, or auth refused its
    key or the token of it (``why``: auth's reason, or what is wrong with the file). Not the job's doing."""

    def __init__(self, key_file: Path, why: str) -> None:
        super().__init__(f"the gateway's service account key in {key_file} cannot act: {why}")
        self.key_file = key_file
        self.why = why


def _about_the_caller(error: grpc.aio.AioRpcError) -> bool:
    """Whether auth's refusal is of the caller's own credential rather than of the principal it names."""
    code = error.code()
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return True
    return code == grpc.StatusCode.PERMISSION_DENIED and error_details(error).reason == "PERMISSION_MISSING"


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
                try:
                    reply = await self._auth.stub.Authenticate(
                        auth_service_pb2.AuthenticateRequest(api_key=self._service_key()), timeout=10.0
                    )
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.UNAUTHENTICATED:
                        raise  # auth down, slow or throttling: the worker's outage handling
                    self._key = None  # the operator may have written a new key meanwhile
                    raise self._refused(error_details(error).reason or error.code().name) from None
                self._own = _caller(reply)
            return self._own.token

    def _service_key(self) -> str:
        if self._key is None:
            try:
                key = self._key_file.read_text().strip()
            except FileNotFoundError:
                # Auth writes it on its first start (PARAPET_AUTH_GATEWAY_KEY_FILE), which may come later.
                raise self._refused("the file does not exist (yet)") from None
            except OSError as error:
                raise self._refused(f"the file cannot be read: {error}") from None
            if not key:
                raise self._refused("the file is empty")
            self._key = key
        return self._key

    def _refused(self, why: str) -> DelegatorRefused:
        log.error(
            "the gateway's own credential cannot act at auth: jobs are given back until its key file holds "
            "a key of a platform account with token.delegate (parapet bootstrap gateway --replace)",
            extra={"key_file": str(self._key_file), "why": why},
        )
        return DelegatorRefused(self._key_file, why)

    async def _forget(self, token: str) -> None:
        """Drop the refused ``token`` and the key it came from, unless a newer token replaced it meanwhile."""
        async with self._lock:
            if self._own is not None and self._own.token == token:
                self._own = None
                self._key = None

    async def caller_for(self, tenant_id: str, subject: str, api_key_id: str) -> Caller:
        """A Caller for the stored principal; raises ``grpc.aio.AioRpcError`` as auth answers about it (e.g.
        FAILED_PRECONDITION with reason ``API_KEY_REVOKED``), and :class:`DelegatorRefused` when auth refuses
        the gateway's own credential instead."""
        token = await self._own_token()
        try:
            reply = await self._auth.stub.IssueDelegatedToken(
                auth_service_pb2.IssueDelegatedTokenRequest(
                    tenant_id=tenant_id, subject=subject, api_key_id=api_key_id
                ),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10.0,
            )
        except grpc.aio.AioRpcError as error:
            if not _about_the_caller(error):
                raise
            await self._forget(token)
            raise self._refused(error_details(error).reason or error.code().name) from None
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
