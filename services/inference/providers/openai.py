"""OpenAI chat completions through the official async SDK, streaming with ``stream_options.include_usage``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai

from services.inference.config import ProviderConfig, Timeouts
from services.inference.providers.base import (
    Delta,
    Finish,
    FinishKind,
    FinishReasons,
    ProviderError,
    ProviderEvent,
    ProviderRequest,
    Usage,
    error_for_event,
    error_for_status,
)
from services.inference.providers.sse import RAW_STREAM, sse_data

# OpenAI's finish reasons, and the words OpenAI-compatible servers use for the same endings (TGI before 2.2
# `eos_token` and `stop_sequence`, Together `eos`, proxies in front of Anthropic `end_turn` and `max_tokens`,
# `model_length` for a context window reached); any other is judged by FinishReasons (never a complete answer).
_FINISH: dict[str, FinishKind] = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "stop",
    "function_call": "stop",
    "eos": "stop",
    "eos_token": "stop",
    "stop_sequence": "stop",
    "end_turn": "stop",
    "max_tokens": "length",
    "model_length": "length",
}


def http_timeout(timeouts: Timeouts) -> httpx2.Timeout:
    # read = the idle timeout: the SDK's client notices a stalled connection even between our checks.
    return httpx2.Timeout(
        connect=timeouts.connect_seconds,
        read=max(timeouts.idle_seconds, timeouts.first_token_seconds),
        write=timeouts.connect_seconds,
        pool=timeouts.connect_seconds,
    )


class OpenAIProvider:
    """Also the base of ``openai_compatible``: same wire format, another base URL."""

    label = "openai"
    # OpenAI deprecated `max_tokens` and refuses it for its reasoning models (o-series, GPT-5) with HTTP 400;
    # `max_completion_tokens` is accepted by every current chat model. Self-hosted servers keep `max_tokens`.
    max_tokens_field = "max_completion_tokens"

    def __init__(self, name: str, config: ProviderConfig, timeouts: Timeouts) -> None:
        self.name = name
        self._finish = FinishReasons(name, _FINISH)
        key = config.api_key.get_secret_value() if config.api_key is not None else self._missing_key()
        self._client = openai.AsyncOpenAI(
            api_key=key,
            base_url=config.base_url,
            max_retries=0,  # the engine retries, within the caller's deadline, with full jitter
            timeout=http_timeout(timeouts),
        )

    def _missing_key(self) -> str:
        # The SDK refuses to start without a key; a call then fails with 401 and the breaker/fallback handle it.
        return "unset"

    async def close(self) -> None:
        await self._client.close()

    def _params(self, request: ProviderRequest) -> dict[str, Any]:
        messages: list[dict[str, str]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.extend({"role": m.role, "content": m.content} for m in request.messages)
        params: dict[str, Any] = {"model": request.model, "messages": messages}
        if request.max_tokens is not None:
            params[self.max_tokens_field] = request.max_tokens
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.top_p is not None:
            params["top_p"] = request.top_p
        if request.stop:
            params["stop"] = list(request.stop)
        if request.seed is not None:
            params["seed"] = request.seed
        return params

    def _error(self, exc: Exception) -> ProviderError:
        if isinstance(exc, openai.APIStatusError):
            if "insufficient_quota" in (exc.code, exc.type):
                # Answered 429 like a rate limit, but no wait cures an exhausted account: judged as our account's
                # fault (as the same error inside a stream is, `error_for_event`): no retry, the fallback answers.
                return ProviderError(
                    "unavailable", f"{self.label}: our account's quota is exhausted", None, 402
                )
            return error_for_status(exc.status_code, exc.response.headers, self.label)
        if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
            return ProviderError("timeout", f"{self.label} did not answer in time")
        if isinstance(exc, openai.APIConnectionError | httpx2.TransportError):
            return ProviderError("unavailable", f"cannot reach {self.label}")
        return ProviderError("interrupted", f"{self.label} sent a malformed answer")

    async def stream(self, request: ProviderRequest) -> AsyncIterator[ProviderEvent]:
        body = {**self._params(request), "stream": True, "stream_options": {"include_usage": True}}
        try:
            # The SDK's documented raw request (`client.post`): its client, auth, base URL and error mapping,
            # without re-validating our already wire-shaped parameters (~0.8 ms per call in `create`).
            response = await self._client.post(
                "/chat/completions", cast_to=httpx2.Response, body=body, options=RAW_STREAM, stream=True
            )
        except (openai.APIError, httpx2.HTTPError) as exc:
            raise self._error(exc) from None
        finish: FinishKind | None = None
        usage: Usage | None = None
        try:
            async for _, data in sse_data(response):
                if data == "[DONE]":
                    # Read on to the end of the body (the chunked terminator follows at once) so the
                    # connection goes back to the pool instead of being closed.
                    continue
                chunk = json.loads(data)
                if not isinstance(chunk, dict):
                    raise ProviderError("interrupted", f"{self.label} sent a malformed answer")
                if "error" in chunk:
                    raise error_for_event(chunk["error"], self.label)
                reported = chunk.get("usage")
                if reported:
                    details = reported.get("prompt_tokens_details") or {}
                    usage = Usage(
                        int(reported.get("prompt_tokens") or 0),
                        int(reported.get("completion_tokens") or 0),
                        int(details.get("cached_tokens") or 0),
                    )
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield Delta(text)
                    if choice.get("finish_reason"):
                        finish = self._finish(choice["finish_reason"])
        except (openai.APIError, httpx2.HTTPError, ValueError, AttributeError, TypeError) as exc:
            error = self._error(exc)
            if error.kind == "unavailable":
                error = ProviderError("interrupted", f"{self.label} stream broke off", status=error.status)
            raise error from None
        finally:
            await response.aclose()
        if finish is None:
            raise ProviderError("interrupted", f"{self.label} stream ended without a finish reason")
        yield Finish(finish, usage)
