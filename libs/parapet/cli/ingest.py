"""``parapet ingest PATH...``: files and folders into the tenant's documents, with a progress bar.

Uses retrieval's StreamIngestDocuments, so each document's result is shown as soon as it is stored. A file
that cannot be read, or that retrieval rejects, is reported on its own line and the rest go on; the exit
code is then 4 (docs/cli.md). Ingesting unchanged files again re-embeds nothing (content hash).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from parapet import clients
from parapet.cli import connect, documents, failures
from parapet.cli.printing import enum_label, print_json
from parapet.retrieval.v1 import document_pb2, retrieval_service_pb2

if TYPE_CHECKING:
    from parapet.retrieval.v1.retrieval_service_pb2_grpc import RetrievalServiceAsyncStub

Outcome = retrieval_service_pb2.DocumentOutcome


def _pair(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return key, val


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "ingest",
        help="ingest files and folders into the tenant's documents (retrieval)",
        description=f"Ingest files ({', '.join(sorted(documents.MIME_TYPES))}); folders are walked recursively "
        "(hidden entries skipped). A document's id is its path relative to the folder given (its file name "
        "when given directly), after --prefix. Needs `ingest`.",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files and folders")
    parser.add_argument(
        "--group", action="append", default=[], help="document group allowed to read them (repeatable)"
    )
    parser.add_argument(
        "--meta", action="append", type=_pair, default=[], metavar="KEY=VALUE", help="metadata (repeatable)"
    )
    parser.add_argument("--prefix", default="", help="prepended to every document id, e.g. 'handbook/'")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    connect.add_arguments(parser, "retrieval")
    parser.set_defaults(func=failures.run, execute=execute)


@dataclass
class Report:
    """What happened to each file: outcome label per document id, problems, chunks stored."""

    outcomes: Counter[str] = field(default_factory=Counter)
    chunks: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (document id or path, why)
    results: list[dict[str, object]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.problems)

    def record(
        self, response: retrieval_service_pb2.StreamIngestDocumentsResponse
    ) -> dict[str, object] | None:
        """Count one StreamIngestDocuments response; the document's entry, None for a progress message."""
        if not response.HasField("result"):
            return None
        result = response.result
        label = enum_label(Outcome, result.outcome)
        entry: dict[str, object] = {
            "document_id": result.document_id,
            "outcome": label,
            "chunk_count": result.chunk_count,
        }
        if result.outcome == Outcome.DOCUMENT_OUTCOME_REJECTED:
            why = failures.describe_status(result.error.code, result.error.message, result.error.details)
            self.problems.append((result.document_id, why))
            entry["error"] = why
        else:
            self.outcomes[label] += 1
            self.chunks += result.chunk_count
        self.results.append(entry)
        return entry

    def summary(self) -> str:
        done = sum(self.outcomes.values())
        parts = [f"{self.outcomes[name]} {name}" for name in ("created", "updated", "unchanged")]
        return f"{done} documents stored ({', '.join(parts)}), {self.failed} failed; {self.chunks} chunks"


class ProgressBar:
    """One self-redrawing line on a terminal; lines written through it appear above the bar."""

    WIDTH = 30

    def __init__(self, total: int, stream: IO[str], enabled: bool) -> None:
        self.total = max(total, 1)
        self.stream = stream
        self.enabled = enabled
        self.done = 0
        self.chunks = 0

    def draw(self) -> None:
        if not self.enabled:
            return
        filled = self.WIDTH * self.done // self.total
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} documents, {self.chunks} chunks")
        self.stream.flush()

    def write(self, line: str, stream: IO[str]) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")  # clear the bar, print the line, redraw the bar below it
        print(line, file=stream, flush=True)
        self.draw()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


Listener = Callable[[retrieval_service_pb2.StreamIngestDocumentsResponse], object]
# A file that could not be read when its turn came (removed or grown since it was vetted), and why.
ProblemListener = Callable[[documents.Candidate, str], object]


