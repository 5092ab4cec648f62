"""docs/contracts.md agrees with the code and the protos: its reason catalogue, its table of RPCs.

The reason catalogue and the reasons the code sends stay one and the same list.

Clients branch on ``ErrorInfo.reason`` (docs/contracts.md, Errors): a reason the code sends that the catalogue
does not list is a contract nobody can rely on, a listed reason no code sends is a promise nobody keeps, and a
reason listed under another code than the one it travels with misleads every client that reads both. The code
side is collected by ``reasons_support`` (``ast``, no import); the docs side is the catalogue's two tables.
"""

from __future__ import annotations

import re
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from tests.unit.contracts.contracts_support import Contracts
from tests.unit.contracts.reasons_support import CONTRACTS_MD, Documented, Raised, catalogue, raised_reasons

MethodOptions = descriptor_pb2.MethodOptions

# UPPER_SNAKE words in proto comments that are neither reasons nor enum values: examples of text, codes, headers.
NOT_REASONS_IN_PROTOS = {
    "API_KEY",  # BUDGET_SCOPE_API_KEY, shortened in Budget.scope_id's comment
    "AUDIT_REJECTED",  # a JetStream stream's name
    "EMAIL_1",  # a moderation placeholder, <EMAIL_1>
    "HASH_ONLY",  # BODY_MODE_HASH_ONLY, shortened
    "NOTHING_PRODUCED",  # a Release reason of the gateway's (ReleaseRequest.reason), no error's
    "UPPER_SNAKE",  # the spelling of reasons
}
GRPC_CODES = {
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
}


@pytest.fixture(scope="module")
def raised() -> list[Raised]:
    found = raised_reasons()
    assert len({r.reason for r in found}) > 50, "the collector no longer finds the code's reasons"
    return found


@pytest.fixture(scope="module")
def documented() -> list[Documented]:
    found = catalogue()
    assert len({d.reason for d in found}) > 50, "the catalogue tables of docs/contracts.md were not found"
    return found


def test_every_reason_the_code_sends_is_in_the_catalogue(
    raised: list[Raised], documented: list[Documented]
) -> None:
    listed = {d.reason for d in documented}
    missing: dict[str, list[str]] = defaultdict(list)
    for r in raised:
        if r.reason not in listed:
            missing[r.reason].append(r.where)
    assert not missing, "reasons sent by the code but not in docs/contracts.md's catalogue:\n" + "\n".join(
        f"{reason} ({', '.join(sorted(where)[:3])})" for reason, where in sorted(missing.items())
    )


def test_every_reason_is_listed_with_the_code_it_travels_with(
    raised: list[Raised], documented: list[Documented]
) -> None:
    codes_listed: dict[str, set[str | None]] = defaultdict(set)
    for d in documented:
        codes_listed[d.reason].add(d.code)
    wrong = sorted(
        f"{r.reason} is sent as {r.code} ({r.where}); the catalogue lists it under "
        f"{sorted(map(str, codes_listed[r.reason]))}"
        for r in raised
        if r.code is not None and r.reason in codes_listed and r.code not in codes_listed[r.reason]
    )
    assert not wrong, "\n".join(wrong)


def test_every_reason_in_the_catalogue_is_sent_somewhere(
    raised: list[Raised], documented: list[Documented]
) -> None:
    sent = {r.reason for r in raised}
    stale = sorted({f"{d.reason} ({d.row})" for d in documented if d.reason not in sent})
    assert not stale, "reasons in docs/contracts.md that no code sends:\n" + "\n".join(stale)


