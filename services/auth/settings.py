"""Settings of the auth service: the key it signs internal identity tokens with."""

from pathlib import Path

from pydantic import Field

from parapet.kit.config import ServiceSettings


class AuthSettings(ServiceSettings):
    """Only the auth service holds a private key; every other service has just the public JWKS."""

    auth_signing_key_file: Path | None = Field(
        None,
        description="PEM file of the Ed25519 private key that signs internal identity tokens "
        "(`parapet up` provisions one under `.parapet/identity/`).",
    )
