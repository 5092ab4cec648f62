"""The chat request's checks: each rule names its field, every problem is reported at once, and a request at
every limit passes. The integration suite sends a few of these through the real server
(tests/integration/gateway/test_gateway_chat.py); here every rule is covered without one."""

from __future__ import annotations

from typing import Any

import pytest
from google.rpc import error_details_pb2

from parapet.gateway.v1 import chat_pb2, chat_service_pb2
from parapet.inference.v1 import generation_pb2, message_pb2
from parapet.kit.errors import InvalidArgument
from services.gateway import validation
from services.inference import validation as inference_validation

USER = message_pb2.ROLE_USER
ASSISTANT = message_pb2.ROLE_ASSISTANT


def _message(content: str = "hi", role: int = USER) -> message_pb2.Message:
    return message_pb2.Message(role=role, content=content)  # type: ignore[arg-type]


def _request(**fields: Any) -> chat_service_pb2.StreamChatRequest:
    return chat_service_pb2.StreamChatRequest(**{"messages": [_message()], "model": "gpt", **fields})


def _violations(request: chat_service_pb2.StreamChatRequest | chat_service_pb2.ChatRequest) -> list[str]:
    """The fields named by the request's violations, in order; [] when it is valid."""
    try:
        validation.validate(request)
    except InvalidArgument as error:
        assert error.reason == "REQUEST_INVALID"
        (bad_request,) = error.details
        assert isinstance(bad_request, error_details_pb2.BadRequest)
        return [violation.field for violation in bad_request.field_violations]
    return []


