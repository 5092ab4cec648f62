"""The auth service as the kit runs it (`parapet serve auth`): AuthService and TenantAdminService."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc.aio

from parapet.auth.v1 import auth_service_pb2_grpc, tenant_admin_service_pb2_grpc
from parapet.events.audit import AUDIT_STREAM
from parapet.kit.app import Resources, ServiceApp
from parapet.kit.identity import KeySource, TokenSigner, jwks_file_source
from services.auth import oidc
from services.auth.access import Access
from services.auth.admin import TenantAdminServicer
from services.auth.apikeys import KeyHasher
from services.auth.audit import OutboxRelay
from services.auth.authenticator import Authenticator
from services.auth.bootstrap import ensure_platform_tenant
from services.auth.cache import IdentityEntry, TenantKeyedCache
from services.auth.delegation import Delegator
from services.auth.invalidation import InvalidationListener
from services.auth.service import AuthServicer
from services.auth.settings import AuthSettings
from services.auth.signing import OwnAndFileKeys, load_pepper, load_signing_key, published_jwks
from services.auth.store import AuthStore, TenantView
from services.auth.throttle import FailureThrottle

log = logging.getLogger(__name__)

AUTH_SERVICE = "parapet.auth.v1.AuthService"
TENANT_ADMIN_SERVICE = "parapet.auth.v1.TenantAdminService"


def key_source(settings: AuthSettings) -> KeySource:
    """Auth verifies tokens with its own signing key (added at register) and the deployment's JWKS file."""
    fallback = jwks_file_source(settings.identity_jwks_file) if settings.identity_jwks_file else None
    return OwnAndFileKeys(fallback)


async def register(server: grpc.aio.Server, resources: Resources[AuthSettings]) -> None:
    settings = resources.settings
    database = resources.require_database()
    signing_key = load_signing_key(settings)
    own_keys = resources.identity.key_source
    if isinstance(own_keys, OwnAndFileKeys):
        own_keys.trust(signing_key)
    store = AuthStore(database)
    hasher = KeyHasher(load_pepper(settings, signing_key))
    await ensure_platform_tenant(
        store,
        settings.auth_platform_tenant_id,
        hasher,
        settings.auth_bootstrap_key_file,
        settings.auth_gateway_key_file,
    )

    identities: TenantKeyedCache[IdentityEntry] = TenantKeyedCache(
        settings.auth_cache_size, settings.auth_cache_seconds
    )
    tenants: TenantKeyedCache[TenantView] = TenantKeyedCache(
        settings.auth_cache_size, settings.auth_cache_seconds
    )
    relay = OutboxRelay(store, resources.require_bus(), interval=settings.auth_outbox_interval_seconds)
    access = Access(
        store, tenants, settings.auth_platform_tenant_id, relay.wake, (identities.invalidate_tenant,)
    )
    signer = TokenSigner(
        signing_key.private_key,
        signing_key.kid,
        issuer=settings.identity_issuer,
        audience=settings.identity_audience,
        ttl_seconds=settings.auth_token_ttl_seconds,
    )
    window = settings.auth_throttle_window_seconds
    authenticator = Authenticator(
        store,
        signer,
        hasher,
        identities,
        access,
        prefix_throttle=FailureThrottle(settings.auth_throttle_failures, window),
        client_throttle=FailureThrottle(settings.auth_throttle_client_failures, window),
        jwks=oidc.JwksCache(
            min_refetch_seconds=settings.auth_oidc_min_refetch_seconds,
            private_addresses=settings.auth_oidc_jwks_private_addresses,
        ),
    )
    assert settings.database_url is not None
    listener = InvalidationListener(
        settings.database_url,
        on_tenant=(identities.invalidate_tenant, tenants.invalidate_tenant),
        on_reset=(identities.clear, tenants.clear),
    )
    resources.spawn(listener.run(), name="auth-invalidation-listener")
    resources.spawn(relay.run(), name="auth-audit-outbox-relay")

    auth_service_pb2_grpc.add_AuthServiceServicer_to_server(
        AuthServicer(
            authenticator,
            access,
            published_jwks(settings, signing_key),
            Delegator(store, access, signer, settings.auth_platform_tenant_id),
        ),
        server,
    )
    tenant_admin_service_pb2_grpc.add_TenantAdminServiceServicer_to_server(
        TenantAdminServicer(access, hasher), server
    )


APP = ServiceApp(
    name="auth",
    settings_type=AuthSettings,
    register=register,
    service_names=(AUTH_SERVICE, TENANT_ADMIN_SERVICE),
    uses_database=True,
    uses_nats=True,
    migrations=Path(__file__).parent / "migrations",
    streams=(AUDIT_STREAM,),
    key_source=key_source,
    # Authenticate exchanges an external credential for the internal token, and GetJwks publishes the
    # public keys every service verifies that token with: neither can require the token itself.
    public_methods=frozenset({f"/{AUTH_SERVICE}/Authenticate", f"/{AUTH_SERVICE}/GetJwks"}),
)
