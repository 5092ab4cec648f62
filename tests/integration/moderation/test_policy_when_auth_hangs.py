"""Moderation while auth stops answering: concurrent screenings of a tenant share one call to auth and fail
closed together (UNAVAILABLE ``POLICY_UNAVAILABLE``), instead of each making its own call to the hung auth.

Auth is ``tests.integration.stalling_auth`` (a real gRPC server that stops answering when told and counts the
calls reaching it). Until 2026-12-06 moderation's policy source had no per-tenant lock: every screening past the
cache lifetime called auth, all at once.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import grpc
import grpc.aio

from parapet.kit.errors import error_details
from parapet.kit.identity import Principal
from parapet.kit.testing import make_test_keys, running
from parapet.moderation.v1 import moderation_service_pb2 as pb
from parapet.moderation.v1 import moderation_service_pb2_grpc
from services.moderation.app import APP
from services.moderation.settings import ModerationSettings
from tests.integration.stalling_auth import stalling_auth

CONCURRENT = 8


async def test_screenings_of_a_tenant_share_one_call_to_a_hung_auth_and_fail_closed(tmp_path: Path) -> None:
    keys = make_test_keys()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(keys.jwks()))
    tenant = f"hung-{uuid.uuid4().hex[:8]}"
    metadata = keys.metadata(Principal(tenant_id=tenant, subject="user-1"))
    async with stalling_auth(keys) as auth:
        settings = ModerationSettings(
            port=0,
            identity_jwks_file=jwks,
            shutdown_grace_seconds=0.5,
            auth_address=auth.target,
            policy_cache_seconds=0.0,  # every screening would revalidate: the most calls auth can get
            ner_enabled=False,
        )
        async with (
            running(APP, settings) as (_server, port),
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            stub = moderation_service_pb2_grpc.ModerationServiceStub(channel)
            screened = await stub.ScreenInput(pb.ScreenInputRequest(texts=["hello"]), metadata=metadata)
            assert screened.sanitized_texts == ["hello"] and auth.servicer.calls[tenant] == 1
            auth.servicer.stalled = True

            async def screen() -> grpc.aio.AioRpcError | None:
                try:
                    await stub.ScreenInput(pb.ScreenInputRequest(texts=["hello"]), metadata=metadata)
                except grpc.aio.AioRpcError as error:
                    return error
                return None

            errors = await asyncio.gather(*(screen() for _ in range(CONCURRENT)))
            calls = auth.servicer.calls[tenant]
    reasons = {(e.code(), error_details(e).reason) if e is not None else None for e in errors}
    assert reasons == {(grpc.StatusCode.UNAVAILABLE, "POLICY_UNAVAILABLE")}, reasons
    assert calls == 2, calls  # the first screening's, and one for all the concurrent ones
