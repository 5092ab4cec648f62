"""``parapet audit tail|verify``: the tenant's AI interactions as they are recorded, and its hash chain.

``tail`` shows the newest interactions (QueryInteractions, newest first, reading only those it shows) and,
with ``--follow``, polls for new ones a page at a time;
``verify`` runs VerifyChain and exits 4 when the chain is broken. Both need ``audit.read``.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from parapet import clients
from parapet.audit.v1 import audit_record_pb2, audit_service_pb2, chain_pb2
from parapet.cli import connect, failures, timespec
from parapet.cli.inputs import INT64_MAX, positive_seconds, whole_number
from parapet.cli.printing import enum_label, money, print_json, timestamp, when
from parapet.inference.v1 import generation_pb2

if TYPE_CHECKING:
    from parapet.audit.v1.audit_service_pb2_grpc import AuditServiceAsyncStub

_MAX_LINES = 100_000  # what one tail may print first (read a page at a time)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    actions = connect.command_with_actions(
        subparsers,
        "audit",
        "follow the tenant's AI interactions, verify its audit hash chain",
        "The audit log of the credential's tenant (AuditService); needs `audit.read`.",
    )

    tail = actions.add_parser("tail", help="the newest interactions; --follow for new ones as they come")
    tail.add_argument(
        "-n",
        "--lines",
        type=whole_number(0, _MAX_LINES),
        default=20,
        help="how many of the newest to show first",
    )
    tail.add_argument(
        "--since", default="24h", help="look back to (default 24h; a date/time or 90m / 7d ago)"
    )
    tail.add_argument("-f", "--follow", action="store_true", help="keep polling for new interactions")
    tail.add_argument(
        "--interval", type=positive_seconds, default=2.0, help="seconds between polls with --follow"
    )
    tail.add_argument("--user", default="", help="only this user's interactions")
    tail.add_argument("--model", default="", help="only this model")
    tail.add_argument("--feature", default="", help="only this feature")
    tail.add_argument("--errors", action="store_true", help="only interactions that ended in an error")
    connect.add_arguments(tail, "audit")
    tail.set_defaults(func=failures.run, execute=tail_interactions)

    verify = actions.add_parser(
        "verify", help="verify the hash chain and signed checkpoints (exit 4: broken)"
    )
    verify.add_argument(
        "--from",
        dest="start",
        type=whole_number(0, INT64_MAX),
        default=0,
        help="first sequence (default: 1)",
    )
    verify.add_argument(
        "--to",
        dest="end",
        type=whole_number(0, INT64_MAX),
        default=0,
        help="last sequence (default: the head)",
    )
    connect.add_arguments(verify, "audit")
    verify.set_defaults(func=failures.run, execute=verify_chain)


def interaction_line(record: audit_record_pb2.AuditRecord) -> str:
    """One interaction on one line: when, request, who, which model, tokens, cost, outcome."""
    i = record.interaction
    status = "ok" if i.status_code == 0 else f"{failures.code_name(i.status_code)} {i.error_reason}"
    finish = enum_label(generation_pb2.FinishReason, i.finish_reason) if i.finish_reason else "-"
    latency = i.latency.seconds * 1000 + i.latency.nanos / 1e6
    return "  ".join(
        [
            when(record.create_time),
            f"#{record.chain.sequence}",
            i.request_id or "-",
            i.user_id or "-",
            i.model or i.requested_model or "-",
            f"{i.usage.prompt_tokens}+{i.usage.completion_tokens} tok",
            money(i.cost),
            "cached" if i.cached else "live",
            f"{latency:.0f} ms",
            finish,
            status.strip(),
        ]
    )


def _show(args: argparse.Namespace, records: Iterable[audit_record_pb2.AuditRecord]) -> None:
    for record in records:
        if args.json:
            print_json(record, lines=True)
        else:
            print(interaction_line(record), flush=True)


# Records per QueryInteractions call: a page is held in memory before it is printed, and a record may carry a
# prompt of hundreds of kilobytes.
PAGE_SIZE = 100

Position = tuple[int, int, int]  # (create_time seconds, its microseconds, chain sequence): the server's order


def _position(record: audit_record_pb2.AuditRecord) -> Position:
    # Microseconds, as the log stores create_time: records of one microsecond are ordered by sequence there.
    return (record.create_time.seconds, record.create_time.nanos // 1000, record.chain.sequence)


async def _page(
    stub: AuditServiceAsyncStub,
    metadata: connect.Metadata,
    request: audit_service_pb2.QueryInteractionsRequest,
) -> tuple[list[audit_record_pb2.AuditRecord], str]:
    """One page of ``request``: its records in the request's order, and the next page's token."""
    records: list[audit_record_pb2.AuditRecord] = []
    token = ""
    async for batch in stub.QueryInteractions(request, metadata=metadata):
        records.extend(batch.records)
        token = batch.next_page_token or token
    return records, token


async def _newest(
    stub: AuditServiceAsyncStub,
    metadata: connect.Metadata,
    flt: audit_service_pb2.InteractionFilter,
    count: int,
) -> list[audit_record_pb2.AuditRecord]:
    """The ``count`` newest records matching ``flt``, oldest first. Read newest first, so only those are read and
    sent, however many the window holds."""
    records: list[audit_record_pb2.AuditRecord] = []
    token = ""
    while len(records) < count:
        request = audit_service_pb2.QueryInteractionsRequest(
            filter=flt, page_size=min(count - len(records), PAGE_SIZE), page_token=token, newest_first=True
        )
        page, token = await _page(stub, metadata, request)
        records.extend(page)
        if not token:
            break
    records.reverse()
    return records


async def _show_after(
    args: argparse.Namespace,
    stub: AuditServiceAsyncStub,
    metadata: connect.Metadata,
    flt: audit_service_pb2.InteractionFilter,
    after: Position | None,
) -> Position | None:
    """Print the records matching ``flt`` that come after ``after`` (None: all), a page at a time; returns the
    position of the last one printed (``after`` when none)."""
    since = audit_service_pb2.InteractionFilter()
    since.CopyFrom(flt)
    if after is not None:
        # From the newest time shown (inclusive: records of that microsecond may still arrive, later in sequence).
        since.start_time.FromMicroseconds(after[0] * 1_000_000 + after[1])
    token = ""
    while True:
        request = audit_service_pb2.QueryInteractionsRequest(
            filter=since, page_size=PAGE_SIZE, page_token=token
        )
        page, token = await _page(stub, metadata, request)
        fresh = [r for r in page if after is None or _position(r) > after]
        _show(args, fresh)
        if fresh:
            after = _position(fresh[-1])
        if not token:
            return after


async def tail_interactions(args: argparse.Namespace) -> int:
    try:
        since = timespec.moment(args.since, datetime.now(UTC))
    except ValueError as exc:
        raise failures.CliError(str(exc)) from None
    flt = audit_service_pb2.InteractionFilter(
        start_time=timestamp(since),
        user_id=args.user,
        model=args.model,
        feature=args.feature,
        only_errors=args.errors,
    )
    async with connect.Session.from_args(args) as session:
        stub = session.client(clients.audit, "audit").stub
        metadata = await session.token_metadata()
        # Following needs the newest record's position even when none is to be shown (-n 0).
        wanted = max(args.lines, 1) if args.follow else args.lines
        newest = await _newest(stub, metadata, flt, wanted) if wanted else []
        _show(args, newest if args.lines else [])
        after = _position(newest[-1]) if newest else None
        while args.follow:
            await asyncio.sleep(args.interval)
            metadata = await session.token_metadata()  # renewed when the token nears its expiry
            after = await _show_after(args, stub, metadata, flt, after)
    return failures.EXIT_OK


def _chain_break(kind: int) -> str:
    return enum_label(chain_pb2.ChainBreakKind, kind)


async def verify_chain(args: argparse.Namespace) -> int:
    async with connect.Session.from_args(args) as session:
        stub = session.client(clients.audit, "audit").stub
        reply = await stub.VerifyChain(
            audit_service_pb2.VerifyChainRequest(start_sequence=args.start, end_sequence=args.end),
            metadata=await session.token_metadata(),
        )
        tenant = await session.tenant()
    if args.json:
        print_json(reply)
    elif reply.intact:
        checkpoint = reply.latest_checkpoint
        signed = (
            f"; latest signed checkpoint at #{checkpoint.sequence} ({when(checkpoint.create_time)})"
            if checkpoint.sequence
            else "; no signed checkpoint yet"
        )
        print(
            f"audit chain of tenant {tenant} intact: {reply.records_verified} records verified, "
            f"head #{reply.head_sequence}{signed}",
            flush=True,
        )
    else:
        broken = reply.first_break
        print(
            f"audit chain of tenant {tenant} BROKEN at #{broken.sequence} (record {broken.record_id or '-'}): "
            f"{_chain_break(broken.kind)}; {reply.records_verified} records verified before it, "
            f"head #{reply.head_sequence}",
            flush=True,
        )
    return failures.EXIT_OK if reply.intact else failures.EXIT_PROBLEM_FOUND
