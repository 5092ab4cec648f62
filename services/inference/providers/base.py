"""The provider protocol: one streaming call in, text deltas and one finish out, or a typed ProviderError.

A provider that reports the prompt's tokens before the end (Anthropic's ``message_start``) says so with a
``PromptCounted`` event as soon as it knows: the engine bills that count for an attempt that ends early, whoever
ends it (the stream breaking, or the engine's own idle timeout or the caller's deadline stopping it).

Retries, timeouts between events, breakers and fallback live in the engine, not here, so every provider gets
the same resilience and an adapter is only a translation between our types and one wire format.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

log = logging.getLogger(__name__)

FinishKind = Literal["stop", "length", "content_filter"]
ErrorKind = Literal["rate_limited", "unavailable", "timeout", "rejected", "interrupted"]

# Reasons reported in FallbackAttempt.reason and ErrorInfo (docs/contracts.md).
REASONS: dict[ErrorKind, str] = {
    "rate_limited": "PROVIDER_RATE_LIMITED",
    "unavailable": "PROVIDER_UNAVAILABLE",
    "timeout": "PROVIDER_TIMEOUT",
    "rejected": "PROVIDER_REJECTED",
    "interrupted": "STREAM_INTERRUPTED",
}


@dataclass(frozen=True)
class PromptMessage:
    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True)
class ProviderRequest:
    """A rendered prompt for one model: system text from the template, context in a message of its own."""

    model: str  # the provider's name for the model
    system: str
    messages: tuple[PromptMessage, ...]
    max_tokens: int | None = None
    # The model's configured output limit (max_output_tokens): what a provider that requires a max_tokens
    # (Anthropic) is sent when the request and the policy set none.
    output_limit: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    context: tuple[tuple[str, str], ...] = ()  # (title, text) of the retrieved chunks, for the local provider

    def chat(self) -> tuple[tuple[str, str], ...]:
        """(role, content) pairs as OpenAI's format counts them, system first."""
        head = (("system", self.system),) if self.system else ()
        return head + tuple((m.role, m.content) for m in self.messages)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Finish:
    reason: FinishKind
    usage: Usage | None  # None: the provider reported none; the engine counts it and marks it estimated


@dataclass(frozen=True)
class PromptCounted:
    """The provider's own count of the prompt (``completion_tokens`` 0), known before the answer ends: billed
    instead of the engine's offline estimate if the attempt ends without a Finish (Claude's tokenizer is not
    cl100k)."""

    usage: Usage


ProviderEvent = Delta | PromptCounted | Finish


@dataclass
class ProviderError(Exception):
    """A failed call; ``message`` is safe to show (never the key, never the raw provider body)."""

    kind: ErrorKind
    message: str
    retry_after: float | None = None
    status: int | None = None

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"

    @property
    def retryable(self) -> bool:
        """Worth another attempt (before any text was sent): 429, 5xx, connect errors, timeouts, cut streams."""
        return self.kind != "rejected" and self.status not in _OUR_ACCOUNT

    @property
    def reason(self) -> str:
        return REASONS[self.kind]


class Provider(Protocol):
    """One configured provider; ``stream`` yields Delta events (and at most one PromptCounted) then exactly one
    Finish, or raises ProviderError."""

    name: str
    label: str  # the provider's kind (openai, openai_compatible, anthropic, local): gen_ai.provider.name

    def stream(self, request: ProviderRequest) -> AsyncIterator[ProviderEvent]: ...

    async def close(self) -> None: ...


# Statuses that say our account (key, permissions, billing) or our configuration (a model the provider does not
# have, or has retired: 404) is at fault: retrying the same provider cannot help, and the caller cannot fix it.
_OUR_ACCOUNT = (401, 402, 403, 404)