def document_requests(
    candidates: Sequence[documents.Candidate],
    *,
    groups: Sequence[str] = (),
    metadata_pairs: Sequence[tuple[str, str]] = (),
    on_problem: ProblemListener,
) -> Iterator[retrieval_service_pb2.StreamIngestDocumentsRequest]:
    """One request per candidate, each file read only when the stream takes its request: gRPC's flow
    control then keeps a few documents in memory, not a whole folder (up to 3 MiB each; all of them were
    read before the first was sent until 2026-12-06). A file that cannot be read by then goes to
    ``on_problem`` and is skipped."""
    for candidate in candidates:
        try:
            doc = documents.load(candidate)
        except ValueError as exc:
            on_problem(candidate, str(exc))
            continue
        document = document_pb2.Document(
            document_id=doc.document_id,
            title=doc.title,
            source_uri=doc.path.resolve().as_uri(),
            mime_type=doc.mime_type,
            metadata=dict(metadata_pairs),
            access_groups=groups,
        )
        yield retrieval_service_pb2.StreamIngestDocumentsRequest(document=document, content=doc.content)


async def send(
    stub: RetrievalServiceAsyncStub,
    metadata: connect.Metadata,
    requests: Iterator[retrieval_service_pb2.StreamIngestDocumentsRequest],
    *,
    listener: Listener,
) -> None:
    """Stream ``requests`` to StreamIngestDocuments; every response goes to ``listener`` as it arrives."""

    async def each() -> AsyncIterator[retrieval_service_pb2.StreamIngestDocumentsRequest]:
        for request in requests:
            yield request

    async for response in stub.StreamIngestDocuments(each(), metadata=metadata):
        listener(response)


def vet_all(candidates: Sequence[documents.Candidate], report: Report) -> list[documents.Candidate]:
    """The candidates to send, none read yet; problems (unsupported, too large, unreadable, duplicate id) go
    to ``report``."""
    vetted: list[documents.Candidate] = []
    ids: set[str] = set()
    for candidate in candidates:
        if candidate.problem:
            report.problems.append((documents.shown(candidate.path), candidate.problem))
            continue
        if candidate.document_id in ids:
            report.problems.append(
                (documents.shown(candidate.path), f"document id {candidate.document_id!r} given twice")
            )
            continue
        try:
            documents.check_size(candidate)
        except ValueError as exc:
            report.problems.append((documents.shown(candidate.path), str(exc)))
            continue
        ids.add(candidate.document_id)
        vetted.append(candidate)
    return vetted


async def execute(args: argparse.Namespace) -> int:
    report = Report()
    candidates = list(documents.find(args.paths, args.prefix))
    if not candidates:
        raise failures.CliError(f"no files to ingest (supported: {', '.join(sorted(documents.MIME_TYPES))})")
    vetted = vet_all(candidates, report)
    bar = ProgressBar(
        len(vetted), sys.stderr, enabled=not args.json and not args.no_progress and sys.stderr.isatty()
    )
    for where, why in report.problems:
        bar.write(f"failed     {where}: {why}", sys.stderr)

    def unreadable(candidate: documents.Candidate, why: str) -> None:
        where = documents.shown(candidate.path)
        report.problems.append((where, why))
        bar.done += 1
        bar.write(f"failed     {where}: {why}", sys.stderr)

    def listener(response: retrieval_service_pb2.StreamIngestDocumentsResponse) -> None:
        entry = report.record(response)
        if entry is None:
            bar.chunks = int(response.progress.chunks_stored)
        elif "error" in entry:
            bar.done += 1
            bar.write(f"rejected   {entry['document_id']}: {entry['error']}", sys.stderr)
        else:
            bar.done += 1
            if not args.json:
                line = f"{entry['outcome']:<10} {entry['document_id']} ({entry['chunk_count']} chunks)"
                bar.write(line, sys.stdout)
        bar.draw()

    if vetted:
        bar.draw()
        async with connect.Session.from_args(args) as session:
            stub = session.client(clients.retrieval, "retrieval", streaming=True).stub
            requests = document_requests(
                vetted, groups=args.group, metadata_pairs=args.meta, on_problem=unreadable
            )
            try:
                await send(stub, await session.token_metadata(), requests, listener=listener)
            finally:
                bar.finish()
    if args.json:
        problems = [{"document": where, "error": why} for where, why in report.problems]
        print_json({"results": report.results, "problems": problems, "summary": report.summary()})
    else:
        print(report.summary(), flush=True)
    return failures.EXIT_PROBLEM_FOUND if report.failed else failures.EXIT_OK
