"""The people-facing commands' pure parts: arguments, credentials, files to ingest, times, output lines."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2

from parapet.auth.v1 import tenant_pb2
from parapet.cli import chat, connect, documents, failures, ingest, policy, timespec
from parapet.cli.layout import HomeLayout, PortLayout
from parapet.cli.main import build_parser
from parapet.cli.printing import enum_label, money
from parapet.gateway.v1 import chat_pb2
from parapet.inference.v1 import message_pb2
from parapet.retrieval.v1 import citation_pb2, retrieval_service_pb2
from parapet.usage.v1 import money_pb2


def test_every_people_command_parses_with_its_connection_flags() -> None:
    parser = build_parser()
    for argv in (
        ["chat", "hello", "world"],
        ["ingest", "docs"],
        ["tenants", "list"],
        ["keys", "create", "--user", "bot"],
        ["policy", "show"],
        ["usage"],
        ["audit", "tail", "-f"],
        ["audit", "verify"],
    ):
        args = parser.parse_args([*argv, "--address", "h:1", "--api-key", "k", "--base-port", "40000"])
        assert args.address == "h:1" and args.api_key == "k" and args.base_port == 40000
        assert args.func is not None and args.execute is not None


def test_chat_defaults_and_request() -> None:
    args = build_parser().parse_args(["chat", "What", "is", "new?", "--no-retrieval", "--model", "fast"])
    request = chat.build_request(args, [chat.message(message_pb2.ROLE_USER, "What is new?")])
    assert request.model == "fast" and request.feature == "cli"
    assert request.retrieval.mode == chat_pb2.RETRIEVAL_MODE_DISABLED
    assert not request.HasField("generation")
    assert build_parser().parse_args(["chat"]).question == []


def test_usage_dimensions_are_checked() -> None:
    assert build_parser().parse_args(["usage", "--by", "day,model"]).by == ["day", "model"]
    assert build_parser().parse_args(["usage"]).by == ["model", "feature"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["usage", "--by", "colour"])


def key(name: str) -> str:
    """A well-formed key (the CLI refuses any other before a call) that says where it came from."""
    return f"pk_{name[:12]:a<12}_{'b' * 43}"


def test_credentials_in_their_documented_order(tmp_path: Path) -> None:
    home = HomeLayout(tmp_path)
    with pytest.raises(failures.CliError) as missing:
        connect.find_credential(None, {}, home)
    assert missing.value.code == failures.EXIT_USAGE and "--api-key" in str(missing.value)
    home.identity_dir.mkdir()
    (home.identity_dir / "operator.key").write_text(key("operator") + "\n")
    assert connect.find_credential(None, {}, home).api_key == key("operator")
    (home.identity_dir / "demo.key").write_text(key("demo") + "\n")
    assert connect.find_credential(None, {}, home).api_key == key("demo")
    # Platform commands skip the demo key: no tenant's key can manage tenants.
    assert connect.find_credential(None, {}, home, operator=True).api_key == key("operator")
    env = {"PARAPET_API_KEY": key("env")}
    assert connect.find_credential(None, env, home).source == "$PARAPET_API_KEY"
    assert connect.find_credential(key("flag"), env, home).api_key == key("flag")


def test_service_addresses() -> None:
    ports = PortLayout(40000)
    assert connect.service_address("audit", None, {}, ports) == "127.0.0.1:40006"
    assert connect.service_address("audit", None, {"PARAPET_AUDIT_ADDRESS": "a:1"}, ports) == "a:1"
    assert connect.service_address("audit", "b:2", {"PARAPET_AUDIT_ADDRESS": "a:1"}, ports) == "b:2"


def test_files_found_by_extension_with_stable_ids(tmp_path: Path) -> None:
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / ".git").mkdir()
    for name in ("a.md", "sub/b.TXT", "sub/c.html", "d.pdf", ".git/e.md"):
        (tmp_path / "docs" / name).write_text("x")
    (tmp_path / "single.markdown").write_text("x")
    (tmp_path / "data.csv").write_text("x")
    found = list(
        documents.find([tmp_path / "docs", tmp_path / "single.markdown", tmp_path / "data.csv"], "p/")
    )
    assert [(c.document_id, c.mime_type, bool(c.problem)) for c in found] == [
        ("p/a.md", "text/markdown", False),
        ("p/sub/b.TXT", "text/plain", False),
        ("p/sub/c.html", "text/html", False),
        ("p/single.markdown", "text/markdown", False),
        ("p/data.csv", "", True),
    ]


def test_titles() -> None:
    md = "intro line\n# The Title #\n\n## Later"
    assert documents.title_of(Path("x.md"), "text/markdown", md) == "The Title"
    assert documents.title_of(Path("my_notes-v2.md"), "text/markdown", "no heading") == "my notes v2"
    assert documents.title_of(Path("x.txt"), "text/plain", "\n  First line  \nmore") == "First line"
    assert documents.title_of(Path("x.html"), "text/html", "<title>T</title>") == ""


def test_a_binary_file_gets_no_title_made_of_its_bytes(tmp_path: Path) -> None:
    # A binary file named .txt (or text in UTF-16) had its first "line" of bytes sent as the title, and
    # retrieval rejected it for "document.title contains U+0000 (NUL)": a person looked for a title they never
    # gave. The file name is the title; retrieval then says what is wrong with the content itself.
    binary = tmp_path / "backup_2024.txt"
    binary.write_bytes(bytes(range(256)) * 4)
    utf16 = tmp_path / "notes.txt"
    utf16.write_text("Quarterly notes\nmore", encoding="utf-16")
    heading = tmp_path / "odd.md"
    heading.write_bytes(b"# A\x00B\x1b[31m title\n")
    family = tmp_path / "family.md"
    family.write_text("# Family \U0001f468\u200d\U0001f469\u200d\U0001f467 trip\n")  # joiners are no bytes
    for path, title in (
        (binary, "backup 2024"),
        (utf16, "notes"),
        (heading, "odd"),
        (family, "Family \U0001f468\u200d\U0001f469\u200d\U0001f467 trip"),
    ):
        mime = documents.MIME_TYPES[path.suffix]
        assert documents.load(documents.Candidate(path, path.name, mime)).title == title


def test_too_large_and_duplicate_files_are_reported_not_sent(tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * (documents.MAX_BYTES + 1))
    one = tmp_path / "one" / "same.md"
    two = tmp_path / "two" / "same.md"
    for path in (one, two):
        path.parent.mkdir()
        path.write_text("# Same\n")
    report = ingest.Report()
    vetted = ingest.vet_all(list(documents.find([big, one, two])), report)
    assert [d.document_id for d in vetted] == ["same.md"]
    assert report.problems[0][1].startswith("too large")
    assert "given twice" in report.problems[1][1]


def test_each_file_is_read_only_when_the_stream_takes_its_request(tmp_path: Path) -> None:
    """A folder's documents are never all in memory: a file is read when its request is taken, so one
    removed or grown past the limit after vetting, before its turn, is reported then and skipped."""
    names = ["a.md", "b.md", "c.md", "d.md"]
    for name in names:
        (tmp_path / name).write_text(f"# {name}\n")
    report = ingest.Report()
    vetted = ingest.vet_all(list(documents.find([tmp_path])), report)
    assert [c.document_id for c in vetted] == names and not report.problems
    late: list[tuple[str, str]] = []
    requests = ingest.document_requests(vetted, on_problem=lambda c, why: late.append((c.document_id, why)))
    first = next(requests)
    (tmp_path / "b.md").unlink()
    (tmp_path / "c.md").write_bytes(b"x" * (documents.MAX_BYTES + 1))
    rest = list(requests)
    assert [r.document.document_id for r in [first, *rest]] == ["a.md", "d.md"]
    assert [(name, why.split(" (")[0].split(":")[0]) for name, why in late] == [
        ("b.md", "cannot read"),
        ("c.md", "too large"),
    ]


def test_ingest_report_counts_results_and_rejections() -> None:
    report = ingest.Report()
    Response = retrieval_service_pb2.StreamIngestDocumentsResponse
    outcome = retrieval_service_pb2.DocumentOutcome
    assert report.record(Response(progress=retrieval_service_pb2.IngestProgress(chunks_stored=3))) is None
    report.record(
        Response(
            result=retrieval_service_pb2.DocumentResult(
                document_id="a", outcome=outcome.DOCUMENT_OUTCOME_CREATED, chunk_count=3
            )
        )
    )
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason="DOCUMENT_EMPTY", domain="parapet.dev"))
    rejected = retrieval_service_pb2.DocumentResult(
        document_id="b", outcome=outcome.DOCUMENT_OUTCOME_REJECTED
    )
    rejected.error.code = 3
    rejected.error.message = "the document has no text"
    rejected.error.details.append(info)
    entry = report.record(Response(result=rejected))
    assert entry is not None
    assert entry["error"] == "INVALID_ARGUMENT: the document has no text (reason DOCUMENT_EMPTY)"
    assert report.summary() == "1 documents stored (1 created, 0 updated, 0 unchanged), 1 failed; 3 chunks"


def test_status_line_carries_reason_fields_and_retry() -> None:
    details = []
    for message in (
        error_details_pb2.ErrorInfo(reason="POLICY_INVALID"),
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field="roles[0]", description="empty")
            ]
        ),
        error_details_pb2.RetryInfo(retry_delay={"seconds": 2}),
    ):
        packed = any_pb2.Any()
        packed.Pack(message)
        details.append(packed)
    line = failures.describe_status(3, "the policy is invalid", details)
    assert (
        line
        == "INVALID_ARGUMENT: the policy is invalid (reason POLICY_INVALID); roles[0]: empty; retry after 2 s"
    )


def test_times() -> None:
    now = datetime(2025, 3, 17, 10, 30, tzinfo=UTC)
    assert timespec.moment("90m", now) == datetime(2025, 3, 17, 9, 0, tzinfo=UTC)
    assert timespec.moment("2025-01-31", now) == datetime(2025, 1, 31, tzinfo=UTC)
    assert timespec.moment("2025-01-31T09:30:00Z", now) == datetime(2025, 1, 31, 9, 30, tzinfo=UTC)
    assert timespec.period("month", now) == datetime(2025, 3, 1, tzinfo=UTC)
    assert timespec.period("today", now) == datetime(2025, 3, 17, tzinfo=UTC)
    with pytest.raises(ValueError, match="not a time"):
        timespec.moment("last tuesday", now)


def test_output_helpers() -> None:
    assert enum_label(tenant_pb2.TenantState, tenant_pb2.TENANT_STATE_DISABLED) == "disabled"
    assert money(money_pb2.Money(currency_code="USD", amount_micros=1250)) == "0.001250 USD"
    assert money(money_pb2.Money()) == "-"
    cites = [citation_pb2.Citation(document_id=d, title=d.upper()) for d in ("a", "b", "a")]
    assert [c.document_id for c in chat.distinct_documents(cites)] == ["a", "b"]
    assert chat.citation_line(1, cites[0]) == "[1] A (a)"


def test_policy_flags_edit_only_what_they_name(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["policy", "set", "--allow-model", "a", "--allow-model", "b", "--max-tokens", "9"]
    )
    edited = policy.read_policy(
        _write(tmp_path / "p.json", '{"models": {"default_model": "a"}, "version": "4"}')
    )
    assert policy.apply_flags(edited, args)
    assert list(edited.models.allowed_models) == ["a", "b"] and edited.models.max_tokens_per_request == 9
    assert edited.models.default_model == "a" and edited.version == 4
    assert not policy.apply_flags(edited, build_parser().parse_args(["policy", "set"]))
    with pytest.raises(failures.CliError, match="no field named"):
        policy.read_policy(_write(tmp_path / "bad.json", '{"modles": {}}'))
    with pytest.raises(failures.CliError, match="one policy object"):
        policy.read_policy(_write(tmp_path / "list.json", "[]"))
    yaml_file = _write(tmp_path / "p.yaml", "models:\n  allowed_models: [local]\n")
    assert list(policy.read_policy(yaml_file).models.allowed_models) == ["local"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


async def test_run_async_turns_cli_errors_into_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    async def boom(_: argparse.Namespace) -> int:
        raise failures.CliError("nothing to do", failures.EXIT_USAGE)

    code = await failures.run_async(argparse.Namespace(command="keys", execute=boom))
    assert code == failures.EXIT_USAGE
    assert capsys.readouterr().err == "parapet keys: nothing to do\n"
