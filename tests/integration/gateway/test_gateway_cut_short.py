"""Chats cut short after the gateway's price list was last read: a caller who leaves, and an answer blocked by
output screening, each more than `gateway_models_cache_seconds` after the chat reserved its budget. The tokens
counted for such a chat were priced from the catalog's cache alone; once that had expired (60 s by default, a
long answer's time) or a change of the tenant had dropped it, they were billed at no cost: the summary, the
ledger and the audit record all said 0 for what the provider had charged."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from parapet.auth.v1 import tenant_policy_pb2
from parapet.inference.v1 import generation_pb2
from tests.integration.gateway.conftest import MODULE, Suite, Tenant, inference_config, question
from tests.integration.gateway.test_gateway_chat import LONG

pytestmark = MODULE

# The suite's prices: 1.00 per million prompt tokens, 2.00 per million output tokens (micros per token: 1, 2).
_BLOCKED_LATE = "+".join(
    [*(f"word{i}" for i in range(30)), "Project+Falcon", *(f"more{i}" for i in range(30))]
)


def _config(suite: Suite, path: Path) -> Path:
    config = inference_config(suite.upstream)
    gpt = {k: v for k, v in config["models"][0].items() if k != "fallbacks"}
    config["models"] += [
        {**gpt, "name": "dawdling", "upstream_model": "gpt-4o-mini;chunk_delay=0.05"},
        {
            **gpt,
            "name": "late-leak",
            "upstream_model": f"gpt-4o-mini;chunk_delay=0.05;reply={_BLOCKED_LATE}",
        },
    ]
    path.write_text(json.dumps(config))
    return path


async def _figures(suite: Suite, tenant: Tenant) -> tuple[list[Any], list[Any]]:
    ledger = await suite.wait_rows(
        "SELECT request_id, prompt_tokens, completion_tokens, cost_micros, estimated FROM metering.usage_ledger "
        "WHERE tenant_id = :t",
        t=tenant.tenant_id,
    )
    audit = await suite.wait_rows(
        "SELECT request_id, prompt_tokens, completion_tokens, cost_micros FROM audit.records "
        "WHERE tenant_id = :t AND kind = 'interaction'",
        t=tenant.tenant_id,
    )
    return [tuple(r) for r in ledger], [tuple(r) for r in audit]


async def test_a_chat_cut_short_after_the_price_list_expired_is_billed_at_its_model_s_price(
    suite: Suite, tmp_path: Path
) -> None:
    leaver = await suite.tenant()
    blocked = await suite.tenant(
        tenant_policy_pb2.TenantPolicy(
            moderation=tenant_policy_pb2.ModerationPolicy(blocked_terms=["falcon"])
        )
    )
    async with (
        suite.inference(inference_config_file=_config(suite, tmp_path / "inference.json")) as address,
        suite.gateway(
            inference_address=address, gateway_job_workers_enabled=False, gateway_models_cache_seconds=0.2
        ) as chat,
    ):
        # A caller who reads for a second (the price list read at the reservation has expired), then leaves.
        loop = asyncio.get_running_loop()
        call = chat.StreamChat(question(LONG, model="dawdling"), metadata=leaver.metadata(), timeout=30)
        started = loop.time()
        async for event in call:
            if event.HasField("text_delta") and loop.time() - started > 1.0:
                break
        call.cancel()
        ledger, audit = await _figures(suite, leaver)
        assert len(ledger) == 1 and ledger[0][4], ledger  # estimated: no summary came from inference
        _, prompt, completion, cost, _ = ledger[0]
        assert completion > 0 and cost == prompt + 2 * completion, ledger
        assert audit == [ledger[0][:4]], audit

        # An answer blocked by the tenant's term after about 1.5 s of text.
        answer = await suite.stream(blocked, question("What is on file?", model="late-leak"), stub=chat)
        assert answer.error is None, answer.error
        summary = answer.summary
        assert summary.finish_reason == generation_pb2.FINISH_REASON_CONTENT_FILTER
        assert summary.usage.estimated and summary.usage.completion_tokens > 0
        usage = summary.usage
        assert summary.cost.amount_micros == usage.prompt_tokens + 2 * usage.completion_tokens, summary
        ledger, audit = await _figures(suite, blocked)
        figures = (
            summary.request_id,
            usage.prompt_tokens,
            usage.completion_tokens,
            summary.cost.amount_micros,
        )
        assert ledger == [(*figures, True)], ledger
        assert audit == [figures], audit
