"""Metrics of one provider attempt: duration to its end, time to its first token, and how it failed.

One :class:`AttemptClock` per attempt (each retry and each fallback model is an attempt of its own), so the
model latency and error series describe the providers, not the requests built on top of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from parapet.kit import metrics
from services.inference.config import ModelConfig
from services.inference.providers.base import ProviderError


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
    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None

    def token(self) -> None:
        if self.first_token is None:
            self.first_token = time.monotonic()

    def done(self, error: str | None = None) -> None:
        """Record the attempt once it ended: ``error`` is its error type, None when it finished."""
        ttft = None if self.first_token is None else self.first_token - self.started
        metrics.observe_model_call(
            self.model.provider,
            self.model.name,
            time.monotonic() - self.started,
            time_to_first_token=ttft,
            error_type=error,
        )
