"""The inference service as the kit runs it (`parapet serve inference`).

Its RPCs are pending until issue #5 (inference routing): each answers UNIMPLEMENTED with a message naming that
issue, never a made-up result.
"""

from pathlib import Path

from parapet.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from parapet.kit.app import ServiceApp
from parapet.kit.config import ServiceSettings
from parapet.kit.pending import GeneratedService, register_pending

INFERENCE_SERVICE = GeneratedService(inference_service_pb2, inference_service_pb2_grpc, "InferenceService")

APP = ServiceApp(
    name="inference",
    settings_type=ServiceSettings,
    register=register_pending((INFERENCE_SERVICE,), "issue #5 (inference routing)"),
    service_names=(INFERENCE_SERVICE.full_name,),
    uses_database=True,
    uses_nats=True,
    migrations=Path(__file__).parent / "migrations",
)
