"""The tenant policy while the auth service stops answering (a hung process, a partition): inference keeps
serving a tenant's cached policy and asks auth again only after a backoff, instead of queueing every request of
the tenant behind its lock, one 2 s call to auth after another.

Auth here is a real gRPC server on the kit, behind the kit's identity interceptor, serving
``AuthService.GetEffectivePolicy`` from a policy of its own until it is told to stop answering: from then on its
handler never returns (the caller's 2 s deadline ends each call). It counts the calls that reach it per tenant,
which is what the tests assert, never how long anything took. (The real auth service cannot be made to hang on
demand; ``test_policy.py`` runs the real one for what it answers.)"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
import grpc.aio

from parapet.auth.v1 import auth_service_pb2, tenant_policy_pb2
from parapet.kit.context import require_principal
from parapet.kit.testing import TestKeys, fast_settings, generic_app, running
from parapet.upstream import UpstreamServer
from tests.integration.inference.conftest import Outcome, StartInference, principal, upstream_config

MODELS = [{"name": "cheap", "provider": "local"}, {"name": "premium", "provider": "local"}]
# Many concurrent requests of one tenant: before the fix each made its own 2 s call to the hung auth, in turn.
CONCURRENT = 6


class StallingAuth:
    """GetEffectivePolicy of a policy allowing ``allowed`` (version ``version``), until ``stalled``."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()  # per tenant, every call that reached the handler
        self.stalled = False
        self.hanging = 0  # calls inside the handler now, not yet ended by their deadline
        self.hung = asyncio.Event()  # set once a call hangs
        self.allowed = ["cheap"]
        self.version = 1

    async def GetEffectivePolicy(
        self, request: auth_service_pb2.GetEffectivePolicyRequest, context: grpc.aio.ServicerContext
    ) -> auth_service_pb2.GetEffectivePolicyResponse:
        self.calls[require_principal().tenant_id] += 1
        if self.stalled:
            self.hanging += 1
            self.hung.set()
            try:
                await asyncio.Event().wait()  # never answers: the caller's deadline cancels it
            finally:
                self.hanging -= 1
        if request.known_version == self.version:
            return auth_service_pb2.GetEffectivePolicyResponse(not_modified=True)
        policy = tenant_policy_pb2.TenantPolicy(
            version=self.version, models=tenant_policy_pb2.ModelPolicy(allowed_models=self.allowed)
        )
        return auth_service_pb2.GetEffectivePolicyResponse(policy=policy)


@dataclass
class RunningAuth:
    servicer: StallingAuth
    target: str


@asynccontextmanager
async def stalling_auth(keys: TestKeys) -> AsyncIterator[RunningAuth]:
    """The stand-in on port 0, trusting tokens signed by ``keys`` (the ones inference forwards)."""
    servicer = StallingAuth()
    service = auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
    method = grpc.unary_unary_rpc_method_handler(
        servicer.GetEffectivePolicy,
        request_deserializer=auth_service_pb2.GetEffectivePolicyRequest.FromString,
        response_serializer=auth_service_pb2.GetEffectivePolicyResponse.SerializeToString,
    )
    handler = grpc.method_handlers_generic_handler(service, {"GetEffectivePolicy": method})
    app = generic_app(handler, name="auth", service_names=(service,), keys=keys)
    async with running(app, fast_settings()) as (_server, port):
        yield RunningAuth(servicer, f"127.0.0.1:{port}")


def _failed(outcomes: list[Outcome]) -> list[object]:
    return [(o.error.code, o.error.reason) for o in outcomes if o.error is not None]


async def test_a_hung_auth_service_is_asked_once_not_once_per_request(
    start_inference: StartInference, upstream: UpstreamServer, keys: TestKeys
) -> None:
    known = principal(f"hung-known-{uuid.uuid4().hex[:8]}")  # its policy is cached
    new = principal(f"hung-new-{uuid.uuid4().hex[:8]}")  # none cached: it fails closed
    async with (
        stalling_auth(keys) as auth,
        start_inference(
            upstream_config(upstream, MODELS),
            auth_address=auth.target,
            policy_cache_seconds=0,  # every request would revalidate: the most calls auth can get
            policy_retry_seconds=600,  # longer than the test: no call after the failed one
        ) as inference,
    ):
        first = await inference.stream("hi", who=known, model="cheap")
        assert first.error is None and auth.servicer.calls[known.tenant_id] == 1
        auth.servicer.stalled = True
        revalidation = asyncio.create_task(inference.stream("hi", who=known, model="cheap"))
        await auth.servicer.hung.wait()  # its call to auth hangs, holding the tenant's revalidation
        beside = await asyncio.gather(
            *(inference.stream("hi", who=known, model="cheap") for _ in range(CONCURRENT))
        )
        # Answered from the cache while that call still hangs (its 2 s deadline is far from over for requests
        # answered by the local model), instead of each waiting for it and then calling auth in turn.
        answered_beside_the_hung_call = auth.servicer.hanging == 1
        known_outcomes = [await revalidation, *beside]
        new_outcomes = list(
            await asyncio.gather(*(inference.stream("hi", who=new, model="cheap") for _ in range(CONCURRENT)))
        )
        # Then one after the other: the failed revalidation is not retried before the backoff.
        later = [await inference.stream("hi", who=known, model="cheap") for _ in range(CONCURRENT)]
        denied = await inference.stream("hi", who=known, model="premium")
        counts = (auth.servicer.calls[known.tenant_id], auth.servicer.calls[new.tenant_id])
        # One call that hangs for each tenant: before, every request of the known tenant made one (15 calls,
        # each waiting for the one before it, 2 s apiece), and each of the new tenant's concurrent requests.
        assert counts == (2, 1), (counts, _failed(known_outcomes + later), _failed(new_outcomes))
        assert answered_beside_the_hung_call
    # The cached policy was served throughout, and still enforced.
    assert _failed(known_outcomes + later) == []
    assert denied.error is not None and denied.error.reason == "MODEL_NOT_ALLOWED"
    # The tenant with no policy cached fails closed, every request of it at the one call's failure.
    assert {(o.error.code if o.error else None) for o in new_outcomes} == {grpc.StatusCode.UNAVAILABLE}


async def test_auth_is_asked_again_once_the_backoff_has_passed(
    start_inference: StartInference, upstream: UpstreamServer, keys: TestKeys
) -> None:
    who = principal(f"hung-back-{uuid.uuid4().hex[:8]}")
    backoff = 0.3
    async with (
        stalling_auth(keys) as auth,
        start_inference(
            upstream_config(upstream, MODELS),
            auth_address=auth.target,
            policy_cache_seconds=0,
            policy_retry_seconds=backoff,
        ) as inference,
    ):
        assert (await inference.stream("hi", who=who, model="premium")).error is not None  # not allowed yet
        auth.servicer.stalled = True
        assert (await inference.stream("hi", who=who, model="cheap")).error is None  # the cached policy
        assert auth.servicer.calls[who.tenant_id] == 2
        # Auth answers again, with a new version allowing `premium`; once the backoff is over it is asked.
        auth.servicer.stalled = False
        auth.servicer.allowed, auth.servicer.version = ["cheap", "premium"], 2
        await asyncio.sleep(backoff * 2)
        allowed = await inference.stream("hi", who=who, model="premium")
        assert allowed.error is None, allowed.error
        assert auth.servicer.calls[who.tenant_id] == 3
