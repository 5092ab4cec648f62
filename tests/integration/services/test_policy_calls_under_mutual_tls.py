"""Services that read tenant policies from auth do so over the deployment's TLS, as every other call does.

Without a mesh, `PARAPET_TLS_*` makes every server require a client certificate from the deployment's CA. Until
2026-12-06 moderation and inference built their auth client without the service's settings: plaintext, so under
mutual TLS every policy read failed (moderation refused every screen UNAVAILABLE, inference every completion),
and the clients ignored the keepalive settings too. Here auth, moderation and inference run with mutual TLS and
certificates generated for the test, over real handshakes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from parapet.auth.v1 import tenant_policy_pb2
from parapet.cli.identity import IdentityFiles, provision
from parapet.inference.v1 import inference_service_pb2 as ipb
from parapet.inference.v1 import inference_service_pb2_grpc
from parapet.kit.testing import Pki, make_pki, running
from parapet.moderation.v1 import finding_pb2, moderation_service_pb2_grpc
from parapet.moderation.v1 import moderation_service_pb2 as mpb
from services.auth.app import APP as AUTH
from services.inference.app import APP as INFERENCE
from services.inference.settings import InferenceSettings
from services.moderation.app import APP as MODERATION
from services.moderation.settings import ModerationSettings
from tests.integration.auth.conftest import Auth, auth_settings, signer_for


@dataclass
class Secured:
    pki: Pki
    identity: IdentityFiles

    def settings(self) -> dict[str, Any]:
        """What every service of the deployment is given: its certificate, the CA, client certificates required."""
        return {
            "tls_cert_file": self.pki.cert,
            "tls_key_file": self.pki.key,
            "tls_ca_file": self.pki.ca,
            "tls_require_client_cert": True,
            "identity_jwks_file": self.identity.jwks_file,
            "shutdown_grace_seconds": 0.5,
        }

    def channel(self, port: int) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(
            self.pki.ca.read_bytes(), self.pki.key.read_bytes(), self.pki.cert.read_bytes()
        )
        return grpc.aio.secure_channel(f"localhost:{port}", credentials)


@pytest.fixture
def secured(tmp_path: Path) -> Secured:
    return Secured(make_pki(tmp_path / "pki", "parapet"), provision(tmp_path / "identity"))


@pytest.fixture
async def auth(secured: Secured, database_url: str, nats_url: str) -> AsyncIterator[Auth]:
    settings = auth_settings(database_url, nats_url, secured.identity.signing_key_file, **secured.settings())
    async with running(AUTH, settings) as (_server, port), secured.channel(port) as channel:
        yield Auth(channel, signer_for(secured.identity.signing_key_file), f"localhost:{port}")


async def test_moderation_reads_a_tenant_s_blocked_terms_from_auth_over_mutual_tls(
    secured: Secured, auth: Auth
) -> None:
    tenant = await auth.new_tenant("tls")
    await auth.set_policy(
        tenant,
        tenant_policy_pb2.TenantPolicy(
            moderation=tenant_policy_pb2.ModerationPolicy(blocked_terms=["globex"])
        ),
    )
    assert secured.identity.masking_key_file is not None
    settings = ModerationSettings(
        port=0,
        auth_address=auth.target,
        policy_cache_seconds=0.0,
        masking_key=secured.identity.masking_key_file.read_text().strip(),
        **secured.settings(),
    )
    async with running(MODERATION, settings) as (_server, port), secured.channel(port) as channel:
        stub = moderation_service_pb2_grpc.ModerationServiceStub(channel)
        screened = await stub.ScreenInput(
            mpb.ScreenInputRequest(texts=["Globex is cheaper"]),
            metadata=auth.as_(tenant, "user-1"),
            timeout=10,
        )
    assert screened.decision == finding_pb2.DECISION_BLOCK


async def test_inference_reads_a_tenant_s_allowed_models_from_auth_over_mutual_tls(
    secured: Secured, auth: Auth, database_url: str, nats_url: str, tmp_path: Path
) -> None:
    tenant = await auth.new_tenant("tls")
    await auth.set_policy(
        tenant, tenant_policy_pb2.TenantPolicy(models=tenant_policy_pb2.ModelPolicy(allowed_models=["cheap"]))
    )
    config = tmp_path / "inference.json"
    config.write_text(
        json.dumps(
            {
                "default_model": "cheap",
                "providers": {"local": {"kind": "local"}},
                "models": [{"name": "cheap", "provider": "local"}, {"name": "premium", "provider": "local"}],
            }
        )
    )
    settings = InferenceSettings(
        port=0,
        database_url=database_url,
        nats_url=nats_url,
        auth_address=auth.target,
        policy_cache_seconds=0.0,
        inference_config_file=config,
        cache_enabled=False,
        **secured.settings(),
    )
    async with running(INFERENCE, settings) as (_server, port), secured.channel(port) as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        listed = await stub.ListModels(
            ipb.ListModelsRequest(), metadata=auth.as_(tenant, "user-1"), timeout=10
        )
    assert [model.model for model in listed.models] == ["cheap"]
