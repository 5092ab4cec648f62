"""A running auth service (real PostgreSQL, NATS, channel) and helpers to call it as anyone."""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc.aio
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from parapet.auth.v1 import (
    api_key_pb2,
    auth_service_pb2_grpc,
    tenant_admin_service_pb2,
    tenant_admin_service_pb2_grpc,
    tenant_pb2,
    tenant_policy_pb2,
    user_pb2,
)
from parapet.cli.identity import public_jwk
from parapet.kit.identity import Principal, TokenSigner
from parapet.kit.testing import TestKeys, running
from services.auth.app import APP
from services.auth.settings import AuthSettings

PLATFORM = "parapet"


@pytest.fixture(scope="module")
def signing_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = Ed25519PrivateKey.generate()
    path = tmp_path_factory.mktemp("identity") / "signing_key.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def auth_settings(database_url: str, nats_url: str, signing_key_file: Path, **overrides: Any) -> AuthSettings:
    values: dict[str, Any] = {
        "port": 0,
        "database_url": database_url,
        "nats_url": nats_url,
        "auth_signing_key_file": signing_key_file,
        "health_interval_seconds": 0.5,
        "shutdown_grace_seconds": 1.0,
        "auth_outbox_interval_seconds": 0.2,
        "auth_oidc_min_refetch_seconds": 0.0,
        "auth_oidc_jwks_private_addresses": True,  # the tests' identity providers listen on loopback
    }
    values.update(overrides)
    return AuthSettings(**values)


Metadata = tuple[tuple[str, str], ...]


async def create_user(
    admin: tenant_admin_service_pb2_grpc.TenantAdminServiceStub,
    operator: Metadata,
    tenant_id: str,
    user_id: str,
    roles: tuple[str, ...] = (),
    groups: tuple[str, ...] = (),
) -> None:
    """A service-account user of ``tenant_id`` through the admin API (its roles must be in the policy)."""
    await admin.CreateUser(
        tenant_admin_service_pb2.CreateUserRequest(
            tenant_id=tenant_id,
            user=user_pb2.User(
                user_id=user_id, roles=roles, groups=groups, kind=user_pb2.USER_KIND_SERVICE_ACCOUNT
            ),
        ),
        metadata=operator,
    )


async def create_key(
    admin: tenant_admin_service_pb2_grpc.TenantAdminServiceStub,
    operator: Metadata,
    tenant_id: str,
    user_id: str,
    scopes: tuple[str, ...] = (),
) -> tuple[str, str]:
    """An API key of ``user_id`` through the admin API: (api_key_id, full key)."""
    created = await admin.CreateApiKey(
        tenant_admin_service_pb2.CreateApiKeyRequest(
            tenant_id=tenant_id, api_key=api_key_pb2.ApiKey(user_id=user_id, scopes=scopes)
        ),
        metadata=operator,
    )
    return created.api_key.api_key_id, created.secret


async def update_policy(
    admin: tenant_admin_service_pb2_grpc.TenantAdminServiceStub,
    operator: Metadata,
    tenant_id: str,
    edit: tenant_policy_pb2.TenantPolicy,
) -> tenant_policy_pb2.TenantPolicy:
    """``edit`` merged into the tenant's current policy (protobuf ``MergeFrom``: the fields it sets replace,
    its lists are appended), stored as the next version through the admin API; returns the stored policy."""
    current: tenant_admin_service_pb2.GetTenantPolicyResponse = await admin.GetTenantPolicy(
        tenant_admin_service_pb2.GetTenantPolicyRequest(tenant_id=tenant_id), metadata=operator
    )
    policy = tenant_policy_pb2.TenantPolicy()
    policy.CopyFrom(current.policy)
    policy.MergeFrom(edit)
    updated: tenant_admin_service_pb2.UpdateTenantPolicyResponse = await admin.UpdateTenantPolicy(
        tenant_admin_service_pb2.UpdateTenantPolicyRequest(
            tenant_id=tenant_id, policy=policy, expected_version=current.policy.version
        ),
        metadata=operator,
    )
    return updated.policy


@dataclass
class Auth:
    """A channel to a running auth service and a signer of internal tokens with its key."""

    channel: grpc.aio.Channel
    signer: TokenSigner
    target: str = ""  # host:port of the server the channel dials
    metrics_port: int | None = None  # its Prometheus endpoint, when started with ``metrics_port=0``

    @property
    def auth(self) -> auth_service_pb2_grpc.AuthServiceStub:
        return auth_service_pb2_grpc.AuthServiceStub(self.channel)

    @property
    def admin(self) -> tenant_admin_service_pb2_grpc.TenantAdminServiceStub:
        return tenant_admin_service_pb2_grpc.TenantAdminServiceStub(self.channel)

    def as_(
        self, tenant_id: str, subject: str = "someone", roles: tuple[str, ...] = (), **kw: Any
    ) -> Metadata:
        token = self.signer.sign(Principal(tenant_id=tenant_id, subject=subject, roles=roles, **kw))
        return (("authorization", f"Bearer {token}"),)

    @property
    def operator(self) -> Metadata:
        return self.as_(PLATFORM, "operator", ("platform-admin",))

    async def new_tenant(self, prefix: str = "t") -> str:
        tenant_id = f"{prefix}-{uuid.uuid4().hex[:10]}"
        await self.admin.CreateTenant(
            tenant_admin_service_pb2.CreateTenantRequest(
                tenant=tenant_pb2.Tenant(tenant_id=tenant_id, display_name=tenant_id)
            ),
            metadata=self.operator,
        )
        return tenant_id

    async def set_policy(
        self, tenant_id: str, edit: tenant_policy_pb2.TenantPolicy
    ) -> tenant_policy_pb2.TenantPolicy:
        """The tenant's policy with ``edit`` merged in, as its next version (see :func:`update_policy`)."""
        return await update_policy(self.admin, self.operator, tenant_id, edit)

    async def new_user(
        self, tenant_id: str, user_id: str, roles: tuple[str, ...] = (), groups: tuple[str, ...] = ()
    ) -> None:
        await create_user(self.admin, self.operator, tenant_id, user_id, roles, groups)

    async def new_key(self, tenant_id: str, user_id: str, scopes: tuple[str, ...] = ()) -> tuple[str, str]:
        """(api_key_id, full key)."""
        return await create_key(self.admin, self.operator, tenant_id, user_id, scopes)


