"""Providers built from the configuration, one instance per configured provider."""

from __future__ import annotations

from services.inference.config import InferenceConfig
from services.inference.providers.anthropic import AnthropicProvider
from services.inference.providers.base import Provider
from services.inference.providers.local import LocalProvider
from services.inference.providers.openai import OpenAIProvider
from services.inference.providers.openai_compatible import OpenAICompatibleProvider


def build_providers(config: InferenceConfig) -> dict[str, Provider]:
    providers: dict[str, Provider] = {}
    for name, provider in config.providers.items():
        timeouts = config.timeouts_for(name)
        if provider.kind == "openai":
            providers[name] = OpenAIProvider(name, provider, timeouts)
        elif provider.kind == "openai_compatible":
            providers[name] = OpenAICompatibleProvider(name, provider, timeouts)
        elif provider.kind == "anthropic":
            providers[name] = AnthropicProvider(name, provider, timeouts)
        else:
            providers[name] = LocalProvider(name)
    return providers
