"""Checks of a chat request before anything runs: every problem at once, as BadRequest field violations.

Enum numbers the contract does not declare never get here: the kit refuses them in every request, nested ones
included (``parapet.kit.inbound``), so the items of a job were checked at SubmitJob too.
"""

from __future__ import annotations

import re

from parapet.gateway.v1 import chat_pb2, chat_service_pb2
from parapet.inference.v1 import message_pb2
from parapet.kit.errors import InvalidArgument
from services.inference.validation import generation_violations, message_violations
from services.retrieval.extract import has_visible_text

MAX_MESSAGES = 200
# The moderation service's default limit per text; a longer message would be refused there after the
# budget was already reserved.
MAX_MESSAGE_CHARS = 200_000
MAX_TOTAL_CHARS = 400_000
MAX_IDEMPOTENCY_KEY = 128
MAX_FEATURE = 64
MAX_MODEL = 256
MAX_METADATA = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 256
MAX_TOP_K = 50
MAX_FILTER_ENTRIES = 16
MAX_DOCUMENT_IDS = 100
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: keys end up in logs and database keys

Request = chat_service_pb2.StreamChatRequest | chat_service_pb2.ChatRequest


def _messages(request: Request, violations: list[tuple[str, str]]) -> None:
    violations.extend(
        message_violations(request.messages, max_messages=MAX_MESSAGES, max_chars=MAX_MESSAGE_CHARS)
    )
    # Blank too: zero-width, format and control characters only (whitespace is refused above). Retrieval
    # refused such a question naming `query`, a field no chat request has, after the budget hold was taken;
    # with retrieval off the model was asked, and billed for, a question nobody can read (until 2026-12-06).
    violations.extend(
        (f"messages[{index}].content", "must have visible text, not only zero-width or control characters")
        for index, message in enumerate(request.messages)
        if message.content.strip() and not has_visible_text(message.content)
    )
    if sum(len(message.content) for message in request.messages) > MAX_TOTAL_CHARS:
        violations.append(("messages", f"at most {MAX_TOTAL_CHARS} characters in all"))
    if request.messages and request.messages[-1].role != message_pb2.ROLE_USER:
        violations.append(
            (f"messages[{len(request.messages) - 1}].role", "the last message must be the user's")
        )


def _retrieval(options: chat_pb2.RetrievalOptions, violations: list[tuple[str, str]]) -> None:
    if not 0 <= options.top_k <= MAX_TOP_K:
        violations.append(("retrieval.top_k", f"must be in [0, {MAX_TOP_K}]"))
    if not 0 <= options.min_score <= 1:
        violations.append(("retrieval.min_score", "must be in [0, 1]"))
    if len(options.metadata_filter) > MAX_FILTER_ENTRIES:
        violations.append(("retrieval.metadata_filter", f"at most {MAX_FILTER_ENTRIES} entries"))
    if len(options.document_ids) > MAX_DOCUMENT_IDS:
        violations.append(("retrieval.document_ids", f"at most {MAX_DOCUMENT_IDS} documents"))


def validate(request: Request) -> None:
    violations: list[tuple[str, str]] = []
    _messages(request, violations)
    if len(request.model) > MAX_MODEL:
        violations.append(("model", f"at most {MAX_MODEL} characters"))
    if len(request.idempotency_key) > MAX_IDEMPOTENCY_KEY:
        violations.append(("idempotency_key", f"at most {MAX_IDEMPOTENCY_KEY} characters"))
    elif request.idempotency_key and not _PRINTABLE.match(request.idempotency_key):
        violations.append(("idempotency_key", "visible ASCII characters only"))
    if len(request.feature) > MAX_FEATURE:
        violations.append(("feature", f"at most {MAX_FEATURE} characters"))
    if len(request.metadata) > MAX_METADATA:
        violations.append(("metadata", f"at most {MAX_METADATA} entries"))
    for key, value in request.metadata.items():
        if not key or len(key) > MAX_METADATA_KEY:
            violations.append(
                (f"metadata[{key[:MAX_METADATA_KEY]}]", f"keys are 1-{MAX_METADATA_KEY} characters")
            )
        if len(value) > MAX_METADATA_VALUE:
            violations.append(
                (f"metadata[{key[:MAX_METADATA_KEY]}]", f"values are at most {MAX_METADATA_VALUE} characters")
            )
    _retrieval(request.retrieval, violations)
    violations.extend(generation_violations(request.generation))
    if violations:
        raise InvalidArgument("the chat request is invalid", field_violations=violations)
