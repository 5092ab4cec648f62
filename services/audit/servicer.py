"""The AuditService RPCs. The tenant is always the verified caller's; no request field can name another."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import grpc.aio

from parapet.audit.v1 import admin_action_pb2, audit_record_pb2, audit_service_pb2, audit_service_pb2_grpc
from parapet.kit import metrics
from parapet.kit.bus import Bus
from parapet.kit.context import current_request_id
from parapet.kit.database import Database
from parapet.kit.errors import AlreadyExists, InvalidArgument
from parapet.kit.identity import Principal
from services.audit.access import AUDIT_ERASE, AUDIT_READ, AUDIT_WRITE, require_audit_permission
from services.audit.canonical import MAX_ID_BYTES, id_too_long, prepare
from services.audit.consumer import BodyDefaults
from services.audit.query import export_interactions, query_interactions
from services.audit.rejected import delete_user_rejected
from services.audit.retention import Erasure, erase_user_bodies, mark_erased
from services.audit.signing import CheckpointSigner
from services.audit.store import append
from services.audit.verify import verify_chain

log = logging.getLogger(__name__)

ERASE_METHOD = "/parapet.audit.v1.AuditService/Erase"


def _erase_action(
    principal: Principal, request: audit_service_pb2.EraseRequest, erased: int, rejected: int
) -> audit_record_pb2.AuditRecord:
    """The chain's record of an erasure: who erased whose bodies, and why."""
    action = audit_record_pb2.AuditRecord(
        record_id=str(uuid.uuid4()),
        admin_action=admin_action_pb2.AdminAction(
            actor=principal.to_proto(),
            method=ERASE_METHOD,
            target=request.user_id,
            attributes={
                "reason": request.reason,
                "erased_count": str(erased),
                "rejected_deleted_count": str(rejected),
            },
            request_id=current_request_id() or "",
        ),
    )
    action.create_time.GetCurrentTime()
    return action


#: An erasure's reason ("for example a ticket reference"), recorded in its AdminAction: bounded so that the action
#: is always a record that can be stored, and checked before anything is erased.
MAX_ERASE_REASON_CHARS = 4096


def _check_erase_request(request: audit_service_pb2.EraseRequest) -> None:
    """Refuse what the erasure could not record (its marker, its AdminAction) before anything is erased: it used to
    fail only after the bodies were gone (INTERNAL for a user id too long to index; a reason too long for a record
    left the erasure with no record of who made it and why)."""
    violations = []
    if not request.user_id:
        violations.append(("user_id", "is required"))
    elif id_too_long(request.user_id):
        violations.append(("user_id", f"must be at most {MAX_ID_BYTES} bytes (UTF-8)"))
    if len(request.reason) > MAX_ERASE_REASON_CHARS:
        violations.append(("reason", f"must be at most {MAX_ERASE_REASON_CHARS} characters"))
    if violations:
        raise InvalidArgument("invalid erase request", field_violations=violations)


