"""Helpers for the contract tests: compile every proto with protoc and index its elements and comments."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc  # type: ignore[import-untyped]  # grpcio-tools ships no type information

ROOT = Path(__file__).resolve().parents[3]
PROTO_ROOT = ROOT / "protos"
WELL_KNOWN = Path(protoc.__file__).resolve().parent / "_proto"

# SourceCodeInfo path components (field numbers in descriptor.proto).
FILE_MESSAGE = 4
FILE_ENUM = 5
FILE_SERVICE = 6
MESSAGE_FIELD = 2
MESSAGE_NESTED = 3
MESSAGE_ENUM = 4
MESSAGE_ONEOF = 8
ENUM_VALUE = 2
SERVICE_METHOD = 2


@dataclass
class Element:
    """One commentable element of a proto file, with its full name and leading comment."""

    kind: str
    full_name: str
    comment: str
    file: str


@dataclass
class Contracts:
    """Every Parapet proto file compiled, indexed for the tests."""

    files: dict[str, descriptor_pb2.FileDescriptorProto]
    messages: dict[str, descriptor_pb2.DescriptorProto] = field(default_factory=dict)
    enums: dict[str, descriptor_pb2.EnumDescriptorProto] = field(default_factory=dict)
    services: dict[str, descriptor_pb2.ServiceDescriptorProto] = field(default_factory=dict)
    elements: list[Element] = field(default_factory=list)
    comments: dict[str, str] = field(default_factory=dict)

    def field_comment(self, message_name: str, field_name: str) -> str:
        return self.comments[f"{message_name}.{field_name}"]


def proto_paths() -> list[str]:
    return sorted(p.relative_to(PROTO_ROOT).as_posix() for p in (PROTO_ROOT / "parapet").rglob("*.proto"))


def compile_protos(out: Path, *, source_info: bool) -> descriptor_pb2.FileDescriptorSet:
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={WELL_KNOWN}",
        f"--descriptor_set_out={out}",
        *(["--include_source_info"] if source_info else []),
        *proto_paths(),
    ]
    code = protoc.main(args)
    assert code == 0, f"protoc failed with exit code {code}"
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _comment(locations: dict[tuple[int, ...], str], path: tuple[int, ...]) -> str:
    return locations.get(path, "").strip()


def _index_message(
    contracts: Contracts,
    locations: dict[tuple[int, ...], str],
    file_name: str,
    scope: str,
    message: descriptor_pb2.DescriptorProto,
    path: tuple[int, ...],
) -> None:
    full = f"{scope}.{message.name}"
    contracts.messages[full] = message
    if not message.options.map_entry:
        contracts.elements.append(Element("message", full, _comment(locations, path), file_name))
    for i, fld in enumerate(message.field):
        text = _comment(locations, (*path, MESSAGE_FIELD, i))
        contracts.comments[f"{full}.{fld.name}"] = text
        if not message.options.map_entry:
            contracts.elements.append(Element("field", f"{full}.{fld.name}", text, file_name))
    for i, oneof in enumerate(message.oneof_decl):
        if oneof.name.startswith("_"):  # synthetic oneof of a proto3 `optional` field
            continue
        text = _comment(locations, (*path, MESSAGE_ONEOF, i))
        contracts.elements.append(Element("oneof", f"{full}.{oneof.name}", text, file_name))
    for i, nested in enumerate(message.nested_type):
        _index_message(contracts, locations, file_name, full, nested, (*path, MESSAGE_NESTED, i))
    for i, enum in enumerate(message.enum_type):
        _index_enum(contracts, locations, file_name, full, enum, (*path, MESSAGE_ENUM, i))


def _index_enum(
    contracts: Contracts,
    locations: dict[tuple[int, ...], str],
    file_name: str,
    scope: str,
    enum: descriptor_pb2.EnumDescriptorProto,
    path: tuple[int, ...],
) -> None:
    full = f"{scope}.{enum.name}"
    contracts.enums[full] = enum
    contracts.elements.append(Element("enum", full, _comment(locations, path), file_name))
    for i, value in enumerate(enum.value):
        text = _comment(locations, (*path, ENUM_VALUE, i))
        contracts.elements.append(Element("enum value", f"{full}.{value.name}", text, file_name))


def index(fds: descriptor_pb2.FileDescriptorSet) -> Contracts:
    contracts = Contracts(files={f.name: f for f in fds.file})
    for file in fds.file:
        locations = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location}
        scope = "." + file.package
        for i, message in enumerate(file.message_type):
            _index_message(contracts, locations, file.name, scope, message, (FILE_MESSAGE, i))
        for i, enum in enumerate(file.enum_type):
            _index_enum(contracts, locations, file.name, scope, enum, (FILE_ENUM, i))
        for i, service in enumerate(file.service):
            full = f"{scope}.{service.name}"
            contracts.services[full] = service
            contracts.elements.append(
                Element("service", full, _comment(locations, (FILE_SERVICE, i)), file.name)
            )
            for j, method in enumerate(service.method):
                text = _comment(locations, (FILE_SERVICE, i, SERVICE_METHOD, j))
                contracts.comments[f"{full}.{method.name}"] = text
                contracts.elements.append(Element("rpc", f"{full}.{method.name}", text, file.name))
    return contracts
