"""The auth service as the kit runs it (`parapet serve auth`).

Its RPCs are pending until issue #4 (auth and policy): each answers UNIMPLEMENTED with a message naming that
issue, never a made-up result.
"""

from pathlib import Path

from parapet.auth.v1 import (
    auth_service_pb2,
    auth_service_pb2_grpc,
    tenant_admin_service_pb2,
    tenant_admin_service_pb2_grpc,
)
from parapet.kit.app import ServiceApp
from parapet.kit.pending import GeneratedService, register_pending
from services.auth.settings import AuthSettings

AUTH_SERVICE = GeneratedService(auth_service_pb2, auth_service_pb2_grpc, "AuthService")
TENANT_ADMIN_SERVICE = GeneratedService(
    tenant_admin_service_pb2, tenant_admin_service_pb2_grpc, "TenantAdminService"
)

APP = ServiceApp(
    name="auth",
    settings_type=AuthSettings,
    register=register_pending(
        (
            AUTH_SERVICE,
            TENANT_ADMIN_SERVICE,
        ),
        "issue #4 (auth and policy)",
    ),
    service_names=(
        AUTH_SERVICE.full_name,
        TENANT_ADMIN_SERVICE.full_name,
    ),
    uses_database=True,
    uses_nats=False,
    migrations=Path(__file__).parent / "migrations",
    # Authenticate exchanges an external credential for the internal token, and GetJwks publishes the
    # public keys every service verifies that token with: neither can require the token itself.
    public_methods=frozenset(
        {f"/{AUTH_SERVICE.full_name}/Authenticate", f"/{AUTH_SERVICE.full_name}/GetJwks"}
    ),
)
