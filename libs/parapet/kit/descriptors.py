"""The published services, read from the generated code: one place that enumerates the contracts."""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Iterator
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

import parapet

# Calls of these methods may safely run twice (documented per RPC in the protos).
_SAFE_TO_REPEAT = frozenset(
    {descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS, descriptor_pb2.MethodOptions.IDEMPOTENT}
)


def published_services() -> Iterator[ServiceDescriptor]:
    """Every service declared in ``parapet.<area>.v1`` generated code."""
    root = Path(parapet.__path__[0])
    for area in sorted(p.name for p in root.iterdir() if (p / "v1" / "__init__.py").exists()):
        package = importlib.import_module(f"parapet.{area}.v1")
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
            if info.name.endswith("_pb2"):
                module = importlib.import_module(f"parapet.{area}.v1.{info.name}")
                yield from module.DESCRIPTOR.services_by_name.values()


def method_path(method: MethodDescriptor) -> str:
    """``/package.Service/Method``, as gRPC names a method on the wire."""
    return f"/{method.containing_service.full_name}/{method.name}"


def is_safe_to_repeat(method: MethodDescriptor) -> bool:
    """True for RPCs the contract marks NO_SIDE_EFFECTS or IDEMPOTENT (their ``idempotency_level``)."""
    return method.GetOptions().idempotency_level in _SAFE_TO_REPEAT


@functools.cache
def safe_to_repeat_paths() -> frozenset[str]:
    """Paths of every published method a client may retry."""
    return frozenset(
        method_path(method)
        for service in published_services()
        for method in service.methods
        if is_safe_to_repeat(method)
    )
