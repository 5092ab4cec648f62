"""Prometheus metrics from a running kit server, scraped over HTTP: RPC latency by code, errors by type,
and the suite's named series recorded through the kit's helpers."""

from __future__ import annotations

import asyncio
import logging
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from parapet.kit import metrics
from parapet.kit.errors import InvalidArgument, QuotaExceeded
from parapet.kit.testing import (
    StringValue,
    TestKeys,
    fast_settings,
    generic_app,
    running,
    string_service,
    unary_caller,
)
from parapet.kit.timeouts import within

SERVICE = "test.metrics.v1.Probe"


async def _ok(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
    return StringValue(value=request.value)


async def _invalid(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
    raise InvalidArgument("bad", field_violations=[("value", "bad")])


async def _quota(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
    raise QuotaExceeded("over", retry_after=1.0)


async def _crash(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
    raise RuntimeError("boom")


_slow_started: list[asyncio.Event] = []  # set when a Slow handler runs (the server is in this process)


async def _slow(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
    for started in _slow_started:
        started.set()
    await asyncio.sleep(30)
    return StringValue(value=request.value)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), ""


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


@pytest.fixture
async def served(keys: TestKeys) -> AsyncIterator[tuple[int, int]]:
    handler = string_service(
        SERVICE, unary={"Ok": _ok, "Invalid": _invalid, "Quota": _quota, "Crash": _crash, "Slow": _slow}
    )
    app = generic_app(handler, name="metricsprobe", service_names=(SERVICE,), keys=keys)
    async with running(app, fast_settings(metrics_port=0)) as (server, port):
        assert server.metrics_port is not None and server.metrics_port > 0
        yield port, server.metrics_port


async def test_rpc_metrics_by_method_code_and_error_type(served: tuple[int, int], keys: TestKeys) -> None:
    port, metrics_port = served
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        for method, expected in (
            ("Ok", grpc.StatusCode.OK),
            ("Ok", grpc.StatusCode.OK),
            ("Invalid", grpc.StatusCode.INVALID_ARGUMENT),
            ("Quota", grpc.StatusCode.RESOURCE_EXHAUSTED),
            ("Crash", grpc.StatusCode.INTERNAL),
        ):
            call = unary_caller(channel, f"/{SERVICE}/{method}")
            try:
                await call(StringValue(value="x"), metadata=keys.metadata(), timeout=5)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                code = error.code()
            assert code == expected
        # Without a token: refused by identity, still measured with the code the caller saw.
        with pytest.raises(grpc.aio.AioRpcError):
            await unary_caller(channel, f"/{SERVICE}/Ok")(StringValue(value="x"), timeout=5)
        # grpc cancels the handler alike for a deadline and a caller who leaves; the kit tells them apart (it
        # recorded both CANCELLED until 2026-12-06).
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await unary_caller(channel, f"/{SERVICE}/Slow")(
                StringValue(value="x"), metadata=keys.metadata(), timeout=1.0
            )
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        started = asyncio.Event()
        _slow_started.append(started)
        left = unary_caller(channel, f"/{SERVICE}/Slow")(
            StringValue(value="x"), metadata=keys.metadata(), timeout=30
        )
        await within(10, started.wait())  # cancelled only once its handler runs, not in flight
        _slow_started.remove(started)
        left.cancel()

    samples: list[tuple[str, dict[str, str], float]] = []
    for _ in range(50):  # the server records a call as it finishes: the cancelled one a moment after
        status, text = await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200
        samples = _samples(text)
        recorded = [lab for n, lab, _ in samples if n.endswith("_count") and lab.get("grpc_method") == "Slow"]
        if len([lab for lab in recorded if lab.get("grpc_service") == SERVICE]) >= 2:
            break
        await asyncio.sleep(0.1)

    def value(name: str, **labels: str) -> float:
        return sum(v for n, lab, v in samples if n == name and labels.items() <= lab.items())

    count = "parapet_rpc_server_duration_seconds_count"
    assert value(count, grpc_service=SERVICE, grpc_method="Ok", grpc_code="OK") == 2
    assert value(count, grpc_service=SERVICE, grpc_method="Invalid", grpc_code="INVALID_ARGUMENT") == 1
    assert value(count, grpc_service=SERVICE, grpc_method="Ok", grpc_code="UNAUTHENTICATED") == 1
    assert (
        value("parapet_rpc_server_duration_seconds_bucket", grpc_method="Ok", grpc_code="OK", le="+Inf") == 2
    )
    errors = "parapet_rpc_server_errors_total"
    assert value(errors, grpc_method="Invalid", error_type="client_error") == 1
    assert value(errors, grpc_method="Quota", error_type="rate_limited") == 1
    assert value(errors, grpc_method="Crash", error_type="server_error") == 1
    assert value(count, grpc_service=SERVICE, grpc_method="Slow", grpc_code="DEADLINE_EXCEEDED") == 1
    assert value(count, grpc_service=SERVICE, grpc_method="Slow", grpc_code="CANCELLED") == 1
    assert value(errors, grpc_service=SERVICE, grpc_method="Slow", error_type="timeout") == 1
    assert value(errors, grpc_service=SERVICE, grpc_method="Slow", error_type="cancelled") == 1
    # Health probes are not measured.
    assert not [lab for n, lab, _ in samples if n == count and lab["grpc_service"].startswith("grpc.health")]


async def test_named_series_of_the_suite_are_exposed(served: tuple[int, int]) -> None:
    _, metrics_port = served
    metrics.observe_model_call("openai", "gpt-probe", 0.42, time_to_first_token=0.05)
    metrics.observe_model_call("openai", "gpt-probe", 1.5, error_type="rate_limited")
    metrics.record_usage(
        "tenant-m", "gpt-probe", prompt_tokens=10, completion_tokens=5, cached_tokens=2, cost_micros=1234
    )
    metrics.record_cache_lookup("semantic", hit=True)
    metrics.record_cache_lookup("semantic", hit=False)
    metrics.set_breaker_state("openai", "gpt-probe", metrics.BreakerState.OPEN)
    metrics.record_moderation_finding("CATEGORY_PII", "ACTION_MASK", "input", count=3)
    metrics.record_budget_denial("tenant-m", "budget")
    metrics.record_audit("stream", "appended", 7)
    metrics.observe_chat(0.0015, "ok", ("retrieval",))
    metrics.set_gateway_outbox_pending("audit", 2)
    metrics.record_speculative_call("kept")
    metrics.record_gateway_outbox_delivered("settlement", 0)

    _, text = await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics_port}/metrics")
    samples = {(name, tuple(sorted(labels.items()))): v for name, labels, v in _samples(text)}
    names = {name for name, _ in samples}
    for expected in (
        "parapet_model_request_duration_seconds_bucket",
        "parapet_model_time_to_first_token_seconds_bucket",
        "parapet_model_errors_total",
        "parapet_tokens_total",
        "parapet_cost_micros_total",
        "parapet_cache_lookups_total",
        "parapet_breaker_state",
        "parapet_moderation_findings_total",
        "parapet_budget_denials_total",
        "parapet_audit_records_total",
        "parapet_gateway_overhead_seconds_bucket",
        "parapet_gateway_degraded_chats_total",
        "parapet_gateway_speculative_calls_total",
        "parapet_gateway_outbox_pending",
    ):
        assert expected in names, expected
    # A kind nothing was delivered of is exported (at 0 unless other tests delivered): the stall alert needs it.
    assert ("parapet_gateway_outbox_delivered_total", (("kind", "settlement"),)) in samples
    assert samples[("parapet_gateway_overhead_seconds_bucket", (("le", "0.002"), ("result", "ok")))] >= 1
    tokens = (
        "parapet_tokens_total",
        (("kind", "completion"), ("model", "gpt-probe"), ("tenant", "tenant-m")),
    )
    assert samples[tokens] >= 5
    breaker = ("parapet_breaker_state", (("model", "gpt-probe"), ("provider", "openai")))
    assert samples[breaker] == 2
    # Everything exposed is known to series_names() (what the alert-rule test checks against).
    assert {n for n in names if n.startswith("parapet_")} <= metrics.series_names()


async def test_other_paths_are_not_found(served: tuple[int, int]) -> None:
    _, metrics_port = served
    status, _ = await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics_port}/other")
    assert status == 404


def test_error_types_follow_the_status_code() -> None:
    assert metrics.rpc_error_type("OK") is None
    assert metrics.rpc_error_type("RESOURCE_EXHAUSTED") == "rate_limited"
    assert metrics.rpc_error_type("DEADLINE_EXCEEDED") == "timeout"
    assert metrics.rpc_error_type("UNAVAILABLE") == "server_error"
    assert metrics.rpc_error_type("PERMISSION_DENIED") == "client_error"


def test_rare_set_asides_are_exported_at_zero_before_the_first() -> None:
    """increase() sees nothing in a series whose first sample is already 1: a billing process's first (and
    perhaps only) set-aside must find its series there at 0, or ParapetBillingEventsSetAside never fires."""
    from prometheus_client import REGISTRY

    for reason in metrics.BILLING_SET_ASIDE_REASONS:
        value = REGISTRY.get_sample_value("parapet_billing_events_set_aside_total", {"reason": reason})
        assert value is not None, reason


def test_audit_records_are_exported_at_zero_before_the_first() -> None:
    """ParapetAuditRecordsRejected is ``increase(parapet_audit_records_total{outcome="rejected"}[15m]) > 0``:
    a series that first appears at 1 shows no increase, so the first rejection (perhaps the only one) never
    fired it. Every source and outcome must be exported at 0 before anything is recorded."""
    from prometheus_client import REGISTRY

    for source in ("stream", "rpc"):
        for outcome in ("appended", "duplicate", "rejected"):
            value = REGISTRY.get_sample_value(
                "parapet_audit_records_total", {"source": source, "outcome": outcome}
            )
            assert value is not None, (source, outcome)


async def test_a_client_trickling_its_request_head_is_cut_off() -> None:
    """One bound for the whole request head: a client sending a header line now and then used to keep its
    connection, and the server's task, forever (the 5 s limit applied to each line)."""
    server = metrics.MetricsServer()
    server.HEAD_SECONDS = 0.5
    port = await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\n")
        closed_after = None
        loop = asyncio.get_running_loop()
        started = loop.time()
        for index in range(30):  # a header every 0.1 s, for up to 3 s
            try:
                writer.write(f"x-header-{index}: 1\r\n".encode())
                await writer.drain()
            except ConnectionError:
                closed_after = loop.time() - started
                break
            try:
                if await within(0.1, reader.read(1)) == b"":
                    closed_after = loop.time() - started
                    break
            except TimeoutError:
                pass
        writer.close()
        assert closed_after is not None and closed_after < 2
        # An ordinary scrape still works.
        status, text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and "parapet_rpc_server_duration_seconds" in text
    finally:
        await server.stop()


async def test_an_oversized_request_head_is_refused_without_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A line over the reader's limit raised out of the handler (asyncio logged an unhandled exception)."""
    server = metrics.MetricsServer()
    port = await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\n" + b"x-big: " + b"a" * 100_000 + b"\r\n\r\n")
        await writer.drain()
        assert await reader.read() == b""  # closed, nothing answered
        writer.close()
        await asyncio.sleep(0.05)
    finally:
        await server.stop()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
