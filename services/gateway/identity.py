"""The caller's credential (API key or OIDC JWT) to a :class:`Caller`, remembered on the hot path.

A warm chat costs no call to auth: the exchange is cached in-process under a SHA-256 of the credential
(never the credential itself), for at most ``gateway_identity_cache_seconds`` and never closer than
``gateway_token_margin_seconds`` to the internal token's expiry, so a downstream service never sees an
expired token. Revocation reaches the cache the way it reaches auth's own replicas: auth's
``pg_notify('parapet_auth', tenant)`` on every change (see docs/auth.md), which drops the tenant's entries
here within the same ~1 s; if the listener's connection drops, everything is dropped once it listens again,
and the TTL bounds staleness meanwhile. Failures are never cached.
"""

from __future__ import annotations

import hashlib
import time

import grpc.aio

from parapet.auth.v1 import auth_service_pb2
from parapet.kit.context import CLIENT_ADDRESS_KEY, MAX_CLIENT_ADDRESS_LENGTH
from parapet.kit.errors import Unauthenticated
from parapet.kit.identity import Principal
from services.auth.cache import TenantKeyedCache
from services.gateway.caller import Caller
from services.gateway.errors import relayed
from services.gateway.peers import Peers
from services.gateway.settings import GatewaySettings

MAX_CREDENTIAL_BYTES = 16 * 1024  # auth's own bound on OIDC tokens; anything longer is refused here


def bearer(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str:
    """The credential of ``authorization: Bearer <credential>``; UNAUTHENTICATED when absent or malformed."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, credential = text.partition(" ")
            if scheme.lower() != "bearer" or not credential.strip():
                raise Unauthenticated(
                    "authorization must be 'Bearer <API key or OIDC token>'", reason="CREDENTIAL_MISSING"
                )
            if len(credential) > MAX_CREDENTIAL_BYTES:
                raise Unauthenticated("the credential is too large", reason="CREDENTIAL_TOO_LARGE")
            return credential.strip()
    raise Unauthenticated(
        "this method needs 'authorization: Bearer <API key or OIDC token>'", reason="CREDENTIAL_MISSING"
    )


def _is_jwt(credential: str) -> bool:
    return credential.count(".") == 2 and not credential.startswith("pk_")


class Authenticator:
    def __init__(self, peers: Peers, settings: GatewaySettings) -> None:
        self._peers = peers
        self._margin = settings.gateway_token_margin_seconds
        self.cache: TenantKeyedCache[Caller] = TenantKeyedCache(
            settings.gateway_identity_cache_size, settings.gateway_identity_cache_seconds
        )
        self._timeout = settings.gateway_downstream_timeout_seconds
        self._epoch = 0

    async def authenticate(self, credential: str, *, client_ip: str = "") -> Caller:
        key = hashlib.sha256(credential.encode()).digest()
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        request = (
            auth_service_pb2.AuthenticateRequest(oidc_token=credential)
            if _is_jwt(credential)
            else auth_service_pb2.AuthenticateRequest(api_key=credential)
        )
        # The tenant is unknown until auth answers, so the per-tenant generation guard cannot be read
        # before the call; any invalidation while it runs (``_epoch`` moved) means the answer is not stored.
        epoch = self._epoch
        try:
            # Auth throttles failures per client too; without this it would count the gateway as the client.
            metadata = ((CLIENT_ADDRESS_KEY, client_ip[:MAX_CLIENT_ADDRESS_LENGTH]),) if client_ip else None
            reply = await self._peers.auth.stub.Authenticate(
                request, metadata=metadata, timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise relayed(error) from None
        principal = Principal.from_proto(reply.principal)
        expires = reply.expire_time.seconds + reply.expire_time.nanos / 1e9
        caller = Caller(
            token=reply.token, principal=principal, policy_version=reply.policy_version, expire_time=expires
        )
        tenant = principal.tenant_id
        if epoch == self._epoch and (expires == 0.0 or expires - self._margin > time.time()):
            self.cache.put(
                key,
                tenant,
                caller,
                generation=self.cache.generation(tenant),
                expires=expires - self._margin if expires else None,
            )
        return caller

    def invalidate_tenant(self, tenant_id: str) -> None:
        self._epoch += 1
        self.cache.invalidate_tenant(tenant_id)

    def clear(self) -> None:
        self._epoch += 1
        self.cache.clear()
