"""The binding conventions of docs/contracts.md, checked on the compiled descriptors (comments included)."""

from __future__ import annotations

import re

import pytest
from google.protobuf import descriptor_pb2

from tests.unit.contracts.contracts_support import Contracts

FDP = descriptor_pb2.FieldDescriptorProto
MethodOptions = descriptor_pb2.MethodOptions

# RPCs that act on a tenant named in the request instead of the caller's own (platform and tenant administration).
# Every other RPC takes the tenant from the verified internal token, never from a request field.
ADMIN_RPCS_WITH_TENANT_ID = {
    f".parapet.auth.v1.TenantAdminService.{name}"
    for name in (
        "CreateTenant",
        "GetTenant",
        "DisableTenant",
        "EnableTenant",
        "CreateApiKey",
        "ListApiKeys",
        "RevokeApiKey",
        "CreateUser",
        "GetUser",
        "ListUsers",
        "UpdateUser",
        "GetTenantPolicy",
        "UpdateTenantPolicy",
    )
} | {
    # Platform-only (PERMISSION_TOKEN_DELEGATE): a token for a stored principal of the named tenant.
    ".parapet.auth.v1.AuthService.IssueDelegatedToken",
}

# Request messages that must stay field-for-field identical (the streaming and unary forms of one operation).
MIRRORED_REQUESTS = [
    (".parapet.gateway.v1.StreamChatRequest", ".parapet.gateway.v1.ChatRequest"),
    (".parapet.inference.v1.StreamCompleteRequest", ".parapet.inference.v1.CompleteRequest"),
    (".parapet.retrieval.v1.IngestDocumentsRequest", ".parapet.retrieval.v1.StreamIngestDocumentsRequest"),
]
# Fields that mean something only on the streaming side of a mirrored pair: asking for a message mid-stream.
STREAM_ONLY_FIELDS = {".parapet.inference.v1.StreamCompleteRequest": {"report_prompt_sent"}}

REQUIRED_RPCS = {
    ".parapet.gateway.v1.ChatService": {"StreamChat", "Chat"},
    ".parapet.gateway.v1.JobService": {"SubmitJob", "GetJob", "WatchJob"},
    ".parapet.auth.v1.AuthService": {"Authenticate", "Authorize", "GetJwks"},
    ".parapet.auth.v1.TenantAdminService": {
        "CreateTenant",
        "ListTenants",
        "GetTenant",
        "DisableTenant",
        "CreateApiKey",
        "ListApiKeys",
        "RevokeApiKey",
        "UpdateUser",
        "GetTenantPolicy",
        "UpdateTenantPolicy",
    },
    ".parapet.retrieval.v1.RetrievalService": {
        "IngestDocuments",
        "Query",
        "DeleteDocument",
        "DeleteDocuments",
        "ListDocuments",
    },
    ".parapet.inference.v1.InferenceService": {"StreamComplete", "Complete", "ListModels"},
    ".parapet.moderation.v1.ModerationService": {"ScreenInput", "ScreenOutput", "ScreenStream", "Unmask"},
    ".parapet.metering.v1.MeteringService": {"Reserve", "Settle", "Release", "GetUsage"},
    ".parapet.audit.v1.AuditService": {"Record", "QueryInteractions", "VerifyChain", "Erase"},
    ".parapet.billing.v1.BillingService": {"GetInvoicePreview", "ListRollups"},
}

# (service, method) -> (client streaming, server streaming) where the brief fixes the shape.
STREAMING_SHAPES = {
    ".parapet.gateway.v1.ChatService.StreamChat": (False, True),
    ".parapet.gateway.v1.JobService.WatchJob": (False, True),
    ".parapet.retrieval.v1.RetrievalService.IngestDocuments": (True, False),
    ".parapet.inference.v1.InferenceService.StreamComplete": (False, True),
    ".parapet.moderation.v1.ModerationService.ScreenStream": (True, True),
    ".parapet.audit.v1.AuditService.QueryInteractions": (False, True),
}

MONEY_WORDS = re.compile(r"(cost|price|amount|micros|total|money)")
FLOATS = {FDP.TYPE_FLOAT, FDP.TYPE_DOUBLE}


def methods(contracts: Contracts) -> list[tuple[str, descriptor_pb2.MethodDescriptorProto]]:
    return [(f"{name}.{m.name}", m) for name, service in contracts.services.items() for m in service.method]


def fields(contracts: Contracts) -> list[tuple[str, descriptor_pb2.DescriptorProto, FDP]]:
    return [
        (name, message, fld)
        for name, message in contracts.messages.items()
        if not message.options.map_entry
        for fld in message.field
    ]


def test_required_services_and_rpcs_exist(contracts: Contracts) -> None:
    for service, rpcs in REQUIRED_RPCS.items():
        assert service in contracts.services, f"{service} missing"
        present = {m.name for m in contracts.services[service].method}
        assert rpcs <= present, f"{service} lacks {sorted(rpcs - present)}"


