"""The retrieval service as the kit runs it (`parapet serve retrieval`).

Its RPCs are pending until issue #7 (retrieval): each answers UNIMPLEMENTED with a message naming that
issue, never a made-up result.
"""

from pathlib import Path

from parapet.kit.app import ServiceApp
from parapet.kit.config import ServiceSettings
from parapet.kit.pending import GeneratedService, register_pending
from parapet.retrieval.v1 import retrieval_service_pb2, retrieval_service_pb2_grpc

RETRIEVAL_SERVICE = GeneratedService(retrieval_service_pb2, retrieval_service_pb2_grpc, "RetrievalService")

APP = ServiceApp(
    name="retrieval",
    settings_type=ServiceSettings,
    register=register_pending((RETRIEVAL_SERVICE,), "issue #7 (retrieval)"),
    service_names=(RETRIEVAL_SERVICE.full_name,),
    uses_database=True,
    uses_nats=True,
    migrations=Path(__file__).parent / "migrations",
)
