"""Any OpenAI-compatible server (vLLM, llama.cpp, Ollama) by base URL; a key is optional."""

from __future__ import annotations

from services.inference.providers.openai import OpenAIProvider


class OpenAICompatibleProvider(OpenAIProvider):
    label = "openai_compatible"
    # llama.cpp, vLLM and Ollama all know `max_tokens`; not every version knows `max_completion_tokens`.
    max_tokens_field = "max_tokens"

    def _missing_key(self) -> str:
        # Self-hosted servers usually take no key; the SDK still wants a non-empty string.
        return "no-key"
