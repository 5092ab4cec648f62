"""The inference service as the kit runs it (`parapet serve inference`)."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc.aio

from parapet.events.documents import DOCUMENTS_STREAM
from parapet.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from parapet.kit import periodic
from parapet.kit.app import Resources, ServiceApp
from services.inference.cache.deletions import consume_deletions
from services.inference.cache.store import SemanticCache
from services.inference.config import load_config
from services.inference.engine import Engine
from services.inference.policy import AuthPolicySource, OpenPolicySource, PolicySource
from services.inference.prompts import PromptLibrary
from services.inference.providers.registry import build_providers
from services.inference.resilience.breaker import Breakers
from services.inference.servicer import InferenceServicer
from services.inference.settings import DEFAULT_PROMPTS_DIR, InferenceSettings

log = logging.getLogger(__name__)

SERVICE_NAME = inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name


def prompts_dir(settings: InferenceSettings) -> Path:
    """The setting; else prompts/ of the source tree; else prompts/ of the working directory (the image's)."""
    if settings.prompts_dir is not None:
        return settings.prompts_dir
    return DEFAULT_PROMPTS_DIR if DEFAULT_PROMPTS_DIR.is_dir() else Path.cwd() / "prompts"


async def build_engine(settings: InferenceSettings, resources: Resources[InferenceSettings]) -> Engine:
    config = load_config(settings.inference_config_file)
    providers = build_providers(config)
    for provider in providers.values():
        resources.cleanup.push_async_callback(provider.close)
    policy: PolicySource
    if settings.auth_address:
        policy = AuthPolicySource(settings)
    else:
        log.warning("no auth_address: the tenant policy's model rules are not enforced")
        policy = OpenPolicySource()
    resources.cleanup.push_async_callback(policy.close)
    cache = None
    if settings.cache_enabled:
        # Imported here: loading the ONNX model is only worth it when the cache is on.
        from parapet.embeddings import CachedEmbedder
        from parapet.embeddings.minilm import MiniLmEmbedder

        embedder = CachedEmbedder(MiniLmEmbedder(), max_entries=10_000)
        # Pushed before the engine's drain, so it runs after it: the pending writes embed their questions.
        resources.cleanup.push_async_callback(embedder.aclose)
        cache = SemanticCache(
            resources.require_database(),
            embedder,
            threshold=settings.cache_similarity_threshold,
            fallback_threshold=settings.cache_fallback_similarity_threshold,
            ttl_seconds=settings.cache_ttl_seconds,
        )
        resources.spawn(consume_deletions(resources.require_bus(), cache), name="cache-deletions")
        expire = periodic.until_none_left(cache.delete_expired, "expired cache entries")
        resources.spawn(
            periodic.every(settings.cache_expiry_sweep_seconds, expire, "cache expiry"), name="cache-expiry"
        )
    prompts = PromptLibrary(prompts_dir(settings))
    # Fail at start, not on every request, when the templates are missing (wrong PARAPET_PROMPTS_DIR).
    prompts.get(settings.default_prompt_template)
    engine = Engine(
        config,
        providers,
        Breakers(config.breaker),
        prompts,
        policy,
        cache,
        settings.default_prompt_template,
        resources.tracer_provider,
    )
    resources.cleanup.push_async_callback(engine.drain)
    return engine


async def register(server: grpc.aio.Server, resources: Resources[InferenceSettings]) -> None:
    engine = await build_engine(resources.settings, resources)
    inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(engine), server)


APP = ServiceApp(
    name="inference",
    settings_type=InferenceSettings,
    register=register,
    service_names=(SERVICE_NAME,),
    uses_database=True,
    uses_nats=True,
    migrations=Path(__file__).parent / "migrations",
    # Declared here too (same definition as retrieval's), so the cache's consumer never waits for it.
    streams=(DOCUMENTS_STREAM,),
)
