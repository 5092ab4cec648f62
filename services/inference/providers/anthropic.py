"""Anthropic messages through the official async SDK; usage from ``message_start`` and ``message_delta``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2

from services.inference.config import ProviderConfig, Timeouts
from services.inference.providers.base import (
    Delta,
    Finish,
    FinishKind,
    FinishReasons,
    PromptCounted,
    ProviderError,
    ProviderEvent,
    ProviderRequest,
    Usage,
    error_for_event,
    error_for_status,
)
from services.inference.providers.openai import http_timeout
from services.inference.providers.sse import RAW_STREAM, sse_data

# Anthropic's stop reasons; any other is judged by FinishReasons (never a complete answer).
_FINISH: dict[str, FinishKind] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "stop",
    "max_tokens": "length",
    # The answer was cut where the model's context window ended: as incomplete as at max_tokens.
    "model_context_window_exceeded": "length",
    # Anthropic paused a long turn, to be resumed by sending the answer back: what came is not the whole answer
    # (it was STOP, and cached as complete).
    "pause_turn": "length",
    "refusal": "content_filter",
}
# Anthropic requires max_tokens. When neither the request nor the policy sets one the model's configured
# output limit is sent (the contract's "unset = the model's default"); this only when no limit came with it.
DEFAULT_MAX_TOKENS = 1024


class AnthropicProvider:
    label = "anthropic"

    def __init__(self, name: str, config: ProviderConfig, timeouts: Timeouts) -> None:
        self.name = name
        self._finish = FinishReasons(name, _FINISH)
        key = config.api_key.get_secret_value() if config.api_key is not None else "unset"
        self._client = anthropic.AsyncAnthropic(
            api_key=key, base_url=config.base_url, max_retries=0, timeout=http_timeout(timeouts)
        )

    async def close(self) -> None:
        await self._client.close()

    def _params(self, request: ProviderRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens or request.output_limit or DEFAULT_MAX_TOKENS,
        }
        if request.system:
            params["system"] = request.system
        if request.temperature is not None:
            params["temperature"] = min(request.temperature, 1.0)  # Anthropic's range is [0, 1]
        if request.top_p is not None:
            params["top_p"] = request.top_p
        if request.stop:
            params["stop_sequences"] = list(request.stop)
        return params

    def _error(self, exc: Exception) -> ProviderError:
        if isinstance(exc, anthropic.APIStatusError):
            return error_for_status(exc.status_code, exc.response.headers, self.label)
        if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException):
            return ProviderError("timeout", "anthropic did not answer in time")
        if isinstance(exc, anthropic.APIConnectionError | httpx2.TransportError):
            return ProviderError("unavailable", "cannot reach anthropic")
        return ProviderError("interrupted", "anthropic sent a malformed answer")

    async def stream(self, request: ProviderRequest) -> AsyncIterator[ProviderEvent]:
        try:
            # The SDK's documented raw request, as in the openai provider.
            response = await self._client.post(
                "/v1/messages",
                cast_to=httpx2.Response,
                body={**self._params(request), "stream": True},
                options=RAW_STREAM,
                stream=True,
            )
        except (anthropic.APIError, httpx2.HTTPError) as exc:
            raise self._error(exc) from None
        prompt_tokens: int | None = None
        cached = 0
        written = 0
        completion_tokens: int | None = None
        finish: FinishKind | None = None
        stopped = False
        try:
            async for _, data in sse_data(response):
                event = json.loads(data)
                kind = event.get("type")
                if kind == "content_block_delta":
                    text = (event.get("delta") or {}).get("text")
                    if text:
                        yield Delta(text)
                elif kind == "message_start":
                    usage = (event.get("message") or {}).get("usage") or {}
                    prompt_tokens = usage.get("input_tokens")
                    cached = int(usage.get("cache_read_input_tokens") or 0)
                    # input_tokens leaves out the prompt-cache writes as well as the reads: both were sent.
                    written = int(usage.get("cache_creation_input_tokens") or 0)
                    if prompt_tokens is not None:
                        # Billed if the attempt ends early, whoever ends it (the engine's timeouts too).
                        yield PromptCounted(Usage(int(prompt_tokens) + written + cached, 0, cached))
                elif kind == "message_delta":
                    reason = (event.get("delta") or {}).get("stop_reason")
                    if reason is not None:
                        finish = self._finish(reason)
                    completion_tokens = (event.get("usage") or {}).get("output_tokens", completion_tokens)
                elif kind == "message_stop":
                    stopped = True  # read on to the end of the body so the connection is reused
                elif kind == "error":
                    raise error_for_event(event.get("error"), self.label)
        except (anthropic.APIError, httpx2.HTTPError, ValueError, AttributeError, TypeError) as exc:
            error_out = self._error(exc)
            if error_out.kind == "unavailable":
                error_out = ProviderError(
                    "interrupted", "anthropic stream broke off", status=error_out.status
                )
            raise error_out from None
        finally:
            await response.aclose()
        if finish is None or not stopped:
            raise ProviderError("interrupted", "anthropic stream ended without message_stop")
        usage_out = None
        if prompt_tokens is not None and completion_tokens is not None:
            # Anthropic's input_tokens excludes cache writes and reads; our prompt_tokens includes both.
            usage_out = Usage(int(prompt_tokens) + written + cached, int(completion_tokens), cached)
        yield Finish(finish, usage_out)
