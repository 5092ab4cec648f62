"""A stand-in for auth's ``GetEffectivePolicy`` that stops answering when told (a hung process, a partition).

A real gRPC server on the kit, behind the kit's identity interceptor, serving a policy of its own until
``stalled``: from then on its handler never returns (the caller's deadline ends each call). It counts the calls
that reach it per tenant, which is what tests assert, never how long anything took.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
import grpc.aio

from parapet.auth.v1 import auth_service_pb2, tenant_policy_pb2
from parapet.kit.context import require_principal
from parapet.kit.testing import TestKeys, fast_settings, generic_app, running


class StallingAuth:
    """GetEffectivePolicy of a policy allowing ``allowed`` (version ``version``), after ``delay`` seconds (a
    healthy but not instant auth), until ``stalled``."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()  # per tenant, every call that reached the handler
        self.stalled = False
        self.hanging = 0  # calls inside the handler now, not yet ended by their deadline
        self.hung = asyncio.Event()  # set once a call hangs
        self.allowed = ["cheap"]
        self.version = 1
        self.delay = 0.0

    async def GetEffectivePolicy(
        self, request: auth_service_pb2.GetEffectivePolicyRequest, context: grpc.aio.ServicerContext
    ) -> auth_service_pb2.GetEffectivePolicyResponse:
        self.calls[require_principal().tenant_id] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
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
