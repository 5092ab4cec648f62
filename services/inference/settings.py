"""Settings of the inference service (``PARAPET_*``); providers, models and routes are in its config file."""

from pathlib import Path

from pydantic import Field

from parapet.kit.config import ServiceSettings

# prompts/ at the repository root (also copied next to the code in the container image).
DEFAULT_PROMPTS_DIR = Path(__file__).resolve().parents[2] / "prompts"


class InferenceSettings(ServiceSettings):
    inference_config_file: Path | None = Field(
        None,
        description="TOML file of providers, models, prices, routes, timeouts, retries and breakers "
        "(docs/inference.md). Unset: only the built-in deterministic `local` model.",
    )
    prompts_dir: Path | None = Field(
        None,
        description="Directory of versioned prompt templates (`<name>/<semver>/`). Unset: `prompts/` of the "
        "source tree the service runs from.",
    )
    default_prompt_template: str = Field(
        "grounded-answer", description="Template rendered when a request names none."
    )
    auth_address: str | None = Field(
        None,
        description="host:port of the auth service, whose tenant policy (allowed models, default model, "
        "max tokens) is enforced. Unset: every configured model is allowed (development only).",
    )
    policy_cache_seconds: float = Field(
        5.0, ge=0, description="How long a tenant policy is used before it is revalidated with auth."
    )
    policy_retry_seconds: float = Field(
        5.0,
        gt=0,
        description="After a revalidation with auth failed (unreachable, or no answer in 2 s), how long the "
        "tenant's cached policy is used before auth is asked again.",
    )
    cache_enabled: bool = Field(True, description="Whether the semantic cache is used at all.")
    cache_similarity_threshold: float = Field(
        0.95, gt=0, le=1, description="Cosine similarity a cached question needs to answer a new one."
    )
    cache_fallback_similarity_threshold: float = Field(
        0.85,
        gt=0,
        le=1,
        description="Looser similarity at which a cached answer is served when every provider of the route "
        "failed before answering (CACHE_OUTCOME_FALLBACK_HIT): a close answer beats none. 1 turns it off.",
    )
    cache_ttl_seconds: float = Field(3600.0, gt=0, description="How long a cached answer may be served.")
    cache_expiry_sweep_seconds: float = Field(
        300.0,
        gt=0,
        description="How often expired cached answers of every tenant are deleted (a tenant's own writes "
        "also delete its expired ones).",
    )
