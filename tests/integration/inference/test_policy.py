"""The tenant policy's model rules, read from the auth service's GetEffectivePolicy over a real channel.

The auth service here is a small stand-in serving the published AuthService contract (the real one needs its own
database, keys and tenants); it answers per tenant from the caller's token, as the real service does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import jwt
import pytest

from parapet.auth.v1 import auth_service_pb2, auth_service_pb2_grpc, tenant_policy_pb2
from parapet.inference.v1 import generation_pb2, inference_service_pb2, routing_pb2
from parapet.upstream import UpstreamServer
from tests.integration.inference.conftest import StartInference, principal, upstream_config


class PolicyAuth(auth_service_pb2_grpc.AuthServiceServicer):
    def __init__(self) -> None:
        self.policies: dict[str, tenant_policy_pb2.TenantPolicy] = {}
        self.calls = 0

    async def GetEffectivePolicy(
        self, request: auth_service_pb2.GetEffectivePolicyRequest, context: grpc.aio.ServicerContext
    ) -> auth_service_pb2.GetEffectivePolicyResponse:
        self.calls += 1
        token = dict(context.invocation_metadata())["authorization"].removeprefix("Bearer ")
        tenant = jwt.decode(token, options={"verify_signature": False})["tnt"]
        policy = self.policies[tenant]
        if request.known_version == policy.version:
            return auth_service_pb2.GetEffectivePolicyResponse(not_modified=True)
        return auth_service_pb2.GetEffectivePolicyResponse(policy=policy)


@pytest.fixture
async def auth() -> AsyncIterator[tuple[PolicyAuth, str]]:
    servicer = PolicyAuth()  # type: ignore[abstract]  # the stand-in serves only GetEffectivePolicy
    server = grpc.aio.server()
    auth_service_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(0.5)


MODELS = [
    {"name": "cheap", "provider": "local"},
    {"name": "premium", "provider": "local"},
    {"name": "backup", "provider": "local"},
]
ROUTES = [{"name": "smart", "model": "premium", "fallbacks": ["backup"]}]


def _policy(
    version: int, allowed: list[str], default: str = "", max_tokens: int = 0
) -> tenant_policy_pb2.TenantPolicy:
    return tenant_policy_pb2.TenantPolicy(
        version=version,
        models=tenant_policy_pb2.ModelPolicy(
            allowed_models=allowed, default_model=default, max_tokens_per_request=max_tokens
        ),
    )


async def test_allowed_models_default_model_and_token_cap_are_enforced(
    start_inference: StartInference, upstream: UpstreamServer, auth: tuple[PolicyAuth, str]
) -> None:
    servicer, address = auth
    servicer.policies["tenant-a"] = _policy(1, ["cheap"], default="cheap", max_tokens=3)
    servicer.policies["tenant-b"] = _policy(4, ["smart"])
    config = upstream_config(upstream, MODELS, routes=ROUTES, default_model="premium")
    async with start_inference(config, auth_address=address, policy_cache_seconds=0) as inference:
        a, b = principal("tenant-a"), principal("tenant-b")
        denied = await inference.stream("hi", model="premium", who=a)
        assert denied.error is not None
        assert denied.error.code == grpc.StatusCode.PERMISSION_DENIED
        assert denied.error.reason == "MODEL_NOT_ALLOWED"
        # The policy's default replaces the deployment's, and its max_tokens caps the output.
        default = await inference.stream("tell me a long story please", who=a)
        assert default.summary.routing.model == "cheap"
        assert default.summary.routing.reason == routing_pb2.ROUTING_REASON_DEFAULT
        assert default.summary.finish_reason == generation_pb2.FINISH_REASON_LENGTH
        assert default.summary.usage.completion_tokens <= 3
        # An allowed route allows the models it reaches, and nothing else.
        routed = await inference.stream("hi", model="smart", who=b)
        assert routed.error is None and routed.summary.routing.model == "premium"
        assert (await inference.stream("hi", model="backup", who=b)).error is None
        assert (await inference.stream("hi", model="cheap", who=b)).error.reason == "MODEL_NOT_ALLOWED"  # type: ignore[union-attr]
        listed = await inference.stub.ListModels(
            inference_service_pb2.ListModelsRequest(), metadata=inference.metadata(b)
        )
        assert [m.model for m in listed.models] == ["backup", "premium"]
        assert list(listed.models[1].aliases) == ["smart"]
        # Revalidation by version: an unchanged policy is not sent again.
        calls = servicer.calls
        await inference.stream("hi", model="smart", who=b)
        assert servicer.calls == calls + 1


async def test_without_a_reachable_auth_service_the_call_fails_closed(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    from parapet.embedded import free_port

    config = upstream_config(upstream, MODELS)
    async with start_inference(config, auth_address=f"127.0.0.1:{free_port()}") as inference:
        outcome = await inference.stream("hi")
    assert outcome.error is not None and outcome.error.code == grpc.StatusCode.UNAVAILABLE
    assert json.dumps(outcome.error.message)  # a readable message, no internals