def keys_for(signing_key_file: Path) -> TestKeys:
    """The auth service's signing key as the kit's ``TestKeys``: what it signs is what auth issues, and its JWKS
    is the one ``parapet.cli.identity.provision`` publishes for every service (``kid`` = the key's thumbprint)."""
    key = serialization.load_pem_private_key(signing_key_file.read_bytes(), None)
    assert isinstance(key, Ed25519PrivateKey)
    jwk = public_jwk(key.public_key())
    return TestKeys(key, jwk, TokenSigner(key, jwk["kid"]))


def signer_for(signing_key_file: Path) -> TokenSigner:
    return keys_for(signing_key_file).signer


@asynccontextmanager
async def running_auth(
    database_url: str, nats_url: str, signing_key_file: Path, **overrides: Any
) -> AsyncIterator[Auth]:
    """The real auth service (``auth_settings`` with ``overrides``) on port 0, and a channel to it."""
    settings = auth_settings(database_url, nats_url, signing_key_file, **overrides)
    async with (
        running(APP, settings) as (server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        yield Auth(channel, signer_for(signing_key_file), f"127.0.0.1:{port}", server.metrics_port)


@pytest.fixture
async def auth(database_url: str, nats_url: str, signing_key_file: Path) -> AsyncIterator[Auth]:
    async with running_auth(database_url, nats_url, signing_key_file) as auth:
        yield auth


class JwksServer:
    """A local HTTP server publishing a JWKS document that a test can change (key rotation)."""

    def __init__(self) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.document: Any = {"keys": []}  # any JSON: a test may serve something that is no JWKS
        self.fetches = 0
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server_self.fetches += 1
                body = json.dumps(server_self.document).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/jwks"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class IdpKey:
    alg: str
    kid: str
    private: Any
    jwk: dict[str, Any]


def make_idp_key(alg: str, kid: str) -> IdpKey:
    import json

    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

    private: Any
    if alg == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(ECAlgorithm.to_jwk(private.public_key()))
    else:
        private = ed25519.Ed25519PrivateKey.generate()
        jwk = json.loads(OKPAlgorithm.to_jwk(private.public_key()))
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return IdpKey(alg, kid, private, jwk)


@dataclass
class Idp:
    """A tenant whose policy trusts a local identity provider, and a way to mint that provider's tokens."""

    tenant_id: str
    issuer: str
    audience: str
    server: JwksServer
    keys: dict[str, IdpKey]

    def token(self, alg: str = "RS256", *, kid: str | None = None, utf8: bool = False, **claims: Any) -> str:
        """A token of this provider for ``alice`` (role ``analyst``, group ``finance``), ``claims`` replacing
        those (None: left out). ``utf8``: non-ASCII characters written as UTF-8, as Entra ID and most providers
        do, where PyJWT escapes each in 6 bytes (so a provider's token of CJK groups is half as large)."""
        import json
        import time

        import jwt

        key = self.keys[alg]
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "alice",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
            "roles": ["analyst"],
            "groups": ["finance"],
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        if utf8:
            payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            return jwt.api_jws.encode(payload, key.private, algorithm=alg, headers={"kid": kid or key.kid})
        return jwt.encode(body, key.private, algorithm=alg, headers={"kid": kid or key.kid})


@functools.cache
def _idp_keys() -> tuple[tuple[str, IdpKey], ...]:
    """The provider's keys, made once per session: RSA key generation is slow on a busy machine."""
    return tuple((alg, make_idp_key(alg, f"{alg.lower()}-1")) for alg in ("RS256", "ES256", "EdDSA"))


@pytest.fixture
async def idp(auth: Auth) -> AsyncIterator[Idp]:
    from google.protobuf import duration_pb2

    from parapet.auth.v1 import permission_pb2, tenant_policy_pb2

    tenant_id = await auth.new_tenant("idp")
    server = JwksServer()
    keys = dict(_idp_keys())  # a copy: tests may rotate a key
    server.document = {"keys": [k.jwk for k in keys.values()]}
    issuer = f"https://login.{tenant_id}.example/"
    current = await auth.admin.GetTenantPolicy(
        tenant_admin_service_pb2.GetTenantPolicyRequest(tenant_id=tenant_id), metadata=auth.operator
    )
    policy = tenant_policy_pb2.TenantPolicy()
    policy.CopyFrom(current.policy)
    policy.roles.append(
        tenant_policy_pb2.RoleDefinition(role="analyst", permissions=[permission_pb2.PERMISSION_CHAT])
    )
    policy.identity_providers.append(
        tenant_policy_pb2.OidcProvider(
            issuer=issuer,
            audiences=["parapet-test"],
            jwks_uri=server.url,
            max_clock_skew=duration_pb2.Duration(seconds=30),
            roles_claim="roles",
            groups_claim="groups",
        )
    )
    await auth.admin.UpdateTenantPolicy(
        tenant_admin_service_pb2.UpdateTenantPolicyRequest(
            tenant_id=tenant_id, policy=policy, expected_version=1
        ),
        metadata=auth.operator,
    )
    try:
        yield Idp(tenant_id, issuer, "parapet-test", server, keys)
    finally:
        server.close()
