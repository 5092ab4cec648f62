"""The moderation service as the kit runs it (`parapet serve moderation`).

Its RPCs are pending until issue #6 (moderation): each answers UNIMPLEMENTED with a message naming that
issue, never a made-up result.
"""

from parapet.kit.app import ServiceApp
from parapet.kit.config import ServiceSettings
from parapet.kit.pending import GeneratedService, register_pending
from parapet.moderation.v1 import moderation_service_pb2, moderation_service_pb2_grpc

MODERATION_SERVICE = GeneratedService(
    moderation_service_pb2, moderation_service_pb2_grpc, "ModerationService"
)

APP = ServiceApp(
    name="moderation",
    settings_type=ServiceSettings,
    register=register_pending((MODERATION_SERVICE,), "issue #6 (moderation)"),
    service_names=(MODERATION_SERVICE.full_name,),
    uses_database=False,
    uses_nats=False,
)
