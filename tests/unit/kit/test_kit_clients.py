"""The kit channel retries UNAVAILABLE (3 attempts) and nothing else."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest

from parapet.kit import clients
from parapet.kit.errors import FailedPrecondition, Unavailable, error_details
from parapet.kit.testing import (
    StringValue,
    TestKeys,
    fast_settings,
    generic_app,
    running,
    string_service,
    unary_caller,
)

SERVICE = "test.v1.Flaky"


async def test_unavailable_is_retried_other_errors_are_not(keys: TestKeys) -> None:
    attempts: dict[str, int] = {}

    async def flaky(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
        attempts[request.value] = attempts.get(request.value, 0) + 1
        if request.value.startswith("unavailable") and attempts[request.value] < int(request.value[-1]):
            raise Unavailable("warming up", retry_after=0.01)
        if request.value == "precondition":
            raise FailedPrecondition("not now")
        return StringValue(value=f"ok after {attempts[request.value]}")

    app = generic_app(string_service(SERVICE, unary={"Call": flaky}), keys=keys, service_names=(SERVICE,))
    async with running(app, fast_settings()) as (_, port):
        channel = clients.channel(f"127.0.0.1:{port}")
        call = unary_caller(channel, f"/{SERVICE}/Call")
        try:
            assert (
                await call(StringValue(value="unavailable-3"), metadata=keys.metadata())
            ).value == "ok after 3"
            with pytest.raises(grpc.aio.AioRpcError) as gave_up:
                await call(StringValue(value="unavailable-4"), metadata=keys.metadata())
            assert error_details(gave_up.value).code == grpc.StatusCode.UNAVAILABLE
            assert attempts["unavailable-4"] == 3  # maxAttempts
            with pytest.raises(grpc.aio.AioRpcError):
                await call(StringValue(value="precondition"), metadata=keys.metadata())
            assert attempts["precondition"] == 1
        finally:
            await channel.close()