# The error types (or codes) providers name in a stream's error event, as the HTTP status each stands for:
# Anthropic's documented `error.type`s, and OpenAI's types and codes.
_ERROR_TYPE_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "context_length_exceeded": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "insufficient_quota": 402,  # OpenAI answers it 429, but no wait cures it: the account is out of credit
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "api_error": 500,
    "server_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class FinishReasons:
    """One provider's finish reasons as ours. A reason it does not list is never taken for a complete answer:
    providers add reasons (Anthropic's ``refusal``, ``pause_turn``, ``model_context_window_exceeded``), and
    self-hosted servers have their own (vLLM's ``abort``); read as ``stop``, such an answer was billed and
    reported as complete and cached for the TTL. It is ``length`` (FinishReason has no "unknown": LENGTH says the
    answer may be incomplete, and the cache stores STOP only), with a warning naming it the first time."""

    # Enough for every reason a provider may add; a server sending endless distinct values is not remembered
    # beyond it (each one is still a warning, never a complete answer).
    _REMEMBERED = 64

    def __init__(self, provider: str, known: Mapping[str, FinishKind]) -> None:
        self._provider = provider
        self._known = known
        self._warned: set[str] = set()

    def __call__(self, raw: object) -> FinishKind:
        reason = raw if isinstance(raw, str) else repr(raw)
        kind = self._known.get(reason)
        if kind is not None:
            return kind
        if reason not in self._warned:
            if len(self._warned) < self._REMEMBERED:
                self._warned.add(reason)
            log.warning(
                "provider %s finished an answer with %r, a finish reason Parapet does not know: reported as "
                "length (possibly incomplete) and not cached",
                self._provider,
                reason[:100],
            )
        return "length"


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from ``retry-after-ms``, ``retry-after`` (seconds or an HTTP date); None when absent or bad."""
    if not headers:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(when.timestamp() - time.time(), 0.0)


def error_for_status(status: int, headers: Mapping[str, str] | None, provider: str) -> ProviderError:
    """The typed error of an HTTP error answer."""
    retry_after = parse_retry_after(headers)
    if status == 429:
        return ProviderError("rate_limited", f"{provider} rate-limited the call", retry_after, status)
    if status in (408, 504):
        return ProviderError("timeout", f"{provider} timed out (HTTP {status})", retry_after, status)
    if status >= 500 or status == 409:
        return ProviderError("unavailable", f"{provider} failed (HTTP {status})", retry_after, status)
    if status == 404:
        # Our configuration names a model (or a path) the provider does not have: a retired model must fail
        # over to the next of the chain, not refuse every caller INVALID_ARGUMENT for what they cannot change.
        return ProviderError("unavailable", f"{provider} has no such model (HTTP 404)", None, status)
    if status in _OUR_ACCOUNT:
        # A key or billing problem is ours, not the caller's: another provider of the chain may still answer.
        return ProviderError(
            "unavailable", f"{provider} refused our credentials (HTTP {status})", None, status
        )
    return ProviderError("rejected", f"{provider} rejected the request (HTTP {status})", None, status)


def error_for_event(error: object, provider: str) -> ProviderError:
    """The typed error of an error event inside a stream (the HTTP answer was 200), judged like the same error
    answered before the stream: a rate limit is a rate limit, an overload is retried elsewhere, and only the
    request's own fault is the caller's (PROVIDER_REJECTED). An error type we do not know is a broken stream."""
    fields: Mapping[str, object] = error if isinstance(error, Mapping) else {}
    for name in (fields.get("type"), fields.get("code")):
        status = _event_status(name)
        if status is not None:
            typed = error_for_status(status, None, provider)
            # Named from our table only, never the provider's text.
            message = f"{provider} reported {name if isinstance(name, str) else f'HTTP {status}'} mid-stream"
            return ProviderError(typed.kind, message, None, status)
    return ProviderError("interrupted", f"{provider} reported an error mid-stream")


def _event_status(name: object) -> int | None:
    if isinstance(name, str):
        return _ERROR_TYPE_STATUS.get(name)
    # OpenAI-compatible servers (vLLM, llama.cpp) put the HTTP status they mean in `code`.
    if isinstance(name, int) and not isinstance(name, bool) and 400 <= name <= 599:
        return name
    return None