def test_a_plain_request_and_one_at_every_limit_pass() -> None:
    assert _violations(_request()) == []
    at_limits = _request(
        messages=[
            _message("a" * 1000, ASSISTANT if i % 2 else USER) for i in range(validation.MAX_MESSAGES - 1)
        ]
        + [_message("q")],
        model="m" * validation.MAX_MODEL,
        idempotency_key="~" * validation.MAX_IDEMPOTENCY_KEY,
        feature="f" * validation.MAX_FEATURE,
        metadata={
            f"{i:0{validation.MAX_METADATA_KEY}d}": "v" * validation.MAX_METADATA_VALUE for i in range(16)
        },
        retrieval=chat_pb2.RetrievalOptions(
            mode=chat_pb2.RETRIEVAL_MODE_REQUIRED,
            top_k=validation.MAX_TOP_K,
            min_score=1.0,
            metadata_filter={f"k{i}": "v" for i in range(validation.MAX_FILTER_ENTRIES)},
            document_ids=[f"d{i}" for i in range(validation.MAX_DOCUMENT_IDS)],
        ),
        generation=generation_pb2.GenerationConfig(max_tokens=1, temperature=2, top_p=1, stop=["a"] * 4),
        cache_mode=3,
    )
    assert _violations(at_limits) == []
    # The unary request is checked by the same rules.
    assert _violations(chat_service_pb2.ChatRequest(messages=[_message()], model="gpt")) == []
    assert _violations(chat_service_pb2.ChatRequest(model="gpt")) == ["messages"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [_message()] * (validation.MAX_MESSAGES + 1)}, "messages"),
        ({"messages": [_message(role=message_pb2.ROLE_UNSPECIFIED), _message()]}, "messages[0].role"),
        ({"messages": [_message(" \n\t")]}, "messages[0].content"),
        ({"messages": [_message("\u200b\u2060 \x01")]}, "messages[0].content"),  # nothing visible
        ({"messages": [_message("\u200b", ASSISTANT), _message()]}, "messages[0].content"),
        ({"messages": [_message("x" * (validation.MAX_MESSAGE_CHARS + 1))]}, "messages[0].content"),
        ({"messages": [_message("x" * validation.MAX_MESSAGE_CHARS)] * 3}, "messages"),  # 600k in all
        ({"messages": [_message(), _message("answer", ASSISTANT)]}, "messages[1].role"),
        ({"model": "m" * (validation.MAX_MODEL + 1)}, "model"),
        ({"idempotency_key": "k" * (validation.MAX_IDEMPOTENCY_KEY + 1)}, "idempotency_key"),
        ({"idempotency_key": "key with spaces"}, "idempotency_key"),
        ({"idempotency_key": "clé"}, "idempotency_key"),
        ({"feature": "f" * (validation.MAX_FEATURE + 1)}, "feature"),
        ({"metadata": {f"k{i}": "v" for i in range(validation.MAX_METADATA + 1)}}, "metadata"),
        ({"metadata": {"": "v"}}, "metadata[]"),
        ({"metadata": {"k" * 65: "v"}}, f"metadata[{'k' * 64}]"),
        ({"metadata": {"k": "v" * (validation.MAX_METADATA_VALUE + 1)}}, "metadata[k]"),
        ({"retrieval": chat_pb2.RetrievalOptions(top_k=-1)}, "retrieval.top_k"),
        ({"retrieval": chat_pb2.RetrievalOptions(top_k=validation.MAX_TOP_K + 1)}, "retrieval.top_k"),
        ({"retrieval": chat_pb2.RetrievalOptions(min_score=-0.1)}, "retrieval.min_score"),
        ({"retrieval": chat_pb2.RetrievalOptions(min_score=1.5)}, "retrieval.min_score"),
        (
            {"retrieval": chat_pb2.RetrievalOptions(metadata_filter={f"k{i}": "v" for i in range(17)})},
            "retrieval.metadata_filter",
        ),
        (
            {"retrieval": chat_pb2.RetrievalOptions(document_ids=[f"d{i}" for i in range(101)])},
            "retrieval.document_ids",
        ),
        ({"generation": generation_pb2.GenerationConfig(max_tokens=0)}, "generation.max_tokens"),
        ({"generation": generation_pb2.GenerationConfig(temperature=2.5)}, "generation.temperature"),
        ({"generation": generation_pb2.GenerationConfig(top_p=0)}, "generation.top_p"),
        ({"generation": generation_pb2.GenerationConfig(stop=["a"] * 5)}, "generation.stop"),
    ],
)
def test_each_rule_names_its_field(fields: dict[str, Any], field: str) -> None:
    assert _violations(_request(**fields)) == [field]


def test_every_problem_is_reported_at_once() -> None:
    request = _request(
        messages=[_message(""), _message("fine", ASSISTANT)],
        feature="f" * 100,
        retrieval=chat_pb2.RetrievalOptions(top_k=99),
        generation=generation_pb2.GenerationConfig(temperature=-1),
    )
    assert _violations(request) == [
        "messages[0].content",
        "messages[1].role",
        "feature",
        "retrieval.top_k",
        "generation.temperature",
    ]


def test_inference_checks_conversations_with_the_same_rules_and_its_own_limits() -> None:
    """The gateway's conversation rules are inference's, with the gateway's tighter limits."""
    from parapet.inference.v1 import inference_service_pb2

    long_conversation = [_message()] * (validation.MAX_MESSAGES + 1)
    assert _violations(_request(messages=long_conversation)) == ["messages"]
    inference_validation.validate(inference_service_pb2.StreamCompleteRequest(messages=long_conversation))
    with pytest.raises(InvalidArgument) as refused:
        inference_validation.validate(
            inference_service_pb2.StreamCompleteRequest(
                messages=[_message(role=message_pb2.ROLE_UNSPECIFIED), _message("")],
                generation=generation_pb2.GenerationConfig(top_p=2),
            )
        )
    (bad_request,) = refused.value.details
    assert isinstance(bad_request, error_details_pb2.BadRequest)
    assert [v.field for v in bad_request.field_violations] == [
        "messages[0].role",
        "messages[1].content",
        "generation.top_p",
    ]
