"""Request reading and response shapes of the two wire formats: OpenAI chat completions, Anthropic messages."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from parapet import tokens

Api = Literal["openai", "anthropic"]

# `finish=stop|length` in each API's own words; any other value is sent as it is (Anthropic's `refusal` or
# `model_context_window_exceeded`, a self-hosted server's `abort`), to test how the adapters judge it.
_OPENAI_FINISH = {"stop": "stop", "length": "length"}
_ANTHROPIC_FINISH = {"stop": "end_turn", "length": "max_tokens"}


def _openai_finish(finish: str) -> str:
    return _OPENAI_FINISH.get(finish, finish)


def _anthropic_finish(finish: str) -> str:
    return _ANTHROPIC_FINISH.get(finish, finish)


_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass(frozen=True)
class Prompt:
    """What the emulator needs from a request body."""

    model: str
    chat: tuple[tuple[str, str], ...]  # (role, content), system included
    stream: bool
    include_usage: bool  # OpenAI: stream_options.include_usage; Anthropic always reports usage

    @property
    def last_user_text(self) -> str:
        return next((content for role, content in reversed(self.chat) if role == "user"), "")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def read_prompt(api: Api, body: dict[str, Any]) -> Prompt:
    chat: list[tuple[str, str]] = []
    if api == "anthropic" and body.get("system"):
        chat.append(("system", _text(body["system"])))
    for message in body.get("messages", []):
        chat.append((str(message.get("role", "user")), _text(message.get("content", ""))))
    options = body.get("stream_options") or {}
    return Prompt(
        model=str(body.get("model", "")),
        chat=tuple(chat),
        stream=bool(body.get("stream")),
        include_usage=api == "anthropic" or bool(options.get("include_usage")),
    )


@dataclass(frozen=True)
class Usage:
    """The usage an answer reports. ``prompt`` counts every prompt token, those read from and written to the
    provider's prompt cache included; each API reports them its own way."""

    prompt: int
    completion: int
    cache_read: int = 0
    cache_write: int = 0

    def openai(self) -> dict[str, Any]:
        reported: dict[str, Any] = {
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
        }
        if self.cache_read:
            reported["prompt_tokens_details"] = {"cached_tokens": self.cache_read}
        return reported

    def anthropic_input(self) -> dict[str, int]:
        """Anthropic's ``input_tokens`` leaves out the cache reads and writes, reported beside it."""
        reported = {"input_tokens": max(0, self.prompt - self.cache_read - self.cache_write)}
        if self.cache_read or self.cache_write:
            reported["cache_read_input_tokens"] = self.cache_read
            reported["cache_creation_input_tokens"] = self.cache_write
        return reported


def usage_counts(prompt: Prompt, reply: str) -> Usage:
    """The prompt's and the reply's tokens, counted exactly the way Parapet's estimator counts them."""
    encoding = tokens.encoding_for_model(prompt.model)
    return Usage(tokens.count_chat(prompt.chat, encoding), tokens.count(reply, encoding))


def error_body(api: Api, status: int, error_type: str | None = None) -> bytes:
    """The API's error body for ``status``; ``error_type`` names the error instead of the usual type."""
    message = f"emulated upstream error {status}"
    if api == "openai":
        error: dict[str, Any] = {"message": message, "type": error_type or "upstream_error", "code": status}
        if error_type:
            error["code"] = error_type  # as OpenAI does for insufficient_quota, say
        payload: dict[str, Any] = {"error": error}
    else:
        kind = error_type or _ANTHROPIC_ERRORS.get(status, "api_error")
        payload = {"type": "error", "error": {"type": kind, "message": message}}
    return json.dumps(payload).encode()


def full_response(api: Api, prompt: Prompt, reply: str, finish: str, usage: Usage | None) -> bytes:
    if api == "openai":
        payload: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": prompt.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "finish_reason": _openai_finish(finish),
                }
            ],
        }
        if usage is not None:
            payload["usage"] = usage.openai()
    else:
        payload = {
            "id": f"msg_{uuid.uuid4().hex[:16]}",
            "type": "message",
            "role": "assistant",
            "model": prompt.model,
            "content": [{"type": "text", "text": reply}],
            "stop_reason": _anthropic_finish(finish),
            "stop_sequence": None,
            "usage": {**usage.anthropic_input(), "output_tokens": usage.completion}
            if usage is not None
            else {},
        }
    return json.dumps(payload).encode()


class StreamEncoder:
    """Server-sent events of one streamed answer, in the order the real APIs send them."""

    def __init__(self, api: Api, prompt: Prompt) -> None:
        self.api = api
        self.prompt = prompt
        self.id = f"chatcmpl-{uuid.uuid4().hex[:16]}" if api == "openai" else f"msg_{uuid.uuid4().hex[:16]}"
        self.created = int(time.time())

    def _openai(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.prompt.model,
            "choices": choices,
            **extra,
        }
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    @staticmethod
    def _event(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: ".encode() + json.dumps(data).encode() + b"\n\n"

    def start(self, usage: Usage | None) -> bytes:
        if self.api == "openai":
            return self._openai([{"index": 0, "delta": {"role": "assistant", "content": ""}}])
        reported = {**usage.anthropic_input(), "output_tokens": 1} if usage is not None else {}
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.prompt.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": reported,
        }
        return self._event("message_start", {"type": "message_start", "message": message}) + self._event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )

    def delta(self, text: str) -> bytes:
        if self.api == "openai":
            return self._openai([{"index": 0, "delta": {"content": text}}])
        return self._event(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
        )

    def finish(self, finish: str, usage: Usage | None) -> bytes:
        if self.api == "openai":
            out = self._openai([{"index": 0, "delta": {}, "finish_reason": _openai_finish(finish)}])
            if usage is not None and self.prompt.include_usage:
                out += self._openai([], usage=usage.openai())
            return out + b"data: [DONE]\n\n"
        delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": _anthropic_finish(finish), "stop_sequence": None},
        }
        if usage is not None:
            delta["usage"] = {"output_tokens": usage.completion}
        return (
            self._event("content_block_stop", {"type": "content_block_stop", "index": 0})
            + self._event("message_delta", delta)
            + self._event("message_stop", {"type": "message_stop"})
        )

    def malformed(self) -> bytes:
        if self.api == "openai":
            return b"data: {this is not json\n\n"
        return b"event: content_block_delta\ndata: {this is not json\n\n"

    def error(self, error_type: str | None) -> bytes:
        """An error reported inside a stream that began with 200, in the API's own shape: Anthropic's ``error``
        event (``rate_limit_error``, ``overloaded_error``...), or OpenAI's chunk carrying an ``error`` object."""
        error = {"type": error_type or "api_error", "message": "emulated mid-stream error"}
        if self.api == "openai":
            return b"data: " + json.dumps({"error": {**error, "code": None}}).encode() + b"\n\n"
        return self._event("error", {"type": "error", "error": error})
