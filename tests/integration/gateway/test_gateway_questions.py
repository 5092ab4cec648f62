"""Questions retrieval cannot search as sent: one of zero-width characters only, and one whose first 8,192
characters (retrieval's longest query) are blank lines. Both were sent to retrieval as they came, after a budget
hold was taken, and refused INVALID_ARGUMENT naming `query`, a field no chat request has; the first, with
retrieval off, was answered and billed. The blank question is refused naming the message, before anything is
held; the other is searched from its first visible line and answered with its sources."""

from __future__ import annotations

import grpc

from tests.integration.gateway.conftest import MODULE, Suite, question

pytestmark = MODULE


async def test_a_question_retrieval_cannot_search_as_sent_is_refused_by_its_field_or_searched_by_its_text(
    suite: Suite,
) -> None:
    tenant = await suite.tenant()
    await suite.ingest(
        tenant.tenant_id,
        {"falcon-manual": ("Falcon manual", "The Falcon router reboots when the blue button is held.")},
    )
    for grounded in ({"mode": 1}, {"mode": 2}):
        blank = await suite.stream(tenant, question("\u200b\u2060\u200b", model="gpt", retrieval=grounded))
        assert blank.error is not None and blank.error.code == grpc.StatusCode.INVALID_ARGUMENT, blank.error
        assert blank.error.bad_request is not None
        assert [v.field for v in blank.error.bad_request.field_violations] == ["messages[0].content"]
        assert blank.events == []
    holds = await suite.scalar(
        "SELECT count(*) FROM metering.reservations WHERE tenant_id = :t", t=tenant.tenant_id
    )
    assert holds == 0  # refused before anything was held

    padded = "\n" * 9000 + "How do I reboot the Falcon router?"
    answer = await suite.stream(
        tenant, question(padded, model="local", retrieval={"mode": 1, "top_k": 1}), seconds=60
    )
    assert answer.error is None, answer.error
    assert [c.document_id for c in answer.citations] == ["falcon-manual"]
    assert "blue button" in answer.text
