"""What the gateway passes on of a failed call to another service keeps the error contract (docs/contracts.md).

``services.gateway.errors.relayed`` forwards a downstream refusal as is (code, reason, details). A call that never
reached a Parapet servicer (the service is unreachable, or its channel broke) carries no ``ErrorInfo``: grpc
made the status up on the gateway's side. Its reason then must still be one of the catalogue, with the
``RetryInfo`` docs/contracts.md promises on UNAVAILABLE, and its message must not be grpc's transport text, which
names the internal address of the service (``ipv4:10.0.3.7:50051``) to any caller of the public gateway.
"""

from __future__ import annotations

import grpc
import grpc.aio

from services.gateway.errors import relayed
from tests.unit.contracts.reasons_support import catalogue

TRANSPORT_TEXT = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.3.7:50051: "
    "Failed to connect to remote host: Connection refused"
)


def test_an_unreachable_service_reaches_the_caller_as_a_catalogued_reason_without_internals() -> None:
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details=TRANSPORT_TEXT
    )
    relay = relayed(error)
    listed = {(d.reason, d.code) for d in catalogue()}
    assert relay.code == grpc.StatusCode.UNAVAILABLE
    assert (relay.reason, "UNAVAILABLE") in listed, f"{relay.reason} is not a catalogued UNAVAILABLE reason"
    assert any(type(d).__name__ == "RetryInfo" for d in relay.details), "UNAVAILABLE without RetryInfo"
    assert "10.0.3.7" not in relay.message, "the internal address reached the caller"


def test_a_refusal_of_a_parapet_service_is_relayed_as_it_came() -> None:
    """A servicer's refusal keeps its code, reason and typed details through the gateway."""
    from grpc_status import rpc_status

    from parapet.kit.errors import QuotaExceeded, to_status_proto

    original = QuotaExceeded(
        "over budget", reason="BUDGET_EXCEEDED", retry_after=3.0, violations=[("a", "b")]
    )
    status = to_status_proto(original)
    trailers = grpc.aio.Metadata(
        ("grpc-status-details-bin", status.SerializeToString()),
    )
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), trailers, details="over budget"
    )
    assert rpc_status.from_call(error) is not None
    relay = relayed(error)
    assert (relay.code, relay.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "BUDGET_EXCEEDED")
    assert {type(d).__name__ for d in relay.details} == {"QuotaFailure", "RetryInfo"}
