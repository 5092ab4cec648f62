"""Fixtures for the contract tests: the protos compiled once, with their comments (SourceCodeInfo)."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2

from tests.unit.contracts.contracts_support import Contracts, compile_protos, index


@pytest.fixture(scope="session")
def descriptor_set(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorSet:
    """Every Parapet proto compiled with protoc, comments included (imports are not in the set)."""
    return compile_protos(tmp_path_factory.mktemp("protos") / "parapet.binpb", source_info=True)


@pytest.fixture(scope="session")
def contracts(descriptor_set: descriptor_pb2.FileDescriptorSet) -> Contracts:
    return index(descriptor_set)
