"""The environment each service process gets from ``parapet up``: its port, the shared servers, peers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from parapet.cli.identity import IdentityFiles
from parapet.cli.layout import BOOTSTRAP_KEY_NAME, PortLayout
from parapet.cli.registry import SERVICES, ServiceSpec

# Only the auth service signs internal tokens, so only it is told where the private key is.
SIGNING_KEY_ENV = "PARAPET_AUTH_SIGNING_KEY_FILE"
SIGNING_SERVICE = "auth"
AUDIT_KEY_ENV = "PARAPET_AUDIT_CHECKPOINT_KEY_FILE"
AUDIT_SERVICE = "audit"
# Where the auth service writes the first platform operator's API key, once (the only way in at first).
BOOTSTRAP_KEY_ENV = "PARAPET_AUTH_BOOTSTRAP_KEY_FILE"
# Moderation seals masking contexts with it; one key for the suite's lifetime, not one per process start.
MASKING_KEY_ENV = "PARAPET_MASKING_KEY"
MASKING_SERVICE = "moderation"
# The gateway's platform service account (role token-delegator): auth writes its API key once; the gateway's
# job workers read it to obtain each job submitter's token (IssueDelegatedToken).
GATEWAY_KEY_WRITER_ENV = "PARAPET_AUTH_GATEWAY_KEY_FILE"
GATEWAY_KEY_READER_ENV = "PARAPET_GATEWAY_JOB_SERVICE_KEY_FILE"
GATEWAY_SERVICE = "gateway"
GATEWAY_KEY_NAME = "gateway.key"


@dataclass(frozen=True)
class SuiteEndpoints:
    """What every service of one suite shares: ports, database, NATS and identity files."""

    ports: PortLayout
    database_url: str
    nats_url: str
    identity: IdentityFiles


def peer_addresses(ports: PortLayout, specs: Sequence[ServiceSpec] = SERVICES) -> dict[str, str]:
    """``PARAPET_<SERVICE>_ADDRESS`` for every service, so each can reach the others."""
    return {spec.address_env: ports.service_address(spec) for spec in specs}


def service_env(spec: ServiceSpec, suite: SuiteEndpoints, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` (normally os.environ) with the settings of ``spec`` inside ``suite`` laid over it."""
    env = dict(base)
    # An inherited key path must not leak to services that have no business signing.
    env.pop(SIGNING_KEY_ENV, None)
    env.pop(AUDIT_KEY_ENV, None)
    env.pop(BOOTSTRAP_KEY_ENV, None)
    env.pop(MASKING_KEY_ENV, None)
    env.pop(GATEWAY_KEY_WRITER_ENV, None)
    env.pop(GATEWAY_KEY_READER_ENV, None)
    env.update(peer_addresses(suite.ports))
    env.update(
        {
            "PARAPET_HOST": suite.ports.host,
            "PARAPET_PORT": str(suite.ports.service_port(spec)),
            "PARAPET_METRICS_PORT": str(suite.ports.metrics_port(spec)),
            "PARAPET_DATABASE_URL": suite.database_url,
            "PARAPET_NATS_URL": suite.nats_url,
            "PARAPET_IDENTITY_JWKS_FILE": str(suite.identity.jwks_file),
            # Log lines reach home/logs/<name>.log as they are written, not when a buffer fills.
            "PYTHONUNBUFFERED": "1",
        }
    )
    # A suite of its own: every token comes from this release's auth and carries the resolved permissions, so
    # none is judged by role names (docs/deploy.md turns this on for upgraded deployments).
    env.setdefault("PARAPET_IDENTITY_REQUIRE_PERMISSIONS", "true")
    if spec.name == SIGNING_SERVICE:
        env[SIGNING_KEY_ENV] = str(suite.identity.signing_key_file)
        env[BOOTSTRAP_KEY_ENV] = str(suite.identity.signing_key_file.parent / BOOTSTRAP_KEY_NAME)
        env[GATEWAY_KEY_WRITER_ENV] = str(suite.identity.signing_key_file.parent / GATEWAY_KEY_NAME)
    if spec.name == GATEWAY_SERVICE:
        env[GATEWAY_KEY_READER_ENV] = str(suite.identity.signing_key_file.parent / GATEWAY_KEY_NAME)
    if spec.name == MASKING_SERVICE and suite.identity.masking_key_file is not None:
        env[MASKING_KEY_ENV] = suite.identity.masking_key_file.read_text().strip()
    if spec.name == AUDIT_SERVICE:
        # Checkpoints must verify across restarts, so the audit key lives with the suite's other keys.
        env[AUDIT_KEY_ENV] = str(suite.identity.signing_key_file.parent / "audit-checkpoint.pem")
    return env
