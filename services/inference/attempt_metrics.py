"""Metrics and the span of one provider attempt: duration to its end, time to its first token, how it failed.

One :class:`AttemptClock` per attempt (each retry and each fallback model is an attempt of its own), so the
model latency and error series describe the providers, not the requests built on top of them. Its span is the
GenAI CLIENT span (docs/observability.md), ended with the attempt whichever way it ends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from parapet.kit import metrics, telemetry
from services.inference.config import ModelConfig
from services.inference.providers.base import ProviderError, Usage


def error_type(error: ProviderError) -> str:
    """The kit's model error types: HTTP 429, 5xx, timeouts; everything else (connect errors, 4xx, cut
    streams) is ``other``."""
    if error.kind == "rate_limited":
        return "rate_limited"
    if error.kind == "timeout":
        return "timeout"
    if error.status is not None and error.status >= 500:
        return "server_error"
    return "other"


@dataclass
class AttemptClock:
    model: ModelConfig
    span: trace.Span = trace.INVALID_SPAN  # no span (tests of the metrics alone); ending it does nothing
    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    ended: bool = False

    def token(self) -> None:
        if self.first_token is None:
            self.first_token = time.monotonic()

    def done(
        self, error: str | None = None, *, usage: Usage | None = None, finish_reason: str | None = None
    ) -> None:
        """Record the attempt once it ended: ``error`` is its error type, None when it finished (with the
        ``usage`` billed for it and its ``finish_reason``, put on the span)."""
        ttft = None if self.first_token is None else self.first_token - self.started
        metrics.observe_model_call(
            self.model.provider,
            self.model.name,
            time.monotonic() - self.started,
            time_to_first_token=ttft,
            error_type=error,
        )
        if error is None:
            telemetry.set_gen_ai_response(
                self.span,
                response_model=self.model.wire_name,
                input_tokens=usage.prompt_tokens if usage is not None else None,
                output_tokens=usage.completion_tokens if usage is not None else None,
                finish_reasons=[finish_reason] if finish_reason else [],
            )
        else:
            self.span.set_attribute("error.type", error)
            self.span.set_status(Status(StatusCode.ERROR))
        self.span.end()
        self.ended = True

    def abandoned(self) -> None:
        """The attempt stopped for a reason of the caller's (it left): no model metric, the span ended. A no-op
        once ``done`` ran (the caller may leave at the yield right after the model's answer)."""
        if self.ended:
            return
        self.span.set_attribute("error.type", "cancelled")
        self.span.end()
        self.ended = True
