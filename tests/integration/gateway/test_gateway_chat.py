"""The governed chat end to end: grounded answers, masking, blocking, fallback, idempotency, bad input."""

from __future__ import annotations

from parapet.inference.v1 import generation_pb2
from tests.integration.gateway.conftest import MODULE, Suite, question

pytestmark = MODULE


async def test_a_streaming_chat_answers_with_one_summary_last_and_settles(suite: Suite) -> None:
    tenant = await suite.tenant()
    answer = await suite.stream(tenant, question("hello there gateway", model="gpt"))
    assert answer.error is None, answer.error
    assert answer.text == "You said: hello there gateway"
    assert answer.events[-1].HasField("summary")
    summary = answer.summary
    assert summary.finish_reason == generation_pb2.FINISH_REASON_STOP
    assert summary.routing.model == "gpt"
    assert summary.usage.completion_tokens > 0 and not summary.usage.estimated
    assert summary.cost.amount_micros > 0
    assert summary.policy_version >= 1
    assert 0 < summary.parapet_duration.ToNanoseconds() <= summary.duration.ToNanoseconds()
    assert float(answer.trailers["parapet-overhead-ms"]) > 0
    ledger = await suite.wait_rows(
        "SELECT prompt_tokens, completion_tokens, cost_micros, estimated FROM metering.usage_ledger "
        "WHERE tenant_id = :t AND request_id = :r",
        t=tenant.tenant_id,
        r=summary.request_id,
    )
    assert [tuple(r) for r in ledger] == [
        (summary.usage.prompt_tokens, summary.usage.completion_tokens, summary.cost.amount_micros, False)
    ]
