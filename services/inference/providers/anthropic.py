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
    ProviderError,
    ProviderEvent,
    ProviderRequest,
    Usage,
    error_for_status,
)
from services.inference.providers.openai import http_timeout

_FINISH: dict[str, FinishKind] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "refusal": "content_filter",
}
# Anthropic requires max_tokens; used when neither the request nor the policy sets one.
DEFAULT_MAX_TOKENS = 1024


class AnthropicProvider:
    label = "anthropic"

    def __init__(self, name: str, config: ProviderConfig, timeouts: Timeouts) -> None:
        self.name = name
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
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
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
            response = await self._client.messages.create(**self._params(request), stream=True)
        except (anthropic.APIError, httpx2.HTTPError) as exc:
            raise self._error(exc) from None
        prompt_tokens: int | None = None
        cached = 0
        completion_tokens: int | None = None
        finish: FinishKind | None = None
        stopped = False
        try:
            async for event in response:
                if event.type == "message_start":
                    usage = event.message.usage
                    prompt_tokens = getattr(usage, "input_tokens", None)
                    cached = getattr(usage, "cache_read_input_tokens", None) or 0
                elif event.type == "content_block_delta":
                    text = getattr(event.delta, "text", None)
                    if text:
                        yield Delta(text)
                elif event.type == "message_delta":
                    if event.delta.stop_reason is not None:
                        finish = _FINISH.get(event.delta.stop_reason, "stop")
                    completion_tokens = getattr(event.usage, "output_tokens", None) or completion_tokens
                elif event.type == "message_stop":
                    stopped = True
        except (anthropic.APIError, httpx2.HTTPError, json.JSONDecodeError, ValueError) as exc:
            error = self._error(exc)
            if error.kind == "unavailable":
                error = ProviderError("interrupted", "anthropic stream broke off", status=error.status)
            raise error from None
        finally:
            await response.close()
        if finish is None or not stopped:
            raise ProviderError("interrupted", "anthropic stream ended without message_stop")
        usage_out = None
        if prompt_tokens is not None and completion_tokens is not None:
            # Anthropic's input_tokens excludes cache reads; our prompt_tokens includes them.
            usage_out = Usage(prompt_tokens + cached, completion_tokens, cached)
        yield Finish(finish, usage_out)
