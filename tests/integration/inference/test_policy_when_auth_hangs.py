"""The tenant policy while the auth service stops answering (a hung process, a partition): inference keeps
serving a tenant's cached policy and asks auth again only after a backoff, instead of queueing every request of
the tenant behind its lock, one 2 s call to auth after another.

Auth here is ``tests.integration.stalling_auth``: a real gRPC server that stops answering when told, and counts
the calls that reach it per tenant, which is what the tests assert, never how long anything took. (The real auth
service cannot be made to hang on demand; ``test_policy.py`` runs the real one for what it answers.)"""

from __future__ import annotations

import asyncio
import uuid

import grpc
import grpc.aio

from parapet.kit.testing import TestKeys
from parapet.upstream import UpstreamServer
from tests.integration.inference.conftest import Outcome, StartInference, principal, upstream_config
from tests.integration.stalling_auth import stalling_auth

MODELS = [{"name": "cheap", "provider": "local"}, {"name": "premium", "provider": "local"}]
# Many concurrent requests of one tenant: before the fix each made its own 2 s call to the hung auth, in turn.
CONCURRENT = 6


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
