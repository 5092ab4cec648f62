"""Settings of the auth service: its signing key, the API key pepper, caches and throttling."""

from pathlib import Path

from pydantic import Field

from parapet.kit.config import ServiceSettings


class AuthSettings(ServiceSettings):
    """Only the auth service holds a private key; every other service has just the public JWKS."""

    auth_signing_key_file: Path | None = Field(
        None,
        description="PEM file of the Ed25519 private key that signs internal identity tokens "
        "(`parapet up` provisions one under `.parapet/identity/`). Its `kid` is the key's RFC 7638 "
        "thumbprint. Unset: an ephemeral key (tokens die with the process; for tests only).",
    )
    auth_api_key_pepper_file: Path | None = Field(
        None,
        description="File with at least 32 secret bytes keying the HMAC-SHA256 that API keys are stored "
        "as. Unset: derived (HKDF) from the signing key, so rotating that key then invalidates API keys; "
        "set it in production.",
    )
    auth_token_ttl_seconds: float = Field(
        300.0, gt=0, le=300, description="Lifetime of issued internal tokens (at most 5 minutes)."
    )
    auth_platform_tenant_id: str = Field(
        "parapet",
        description="The operators' tenant, created at start; its `platform-admin` role holds "
        "PERMISSION_PLATFORM_ADMIN (create, list, disable tenants).",
    )
    auth_cache_seconds: float = Field(
        30.0,
        gt=0,
        le=300,
        description="How long a resolved credential, tenant state or policy is cached. Changes are pushed "
        "to every replica at once (PostgreSQL NOTIFY); this bounds staleness if a notification is lost.",
    )
    auth_cache_size: int = Field(10_000, gt=0, description="Most credentials kept in the identity cache.")
    auth_throttle_failures: int = Field(
        10,
        gt=0,
        description="Failed authentications per API key prefix per window before throttling (OIDC tokens "
        "count per client only).",
    )
    auth_throttle_client_failures: int = Field(
        50, gt=0, description="Failed authentications per client address per window before throttling."
    )
    auth_throttle_window_seconds: float = Field(
        60.0, gt=0, description="Window over which failed authentications are counted."
    )
    auth_outbox_interval_seconds: float = Field(
        1.0, gt=0, description="How often the audit outbox relay looks for unsent records."
    )
    auth_oidc_min_refetch_seconds: float = Field(
        5.0,
        ge=0,
        description="An OIDC token with an unknown `kid` refetches its provider's JWKS at most this often.",
    )
    auth_oidc_jwks_private_addresses: bool = Field(
        False,
        description="Let an identity provider's `jwks_uri` reach loopback, private, link-local or other "
        "non-public addresses (an identity provider inside your own network; tests). Off: the URL is a tenant "
        "admin's choice and auth fetches it from inside your network, so it must resolve to public addresses.",
    )
    auth_bootstrap_key_file: Path | None = Field(
        None,
        description="Where to write the first platform operator's API key (user `operator`, role "
        "`platform-admin` of the platform tenant), created at the first start only, file mode 0600. "
        "Unset: no bootstrap key (operators sign an internal token with the signing key instead).",
    )
    auth_gateway_key_file: Path | None = Field(
        None,
        description="Where to write the API key of the platform service account `gateway` (role "
        "`token-delegator`: IssueDelegatedToken only), which the gateway's job workers authenticate with; "
        "created at the first start only, file mode 0600. Unset: no such account is created.",
    )
