"""The tenant policy's model rules, read from the auth service's GetEffectivePolicy over a real channel.

The auth service is the real one, on the session's PostgreSQL and NATS with the identity files ``parapet up``
provisions; tenants and their policies are made through its admin API, and the tokens inference verifies are
signed with auth's own key, as the ones it issues."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pytest

from parapet.auth.v1 import auth_service_pb2, tenant_policy_pb2
from parapet.cli.identity import IdentityFiles, provision
from parapet.inference.v1 import generation_pb2, inference_service_pb2, routing_pb2
from parapet.kit.testing import TestKeys
from parapet.upstream import UpstreamServer
from tests.integration.auth.conftest import Auth, keys_for, running_auth
from tests.integration.inference.conftest import StartInference, principal, upstream_config
from tests.integration.observability.scrape import scrape


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> IdentityFiles:
    return provision(tmp_path_factory.mktemp("inference-policy") / "identity")


@pytest.fixture(scope="module")
def keys(identity: IdentityFiles) -> TestKeys:
    """Overrides the conftest's test keys: inference trusts (and the tests sign with) the auth service's key."""
    return keys_for(identity.signing_key_file)


@pytest.fixture
async def auth(database_url: str, nats_url: str, identity: IdentityFiles) -> AsyncIterator[Auth]:
    async with running_auth(
        database_url,
        nats_url,
        identity.signing_key_file,
        identity_jwks_file=identity.jwks_file,
        metrics_port=0,  # the test counts the GetEffectivePolicy calls auth served, as Prometheus would
    ) as auth:
        yield auth


async def served_policy_calls(auth: Auth) -> float:
    samples = await scrape(auth.metrics_port)
    return samples.value(
        "parapet_rpc_server_duration_seconds_count",
        grpc_service="parapet.auth.v1.AuthService",
        grpc_method="GetEffectivePolicy",
    )


MODELS = [
    {"name": "cheap", "provider": "local"},
    {"name": "premium", "provider": "local"},
    {"name": "backup", "provider": "local"},
]
ROUTES = [{"name": "smart", "model": "premium", "fallbacks": ["backup"]}]


def _policy(allowed: list[str], default: str = "", max_tokens: int = 0) -> tenant_policy_pb2.TenantPolicy:
    return tenant_policy_pb2.TenantPolicy(
        models=tenant_policy_pb2.ModelPolicy(
            allowed_models=allowed, default_model=default, max_tokens_per_request=max_tokens
        ),
    )


async def test_allowed_models_default_model_and_token_cap_are_enforced(
    start_inference: StartInference, upstream: UpstreamServer, auth: Auth, identity: IdentityFiles
) -> None:
    tenant_a, tenant_b = await auth.new_tenant("inf"), await auth.new_tenant("inf")
    await auth.set_policy(tenant_a, _policy(["cheap"], default="cheap", max_tokens=3))
    policy_b = await auth.set_policy(tenant_b, _policy(["smart"]))
    config = upstream_config(upstream, MODELS, routes=ROUTES, default_model="premium")
    async with start_inference(
        config, auth_address=auth.target, policy_cache_seconds=0, identity_jwks_file=identity.jwks_file
    ) as inference:
        a, b = principal(tenant_a), principal(tenant_b)
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
        # Revalidation by version: an unchanged policy is not sent again. The stand-in this test once ran against
        # counted its calls; the real auth service's count is its RPC metric. One call per request (cache window
        # 0), and to the version inference holds auth answers "not modified", without the policy...
        calls = await served_policy_calls(auth)
        assert (await inference.stream("hi", model="smart", who=b)).error is None
        assert await served_policy_calls(auth) == calls + 1
        unchanged = await auth.auth.GetEffectivePolicy(
            auth_service_pb2.GetEffectivePolicyRequest(known_version=policy_b.version),
            metadata=inference.metadata(b),
        )
        assert unchanged.not_modified and not unchanged.HasField("policy")
        # ...while a new version (allowing `cheap` as well) comes back on the next request and applies at once.
        await auth.set_policy(tenant_b, _policy(["cheap"]))
        assert (await inference.stream("hi", model="cheap", who=b)).error is None


async def test_without_a_reachable_auth_service_the_call_fails_closed(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    from parapet.embedded import free_port

    config = upstream_config(upstream, MODELS)
    async with start_inference(config, auth_address=f"127.0.0.1:{free_port()}") as inference:
        outcome = await inference.stream("hi")
    assert outcome.error is not None and outcome.error.code == grpc.StatusCode.UNAVAILABLE
    assert json.dumps(outcome.error.message)  # a readable message, no internals