def test_reasons_named_in_proto_comments_exist(
    contracts: Contracts, raised: list[Raised], documented: list[Documented]
) -> None:
    """A proto comment naming a reason (``ABORTED (reason REQUEST_IN_PROGRESS)``) names one the code sends."""
    enum_values = {v.name for e in contracts.enums.values() for v in e.value}
    known = {r.reason for r in raised} | {d.reason for d in documented}
    unknown = sorted(
        f"{word} in the comment of {element.full_name}"
        for element in contracts.elements
        for word in set(re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", element.comment))
        if word not in known | enum_values | GRPC_CODES | NOT_REASONS_IN_PROTOS
        and not word.startswith("PARAPET_")
    )
    assert not unknown, "UPPER_SNAKE words in proto comments that are no reason, enum value or code:\n" + (
        "\n".join(unknown)
    )


def _rpc_table() -> dict[tuple[str, str], str]:
    """(service, RPC) -> the idempotency cell of docs/contracts.md's "Services and RPCs" table."""
    section = (
        CONTRACTS_MD.read_text(encoding="utf-8").split("## Services and RPCs", 1)[1].split("\n### ", 1)[0]
    )
    rows: dict[tuple[str, str], str] = {}
    service = ""
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4:
            continue
        named = re.match(r"`\w+\.v1\.(\w+)`", cells[0])
        if named:
            service = named.group(1)
        for rpc in re.findall(r"`(\w+)`", cells[1]):
            rows[(service, rpc)] = cells[3]
    return rows


def test_every_rpc_is_in_the_services_table_with_its_idempotency_level(contracts: Contracts) -> None:
    """The table a caller reads first names every RPC, and its NSE / IDEMPOTENT marks are the protos' options."""
    rows = _rpc_table()
    levels = {
        MethodOptions.NO_SIDE_EFFECTS: "NSE",
        MethodOptions.IDEMPOTENT: "IDEMPOTENT",
        MethodOptions.IDEMPOTENCY_UNKNOWN: "",
    }
    problems = []
    for service in contracts.services.values():
        for method in service.method:
            cell = rows.get((service.name, method.name))
            if cell is None:
                problems.append(f"{service.name}.{method.name} is not in the table")
                continue
            said = cell.split()[0] if cell.split() else ""
            said = said if said in {"NSE", "IDEMPOTENT"} else ""
            if said != levels[method.options.idempotency_level]:
                problems.append(f"{service.name}.{method.name}: the table says {cell!r}")
    assert not problems, "docs/contracts.md, Services and RPCs:\n" + "\n".join(problems)


def test_the_collector_finds_every_shape_a_reason_is_sent_in(tmp_path: Path) -> None:
    """The catalogue tests are only as good as the collector: each way the code sends a reason is found."""
    module = tmp_path / "sample.py"
    module.write_text(
        textwrap.dedent(
            """
            class ParapetError(Exception):
                code = grpc.StatusCode.UNKNOWN
                default_reason = "UNKNOWN_ERROR"

            class Unavailable(ParapetError):
                code = grpc.StatusCode.UNAVAILABLE
                default_reason = "DEPENDENCY_DOWN"

            class Blocked(Unavailable):
                def __init__(self) -> None:
                    super().__init__("blocked", reason="VIA_SUPER")

            class Rejected:
                def __init__(self, reason: str, message: str) -> None:
                    self.reason = reason

                def to_error(self) -> Unavailable:
                    return Unavailable(self.message, reason=self.reason)

            REASONS = {"a": "FROM_A_TABLE"}

            def rejected(reason: str, message: str) -> Unavailable:
                return Unavailable(message, reason=reason)

            def invalid(field: str, reason: str = "BY_DEFAULT") -> Unavailable:
                return Unavailable(field, reason=reason)

            def refusal() -> tuple[str, str]:
                return "IN_A_PAIR", "message"

            def run() -> None:
                Unavailable("down")
                Unavailable("down", reason="BY_KEYWORD")
                rejected("BY_POSITION", "message")
                Rejected("BY_CLASS_POSITION", "message")
                invalid("field", reason="BY_KEYWORD_TO_HELPER")
                log.info("x", extra={"reason": "NOT_A_REASON"})
                flag = reason == "ALSO_NOT_SENT"
            """
        ),
        encoding="utf-8",
    )
    found = {(r.reason, r.code) for r in raised_reasons([module])}
    assert found == {
        ("DEPENDENCY_DOWN", "UNAVAILABLE"),
        ("BY_KEYWORD", "UNAVAILABLE"),
        ("VIA_SUPER", "UNAVAILABLE"),
        ("BY_POSITION", "UNAVAILABLE"),
        ("BY_CLASS_POSITION", "UNAVAILABLE"),
        ("BY_DEFAULT", "UNAVAILABLE"),
        ("BY_KEYWORD_TO_HELPER", "UNAVAILABLE"),
        ("FROM_A_TABLE", None),
        ("IN_A_PAIR", None),
    }
