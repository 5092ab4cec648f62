"""The service with the OpenAI embeddings option, through the official SDK over real HTTP to a local emulation of
/v1/embeddings: a text the provider refuses is its document's fault, not an outage."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from parapet.embeddings.testing import OpenAIEmbeddingsEmulator
from parapet.kit.errors import error_details
from parapet.kit.testing import TestKeys
from parapet.retrieval.v1 import retrieval_service_pb2 as pb
from tests.integration.retrieval.conftest import Client, doc, new_tenant, served

#: The emulated model's limit, in characters: a chunk of one long word (up to 4,000 characters) goes over it.
LIMIT = 2000


@pytest.fixture
def emulator() -> Iterator[OpenAIEmbeddingsEmulator]:
    with OpenAIEmbeddingsEmulator(max_input_chars=LIMIT) as running_emulator:
        yield running_emulator


@pytest.fixture
async def openai_client(
    tmp_path: Path, keys: TestKeys, database_url: str, nats_url: str, emulator: OpenAIEmbeddingsEmulator
) -> AsyncIterator[Client]:
    async with served(
        tmp_path,
        keys,
        database_url,
        nats_url,
        retrieval_embedder="openai",
        retrieval_openai_base_url=emulator.base_url,
        retrieval_openai_api_key="test-key",
    ) as client:
        yield client


def _reason(result: pb.DocumentResult) -> tuple[int, str]:
    info = error_details_pb2.ErrorInfo()
    assert result.error.details[0].Unpack(info)
    return result.error.code, info.reason


async def test_a_document_the_provider_refuses_is_rejected_and_the_stream_goes_on(
    openai_client: Client,
) -> None:
    """Until 2026-12-06 the provider's 400 failed the whole stream UNAVAILABLE, on every retry: the document could
    never be stored, nor any document sent with it."""
    caller = openai_client.as_(new_tenant())
    unreadable = "x" * (LIMIT + 500)  # one chunk: one word the provider counts as over its limit
    response = await openai_client.ingest(
        caller,
        (doc("before"), b"Expense reports are due on the fifth of each month."),
        (doc("hex-dump"), unreadable.encode()),
        (doc("after"), b"Travel is booked through the travel desk."),
    )
    before, refused, after = response.results
    assert (before.outcome, after.outcome) == (pb.DOCUMENT_OUTCOME_CREATED, pb.DOCUMENT_OUTCOME_CREATED)
    assert refused.outcome == pb.DOCUMENT_OUTCOME_REJECTED
    assert _reason(refused) == (grpc.StatusCode.INVALID_ARGUMENT.value[0], "DOCUMENT_NOT_EMBEDDABLE")
    assert "maximum context length" in refused.error.message
    assert (response.progress.documents_done, response.progress.documents_rejected) == (2, 1)

    # The same document alone is refused again, for good: a retry cannot make it pass.
    again = await openai_client.ingest(caller, (doc("hex-dump"), unreadable.encode()))
    assert _reason(again.results[0]) == (grpc.StatusCode.INVALID_ARGUMENT.value[0], "DOCUMENT_NOT_EMBEDDABLE")
    found = await openai_client.query(caller, "expense reports", mode=pb.SEARCH_MODE_VECTOR, top_k=5)
    assert {c.citation.document_id for c in found} == {"before", "after"}


async def test_a_query_the_provider_refuses_is_an_invalid_argument(openai_client: Client) -> None:
    caller = openai_client.as_(new_tenant())
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await openai_client.query(caller, "y" * (LIMIT + 1), mode=pb.SEARCH_MODE_VECTOR)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(raised.value).reason == "QUERY_NOT_EMBEDDABLE"
