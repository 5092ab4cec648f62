"""The moderation service as the kit runs it (`parapet serve moderation`).

Stateless: no database, no bus. The NER model is loaded once here, at start, off the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os

import grpc.aio

from parapet.kit.app import Resources, ServiceApp
from parapet.moderation.v1 import moderation_service_pb2, moderation_service_pb2_grpc
from services.moderation.detectors.literals import fold_table
from services.moderation.masking import ContextSealer
from services.moderation.policy_source import AuthPolicySource, DefaultPolicySource, PolicySource
from services.moderation.screener import Screener
from services.moderation.servicer import ModerationServicer
from services.moderation.settings import ModerationSettings

log = logging.getLogger(__name__)
SERVICE_NAME = moderation_service_pb2.DESCRIPTOR.services_by_name["ModerationService"].full_name


def masking_key(settings: ModerationSettings) -> bytes:
    if settings.masking_key is None:
        log.warning("PARAPET_MASKING_KEY is unset: masking contexts are sealed with a random per-process key")
        return os.urandom(32)
    try:
        key = base64.b64decode(settings.masking_key.get_secret_value(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise ValueError("PARAPET_MASKING_KEY must be the base64 of exactly 32 bytes")
    return key


async def register(server: grpc.aio.Server, resources: Resources[ModerationSettings]) -> None:
    settings = resources.settings
    screener = await asyncio.to_thread(
        Screener, ner=settings.ner_enabled, injection_threshold=settings.injection_threshold
    )
    # The protected-text matcher's case-folding table (about 0.1 s, once): now, not in a caller's request.
    await asyncio.to_thread(fold_table)
    policies: PolicySource = AuthPolicySource(settings) if settings.auth_address else DefaultPolicySource()
    servicer = ModerationServicer(
        screener,
        ContextSealer(masking_key(settings), settings.masking_context_ttl_seconds),
        policies,
        max_text_chars=settings.max_text_chars,
        max_input_chars=settings.max_input_chars,
        max_texts=settings.max_texts,
        max_protected_texts=settings.max_protected_texts,
    )
    moderation_service_pb2_grpc.add_ModerationServiceServicer_to_server(servicer, server)
    resources.cleanup.push_async_callback(policies.close)
    resources.cleanup.callback(servicer.close)


APP = ServiceApp(
    name="moderation",
    settings_type=ModerationSettings,
    register=register,
    service_names=(SERVICE_NAME,),
    uses_database=False,
    uses_nats=False,
)
