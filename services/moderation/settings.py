"""Settings of the moderation service (`PARAPET_*` environment variables)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from parapet.kit.config import ServiceSettings


class ModerationSettings(ServiceSettings):
    """Where tenant policies come from, the masking key, and which detectors run.

    Tenant policies come from the auth service at `PARAPET_AUTH_ADDRESS` (every service's setting); unset,
    every tenant gets the service defaults (docs/moderation.md).
    """

    policy_cache_seconds: float = Field(
        5.0,
        ge=0,
        description="How long a tenant's policy is used before it is revalidated with auth (by version).",
    )
    masking_key: SecretStr | None = Field(
        None,
        description="Base64 of 32 random bytes: the AES-256-GCM key sealing masking contexts. Every replica must "
        "share it. Unset: a random key per process (contexts then do not survive a restart or cross replicas).",
    )
    masking_context_ttl_seconds: float = Field(
        3600.0,
        gt=0,
        description="How long a masking context can be used (Unmask, ScreenOutput, ScreenStream).",
    )
    ner_enabled: bool = Field(
        True, description="Detect person names on input with the spaCy English model (loaded once at start)."
    )
    injection_threshold: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Combined injection score at or above which a prompt counts as an attack.",
    )
    max_text_chars: int = Field(
        200_000, gt=0, description="Longest text (and longest stream) screened; longer ones are refused."
    )
    max_input_chars: int = Field(
        400_000,
        gt=0,
        description="Most code points of one ScreenInput's texts together (each at most the longest text "
        "above). The gateway sends a chat's messages, which its contract allows up to 400,000 characters together.",
    )
    max_texts: int = Field(
        1_000,
        gt=0,
        description="Most texts in one ScreenInput; more are refused before any screening. Each text costs "
        "its own screening (about 24 µs even when empty), which the length limit does not bound; the "
        "gateway sends at most 200 (one per message).",
    )
    max_protected_texts: int = Field(
        256,
        gt=0,
        description="Most protected texts in one ScreenOutput or ScreenStream config; more are refused. "
        "Real callers send a system prompt and a few canaries.",
    )