def test_streaming_shapes(contracts: Contracts) -> None:
    by_name = dict(methods(contracts))
    for name, (client, server) in STREAMING_SHAPES.items():
        method = by_name[name]
        assert (method.client_streaming, method.server_streaming) == (client, server), name


def test_every_element_has_a_leading_comment(contracts: Contracts) -> None:
    missing = [f"{e.kind} {e.full_name} ({e.file})" for e in contracts.elements if not e.comment]
    assert not missing, "elements without a leading comment:\n" + "\n".join(missing)
    kinds = {e.kind for e in contracts.elements}
    assert kinds >= {"service", "rpc", "message", "field", "enum", "enum value", "oneof"}


def test_every_rpc_states_its_idempotency(contracts: Contracts) -> None:
    for name, _ in methods(contracts):
        comment = contracts.comments[name]
        assert re.search(r"Idempotent: (yes|no|only with)", comment), f"{name} does not state its idempotency"


def test_read_only_rpcs_are_marked_no_side_effects(contracts: Contracts) -> None:
    read_only = 0
    for name, method in methods(contracts):
        says_read_only = "Idempotent: yes, because it changes no state" in contracts.comments[name]
        marked = method.options.idempotency_level == MethodOptions.NO_SIDE_EFFECTS
        assert says_read_only == marked, f"{name}: comment and idempotency_level disagree"
        if re.match(r"(Get|List|Query|Watch|Verify|Export)", method.name):
            assert marked, f"{name} reads only but is not NO_SIDE_EFFECTS"
        read_only += marked
    assert read_only >= 15


def test_idempotent_mutations_are_marked_idempotent(contracts: Contracts) -> None:
    for name, method in methods(contracts):
        comment = contracts.comments[name]
        if (
            comment.count("Idempotent: yes")
            and "changes no state" not in comment
            and not method.client_streaming
        ):
            assert method.options.idempotency_level == MethodOptions.IDEMPOTENT, name


def test_request_and_response_names(contracts: Contracts) -> None:
    for name, method in methods(contracts):
        package = name.rsplit(".", 2)[0]
        assert method.input_type == f"{package}.{method.name}Request", name
        assert method.output_type == f"{package}.{method.name}Response", name


def test_enum_zero_values_are_unspecified_and_values_prefixed(contracts: Contracts) -> None:
    assert contracts.enums
    for name, enum in contracts.enums.items():
        prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
        zero = enum.value[0]
        assert zero.number == 0, f"{name}: first value must be 0"
        assert zero.name == f"{prefix}UNSPECIFIED", f"{name}: zero value {zero.name}"
        assert zero.name.endswith("_UNSPECIFIED")
        for value in enum.value:
            assert value.name.startswith(prefix), f"{name}.{value.name} lacks the {prefix} prefix"


# Messages that record an identity rather than scope a request: an AdminAction's actor may be a platform operator
# of another tenant, and that is a fact to record, not the tenant the RPC acts on.
IDENTITY_RECORDS = {".parapet.identity.v1.Principal"}


def _request_tenant_fields(contracts: Contracts, message_name: str, seen: set[str]) -> list[str]:
    """Fields named tenant_id reachable from a request message, except ones documented as output only."""
    if message_name in seen or message_name in IDENTITY_RECORDS or not message_name.startswith(".parapet."):
        return []
    seen.add(message_name)
    found = []
    for fld in contracts.messages[message_name].field:
        if fld.name in ("tenant_id", "tenant") and "Output only" not in contracts.field_comment(
            message_name, fld.name
        ):
            found.append(f"{message_name}.{fld.name}")
        if fld.type == FDP.TYPE_MESSAGE:
            found += _request_tenant_fields(contracts, fld.type_name, seen)
    return found


def test_tenant_is_never_a_request_field_except_on_admin_rpcs(contracts: Contracts) -> None:
    by_name = dict(methods(contracts))
    assert by_name.keys() >= ADMIN_RPCS_WITH_TENANT_ID, "stale allow-list"
    for name, method in by_name.items():
        offending = _request_tenant_fields(contracts, method.input_type, set())
        if name in ADMIN_RPCS_WITH_TENANT_ID:
            assert offending, f"admin RPC {name} must name the tenant it acts on"
        else:
            assert not offending, f"{name} takes the tenant from the request: {offending}"


