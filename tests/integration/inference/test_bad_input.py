"""Bad input gets a clear status with typed details, never a crash; ListModels pages."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest

from parapet.inference.v1 import (
    generation_pb2,
    inference_service_pb2,
    message_pb2,
    prompt_template_pb2,
)
from parapet.kit.errors import error_details
from parapet.kit.testing import PAGE_TOKEN_REFUSED, refusal
from parapet.upstream import UpstreamServer
from tests.integration.inference.conftest import StartInference, principal, upstream_config


async def test_invalid_requests_name_every_bad_field(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    async with start_inference(
        upstream_config(upstream, [{"name": "local", "provider": "local"}])
    ) as inference:
        request = inference_service_pb2.CompleteRequest(
            messages=[message_pb2.Message(content=" ")],
            generation=generation_pb2.GenerationConfig(max_tokens=0, temperature=3, top_p=0, stop=["a"] * 5),
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await inference.stub.Complete(request, metadata=inference.metadata())
        details = error_details(raised.value)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT and details.reason == "REQUEST_INVALID"
        assert details.bad_request is not None
        assert {v.field for v in details.bad_request.field_violations} == {
            "messages[0].role",
            "messages[0].content",
            "generation.max_tokens",
            "generation.temperature",
            "generation.top_p",
            "generation.stop",
        }
        assert (await inference.stream("hi", model="nope")).error.reason == "MODEL_NOT_FOUND"  # type: ignore[union-attr]
        missing = await inference.stream(
            "hi",
            prompt_template=prompt_template_pb2.PromptTemplateRef(name="grounded-answer", version="0.0.1"),
        )
        assert missing.error is not None and missing.error.code == grpc.StatusCode.NOT_FOUND
        assert missing.error.reason == "PROMPT_TEMPLATE_NOT_FOUND"
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await inference.stub.Complete(request)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_list_models_pages_in_model_order(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    models = [{"name": f"m{n}", "provider": "local", "input_price_per_million": "1.25"} for n in range(5)]
    async with start_inference(upstream_config(upstream, models)) as inference:
        seen: list[str] = []
        tokens: list[str] = []
        while True:
            page = await inference.stub.ListModels(
                inference_service_pb2.ListModelsRequest(page_size=2, page_token=tokens[-1] if tokens else ""),
                metadata=inference.metadata(),
            )
            seen += [m.model for m in page.models]
            if not page.next_page_token:
                break
            tokens.append(page.next_page_token)
        assert seen == ["m0", "m1", "m2", "m3", "m4"]
        assert page.models[-1].input_price_per_million.amount_micros == 1_250_000
        # The models a caller may see follow its tenant's policy: a token is its caller's alone.
        for token, who in (
            ("%%%", principal()),
            (tokens[0], principal(subject="user-2")),
            (tokens[0], principal(tenant="tenant-b")),
        ):
            refused = inference.stub.ListModels(
                inference_service_pb2.ListModelsRequest(page_token=token), metadata=inference.metadata(who)
            )
            assert await refusal(refused) == PAGE_TOKEN_REFUSED, (token, who)


async def test_prompts_longer_than_every_context_window_are_refused(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    models = [
        {"name": "small", "provider": "local", "context_window_tokens": 150, "fallbacks": ["big"]},
        {"name": "big", "provider": "local", "context_window_tokens": 2000},
    ]
    async with start_inference(upstream_config(upstream, models)) as inference:
        medium = await inference.stream("word " * 200, model="small")
        assert medium.error is None and medium.summary.routing.model == "big"  # the small model is skipped
        huge = await inference.stream("word " * 3000, model="small")
    assert huge.error is not None and huge.error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert huge.error.reason == "CONTEXT_TOO_LONG"
