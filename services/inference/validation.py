"""Request checks: every problem is reported at once as a field violation (INVALID_ARGUMENT)."""

from __future__ import annotations

from collections.abc import Sequence

from parapet.inference.v1 import generation_pb2, inference_service_pb2, message_pb2
from parapet.kit.errors import InvalidArgument

MAX_MESSAGES = 500
MAX_MESSAGE_CHARS = 400_000
MAX_CONTEXT_CHUNKS = 200

Request = inference_service_pb2.StreamCompleteRequest | inference_service_pb2.CompleteRequest


def generation_violations(generation: generation_pb2.GenerationConfig) -> list[tuple[str, str]]:
    """Problems of sampling and length parameters (also checked by the gateway before it reserves budget)."""
    violations: list[tuple[str, str]] = []
    if generation.HasField("max_tokens") and generation.max_tokens <= 0:
        violations.append(("generation.max_tokens", "must be positive"))
    if generation.HasField("temperature") and not 0 <= generation.temperature <= 2:
        violations.append(("generation.temperature", "must be in [0, 2]"))
    if generation.HasField("top_p") and not 0 < generation.top_p <= 1:
        violations.append(("generation.top_p", "must be in (0, 1]"))
    if len(generation.stop) > 4:
        violations.append(("generation.stop", "at most 4 stop sequences"))
    return violations


def message_violations(
    messages: Sequence[message_pb2.Message], *, max_messages: int, max_chars: int
) -> list[tuple[str, str]]:
    """Problems of a conversation: its length, and each message's role and content (also the gateway's)."""
    violations: list[tuple[str, str]] = []
    if not messages:
        violations.append(("messages", "at least one message is required"))
    if len(messages) > max_messages:
        violations.append(("messages", f"at most {max_messages} messages"))
    for index, message in enumerate(messages):
        if message.role not in (message_pb2.ROLE_USER, message_pb2.ROLE_ASSISTANT):
            violations.append((f"messages[{index}].role", "must be ROLE_USER or ROLE_ASSISTANT"))
        if not message.content.strip():
            violations.append((f"messages[{index}].content", "must not be empty"))
        if len(message.content) > max_chars:
            violations.append((f"messages[{index}].content", f"at most {max_chars} characters"))
    return violations


def validate(request: Request) -> None:
    violations = message_violations(request.messages, max_messages=MAX_MESSAGES, max_chars=MAX_MESSAGE_CHARS)
    if len(request.context) > MAX_CONTEXT_CHUNKS:
        violations.append(("context", f"at most {MAX_CONTEXT_CHUNKS} chunks"))
    violations.extend(generation_violations(request.generation))
    if violations:
        raise InvalidArgument("the completion request is invalid", field_violations=violations)
