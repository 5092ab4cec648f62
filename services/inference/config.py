"""The inference configuration file: providers, models, prices, routes, timeouts, retries, breakers (TOML).

Secrets never appear in the file: a provider names the environment variable holding its key
(``api_key_env``), read once at load into a ``SecretStr`` so it prints as ``**********`` in logs,
errors and tracebacks.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

ProviderKind = Literal["openai", "anthropic", "openai_compatible", "local"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Timeouts(_Frozen):
    """Separate budgets so a slow start and a stalled stream are told apart from a dead host."""

    connect_seconds: float = Field(3.0, gt=0, description="TCP/TLS connect to the provider.")
    first_token_seconds: float = Field(30.0, gt=0, description="Request sent to first output text.")
    idle_seconds: float = Field(30.0, gt=0, description="Longest gap between two stream events.")


class RetryConfig(_Frozen):
    max_attempts: int = Field(3, ge=1, le=10, description="Attempts per model, the first included.")
    base_delay_seconds: float = Field(0.2, ge=0, description="Backoff cap of the first retry.")
    max_delay_seconds: float = Field(5.0, ge=0, description="Backoff cap of any retry.")
    max_retry_after_seconds: float = Field(
        30.0, ge=0, description="A longer Retry-After moves on to the fallback instead of waiting."
    )


class BreakerConfig(_Frozen):
    window: int = Field(20, ge=1, description="Outcomes remembered per provider+model.")
    min_calls: int = Field(5, ge=1, description="Outcomes needed before the breaker may open.")
    failure_ratio: float = Field(0.5, gt=0, le=1, description="Failure share of the window that opens it.")
    open_seconds: float = Field(30.0, gt=0, description="Time open before trial calls are let through.")
    half_open_calls: int = Field(1, ge=1, description="Trial calls that must succeed to close again.")

    @model_validator(mode="after")
    def _can_open(self) -> BreakerConfig:
        # The window keeps at most `window` outcomes, so with more required the breaker could never open: a
        # dead provider would be called for ever, silently. Refused at start instead.
        if self.min_calls > self.window:
            raise ValueError(
                f"breaker min_calls ({self.min_calls}) exceeds window ({self.window}): "
                "the breaker could never open; make min_calls at most window"
            )
        return self


class ProviderConfig(_Frozen):
    kind: ProviderKind
    base_url: str | None = None
    api_key_env: str | None = Field(None, description="Environment variable holding the API key.")
    timeouts: Timeouts | None = None  # None: the file's [timeouts]
    api_key: SecretStr | None = Field(
        None, exclude=True
    )  # filled from api_key_env at load, never from the file

    @model_validator(mode="after")
    def _needs_url(self) -> ProviderConfig:
        if self.kind == "openai_compatible" and not self.base_url:
            raise ValueError("an openai_compatible provider needs base_url")
        return self


class ModelConfig(_Frozen):
    name: str = Field(description="Name callers use; unique.")
    provider: str
    upstream_model: str | None = Field(None, description="Name sent to the provider; default: name.")
    context_window_tokens: int = Field(8192, gt=0)
    max_output_tokens: int = Field(4096, gt=0)
    input_price_per_million: Decimal = Decimal(0)
    output_price_per_million: Decimal = Decimal(0)
    cached_input_price_per_million: Decimal | None = None  # None: the input price
    fallbacks: tuple[str, ...] = Field((), description="Models tried, in order, when this one fails.")
    drop_parameters: tuple[Literal["temperature", "top_p", "stop", "seed"], ...] = Field(
        (),
        description="Generation parameters this model refuses, left out of its requests instead of failing them "
        "PROVIDER_REJECTED: OpenAI's reasoning models take no temperature or top_p, some Anthropic models refuse "
        "the two together, some self-hosted servers know no seed.",
    )

    @property
    def wire_name(self) -> str:
        return self.upstream_model or self.name


class ComplexityRule(_Frozen):
    """Sends a request to the strong model when any condition holds."""

    name: str
    prompt_tokens_over: int | None = None
    keywords_any: tuple[str, ...] = ()
    messages_over: int | None = None
    context_chunks_over: int | None = None
    features: tuple[str, ...] = ()


class ComplexityConfig(_Frozen):
    cheap: str
    strong: str
    rules: tuple[ComplexityRule, ...] = ()


class CanaryVariant(_Frozen):
    model: str
    # Relative to the others, at any scale; an infinite weight would leave every other variant no share.
    weight: float = Field(gt=0, allow_inf_nan=False)


class CanaryConfig(_Frozen):
    name: str
    sticky: Literal["tenant", "user"] = "user"
    variants: tuple[CanaryVariant, ...] = Field(min_length=1)


class RouteConfig(_Frozen):
    """A name callers use (an alias or tier) and how it picks a model; exactly one of the three ways."""

    name: str
    model: str | None = None
    complexity: ComplexityConfig | None = None
    canary: CanaryConfig | None = None
    fallbacks: tuple[str, ...] = Field((), description="Tried in order after the chosen model.")

    @model_validator(mode="after")
    def _one_way(self) -> RouteConfig:
        ways = [self.model is not None, self.complexity is not None, self.canary is not None]
        if sum(ways) != 1:
            raise ValueError(f"route {self.name!r} needs exactly one of model, complexity, canary")
        return self

    def picks(self) -> tuple[str, ...]:
        """The models this route may choose for a request (before any fallback)."""
        if self.model is not None:
            return (self.model,)
        if self.complexity is not None:
            return (self.complexity.cheap, self.complexity.strong)
        if self.canary is not None:
            return tuple(v.model for v in self.canary.variants)
        return ()

    def candidates(self) -> tuple[str, ...]:
        """Every model this route can reach, its fallbacks included."""
        return self.picks() + self.fallbacks


class InferenceConfig(_Frozen):
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$")
    default_model: str = Field(
        "local", description="Model or route when neither request nor policy names one."
    )
    timeouts: Timeouts = Timeouts()
    retry: RetryConfig = RetryConfig()
    breaker: BreakerConfig = BreakerConfig()
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    models: tuple[ModelConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()

    @model_validator(mode="after")
    def _references(self) -> InferenceConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("model names must be unique")
        route_names = {r.name for r in self.routes}
        if route_names & set(names):
            raise ValueError(f"routes and models share names: {sorted(route_names & set(names))}")
        for model in self.models:
            if model.provider not in self.providers:
                raise ValueError(f"model {model.name!r}: unknown provider {model.provider!r}")
            for fallback in model.fallbacks:
                if fallback not in names:
                    raise ValueError(f"model {model.name!r}: unknown fallback {fallback!r}")
        for route in self.routes:
            for candidate in route.candidates():
                if candidate not in names:
                    raise ValueError(f"route {route.name!r}: unknown model {candidate!r}")
        if self.default_model not in set(names) | route_names:
            raise ValueError(f"default_model {self.default_model!r} is neither a model nor a route")
        return self

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)

    def route(self, name: str) -> RouteConfig | None:
        return next((r for r in self.routes if r.name == name), None)

    def timeouts_for(self, provider: str) -> Timeouts:
        return self.providers[provider].timeouts or self.timeouts


# The configuration used when no file is given: the deterministic local provider only, so a fresh checkout
# answers without keys.
BUILTIN = {
    "default_model": "local",
    "providers": {"local": {"kind": "local"}},
    "models": [{"name": "local", "provider": "local", "context_window_tokens": 32768}],
}


class ConfigError(ValueError):
    """The configuration file is unreadable or inconsistent; the message names what and where."""


def parse_config(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> InferenceConfig:
    """Validate ``data`` and fill provider keys from ``environ`` (default: ``os.environ``)."""
    env = os.environ if environ is None else environ
    try:
        config = InferenceConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(f"invalid inference configuration: {exc}") from None
    providers = {}
    for name, provider in config.providers.items():
        key = env.get(provider.api_key_env) if provider.api_key_env else None
        providers[name] = provider.model_copy(update={"api_key": SecretStr(key) if key else None})
    return config.model_copy(update={"providers": providers})


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> InferenceConfig:
    if path is None:
        return parse_config(dict(BUILTIN), environ)
    try:
        # TOML for people; JSON too, for tools and tests that generate the file.
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read inference configuration {path}: {exc}") from None
    return parse_config(data, environ)