def test_time_fields_are_timestamps_named_time(contracts: Contracts) -> None:
    checked = 0
    for message_name, _, fld in fields(contracts):
        where = f"{message_name}.{fld.name}"
        is_timestamp = fld.type_name == ".google.protobuf.Timestamp"
        assert is_timestamp == fld.name.endswith("_time"), (
            f"{where}: Timestamps, and only they, are named *_time"
        )
        assert not re.search(r"(_at|_date|_timestamp|_ts|_epoch)$", fld.name), f"{where}: name times *_time"
        if fld.type_name == ".google.protobuf.Duration":
            assert not fld.name.endswith(("_ms", "_seconds", "_secs")), (
                f"{where}: a Duration carries its own unit"
            )
        if re.search(r"(_ms|_millis|_seconds|_secs)$", fld.name):
            pytest.fail(f"{where}: use google.protobuf.Duration instead of a number with a unit")
        checked += is_timestamp
    assert checked >= 20


def test_money_is_never_a_float(contracts: Contracts) -> None:
    for message_name, _, fld in fields(contracts):
        if MONEY_WORDS.search(fld.name):
            assert fld.type not in FLOATS, f"{message_name}.{fld.name}: money must be exact integer micros"
    money = contracts.messages[".parapet.usage.v1.Money"]
    assert {(f.name, f.type) for f in money.field} == {
        ("currency_code", FDP.TYPE_STRING),
        ("amount_micros", FDP.TYPE_INT64),
    }


def test_list_rpcs_page(contracts: Contracts) -> None:
    listed = 0
    for name, method in methods(contracts):
        if not method.name.startswith(("List", "Query")) or method.input_type.endswith("QueryRequest"):
            continue
        request = {f.name: f for f in contracts.messages[method.input_type].field}
        response = {f.name: f for f in contracts.messages[method.output_type].field}
        assert request["page_size"].type == FDP.TYPE_INT32, name
        assert request["page_token"].type == FDP.TYPE_STRING, name
        assert response["next_page_token"].type == FDP.TYPE_STRING, name
        listed += 1
    assert listed >= 7


def test_mirrored_requests_have_identical_fields(contracts: Contracts) -> None:
    for left, right in MIRRORED_REQUESTS:
        # Map fields refer to entry types nested in their own message: compare those relative to the message.
        a = [
            (f.name, f.number, f.type, f.type_name.replace(left, ""), f.label)
            for f in contracts.messages[left].field
            if f.name not in STREAM_ONLY_FIELDS.get(left, set())
        ]
        b = [
            (f.name, f.number, f.type, f.type_name.replace(right, ""), f.label)
            for f in contracts.messages[right].field
        ]
        assert a == b, f"{left} and {right} drifted apart"


def test_stream_chat_response_carries_every_event(contracts: Contracts) -> None:
    response = contracts.messages[".parapet.gateway.v1.StreamChatResponse"]
    assert [o.name for o in response.oneof_decl] == ["event"]
    kinds = {f.name: f.type_name for f in response.field}
    assert kinds == {
        "text_delta": ".parapet.gateway.v1.TextDelta",
        "citation": ".parapet.retrieval.v1.Citation",
        "notice": ".parapet.gateway.v1.Notice",
        "summary": ".parapet.gateway.v1.ChatSummary",
    }
    assert all(f.HasField("oneof_index") for f in response.field)
    summary = {f.name for f in contracts.messages[".parapet.gateway.v1.ChatSummary"].field}
    assert summary >= {"request_id", "finish_reason", "usage", "cost", "routing", "cache", "prompt_template"}
    assert "parapet_duration" in summary


def test_usage_event_contract(contracts: Contracts) -> None:
    event = {f.name: f for f in contracts.messages[".parapet.usage.v1.UsageEvent"].field}
    required = {
        "event_id",
        "tenant_id",
        "user_id",
        "api_key_id",
        "feature",
        "model",
        "provider",
        "usage",
        "cost",
        "cached",
        "latency",
        "request_id",
        "occur_time",
    }
    assert required <= event.keys()
    assert event["usage"].type_name == ".parapet.usage.v1.TokenUsage"
    assert event["cost"].type_name == ".parapet.usage.v1.Money"
    usage = {f.name for f in contracts.messages[".parapet.usage.v1.TokenUsage"].field}
    assert usage == {"prompt_tokens", "completion_tokens", "cached_tokens", "estimated"}


def test_events_for_jetstream_document_their_subject(contracts: Contracts) -> None:
    subjects = {
        ".parapet.usage.v1.UsageEvent": "parapet.usage.v1.<tenant_id>",
        ".parapet.audit.v1.AuditRecord": "parapet.audit.v1.<tenant_id>",
        ".parapet.retrieval.v1.DocumentsDeletedEvent": "parapet.retrieval.v1.documents.deleted.<tenant_id>",
    }
    for message, subject in subjects.items():
        element = next(e for e in contracts.elements if e.kind == "message" and e.full_name == message)
        assert subject in " ".join(element.comment.split()), f"{message} does not document {subject}"
        ce_type = "dev." + message.lstrip(".")
        assert ce_type in element.comment, f"{message} does not document ce-type {ce_type}"