class AuditServicer(audit_service_pb2_grpc.AuditServiceServicer):
    def __init__(
        self, database: Database, bus: Bus, signer: CheckpointSigner, defaults: BodyDefaults
    ) -> None:
        self._database = database
        self._bus = bus
        self._signer = signer
        self._defaults = defaults

    async def Record(
        self, request: audit_service_pb2.RecordRequest, context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.RecordResponse:
        principal = require_audit_permission(AUDIT_WRITE)
        if not request.HasField("record"):
            raise InvalidArgument(
                "record is required", field_violations=[("record", "is required")], reason="RECORD_INVALID"
            )
        prepared = prepare(
            request.record,
            principal.tenant_id,
            default_mode=self._defaults.mode,
            default_retention_days=self._defaults.retention_days,
        )
        [result] = await append(self._database, principal.tenant_id, [prepared])
        if result.conflict:
            metrics.record_audit("rpc", "rejected")
            raise AlreadyExists(
                "record_id is already stored with other content",
                reason="RECORD_CONFLICT",
                metadata={"record_id": prepared.record_id},
            )
        metrics.record_audit("rpc", "duplicate" if result.already_recorded else "appended")
        response = audit_service_pb2.RecordResponse(already_recorded=result.already_recorded)
        response.chain.sequence = result.sequence
        response.chain.previous_hash = result.previous_hash
        response.chain.record_hash = result.record_hash
        return response

    async def QueryInteractions(
        self, request: audit_service_pb2.QueryInteractionsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[audit_service_pb2.QueryInteractionsResponse]:
        principal = require_audit_permission(AUDIT_READ)
        async for response in query_interactions(self._database, principal.tenant_id, request):
            yield response

    async def ExportInteractions(
        self, request: audit_service_pb2.ExportInteractionsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[audit_service_pb2.ExportInteractionsResponse]:
        principal = require_audit_permission(AUDIT_READ)
        async for response in export_interactions(self._database, principal.tenant_id, request):
            yield response

    async def VerifyChain(
        self, request: audit_service_pb2.VerifyChainRequest, context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.VerifyChainResponse:
        principal = require_audit_permission(AUDIT_READ)
        result = await verify_chain(
            self._database, principal.tenant_id, self._signer, request.start_sequence, request.end_sequence
        )
        response = audit_service_pb2.VerifyChainResponse(
            intact=result.intact, records_verified=result.records_verified, head_sequence=result.head_sequence
        )
        if result.first_break is not None:
            response.first_break.sequence = result.first_break.sequence
            response.first_break.record_id = result.first_break.record_id
            response.first_break.kind = result.first_break.kind  # type: ignore[assignment]
        if result.latest_checkpoint is not None:
            response.latest_checkpoint.CopyFrom(result.latest_checkpoint)
        return response

    async def Erase(
        self, request: audit_service_pb2.EraseRequest, context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.EraseResponse:
        principal = require_audit_permission(AUDIT_ERASE)
        _check_erase_request(request)
        # The set-aside copies go first: when NATS fails the call fails (UNAVAILABLE, the kit's mapping of a bus
        # that is down) before anything is recorded as erased, and a retry finishes the job (both steps find
        # nothing left to do the second time).
        rejected = await delete_user_rejected(self._bus, principal.tenant_id, request.user_id)
        if rejected:
            # Logged as well as recorded below: if a later step fails, these deletions stand all the same.
            log.info(
                "set-aside audit records of a user deleted",
                extra={"tenant_id": principal.tenant_id, "deleted": rejected},
            )
        # Three steps, none holding the tenant's head lock for long (retention.mark_erased says why the order is
        # safe): the marker, committed; the user's stored bodies, in batches; then the erasure joins the chain. A
        # failure between them leaves the job part-done, and a retry finishes it (the marker only moves forward,
        # bodies already cleared are skipped), counting what it erased itself.
        erasure = await mark_erased(self._database, principal.tenant_id, request.user_id)
        # Shielded: a caller who leaves (a deadline, a cancel) once bodies start to go must not leave them erased
        # with no record in the chain of who erased them and why; only a failure of the database itself can
        # (the call then fails and its retry finishes and records the job).
        erased = await asyncio.shield(self._erase_and_record(principal, request, erasure, rejected))
        return audit_service_pb2.EraseResponse(erased_count=erased, rejected_deleted_count=rejected)

    async def _erase_and_record(
        self, principal: Principal, request: audit_service_pb2.EraseRequest, erasure: Erasure, rejected: int
    ) -> int:
        erased = await erase_user_bodies(self._database, principal.tenant_id, request.user_id, erasure)
        action = _erase_action(principal, request, erased, rejected)
        await append(self._database, principal.tenant_id, [prepare(action, principal.tenant_id)])
        metrics.record_audit("rpc", "appended")
        return erased
