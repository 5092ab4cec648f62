"""``parapet usage``: the tenant's tokens, requests and cost over a period, from metering (and billing).

Metering's ledger is exact and current (settled requests, budgets with their reservations); billing's
invoice preview (``--invoice``) is what the reference billing consumer rolled up from the usage events,
so comparing both shows whether billing has caught up.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

from parapet import clients
from parapet.billing.v1 import billing_service_pb2
from parapet.cli import connect, failures, timespec
from parapet.cli.printing import as_dict, money, print_json, print_table, timestamp, when
from parapet.metering.v1 import metering_service_pb2, usage_report_pb2

Dimension = usage_report_pb2.UsageDimension
DIMENSIONS = {
    "day": Dimension.USAGE_DIMENSION_DAY,
    "month": Dimension.USAGE_DIMENSION_MONTH,
    "model": Dimension.USAGE_DIMENSION_MODEL,
    "feature": Dimension.USAGE_DIMENSION_FEATURE,
    "user": Dimension.USAGE_DIMENSION_USER,
    "key": Dimension.USAGE_DIMENSION_API_KEY,
}


def _dimensions(value: str) -> list[str]:
    names = [part.strip() for part in value.split(",") if part.strip()]
    unknown = [n for n in names if n not in DIMENSIONS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown dimension {', '.join(unknown)}; valid: {', '.join(DIMENSIONS)}"
        )
    return names


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "usage",
        help="tokens, requests and cost of the tenant over a period (metering, billing)",
        description="Usage of the credential's tenant from metering's GetUsage, grouped as asked, with the "
        "state of its budgets; --invoice adds billing's invoice preview. Needs `usage.read`.",
    )
    parser.add_argument(
        "--since",
        default="month",
        help="start: `month` (default, this UTC calendar month), `today`, a date/time, or 7d / 24h ago",
    )
    parser.add_argument("--until", default=None, help="end, exclusive (default: now)")
    parser.add_argument(
        "--by",
        type=_dimensions,
        default=["model", "feature"],
        metavar="DIM,DIM",
        help=f"group by (default: model,feature; of: {', '.join(DIMENSIONS)}; '' = one total)",
    )
    parser.add_argument("--user", default="", help="only this user's usage")
    parser.add_argument("--model", default="", help="only this model")
    parser.add_argument("--feature", default="", help="only this feature")
    parser.add_argument(
        "--invoice",
        action="store_true",
        help="also billing's invoice preview of the month (or of whole days)",
    )
    connect.add_arguments(parser, "metering")
    parser.set_defaults(func=failures.run, execute=execute)
    # Optional, so that `parapet usage [--since ...]` stays the report it always was.
    actions = parser.add_subparsers(dest="usage_action", metavar="ACTION")
    replay = actions.add_parser(
        "replay",
        help="publish usage events again after NATS lost its store (platform operators)",
        description="Marks the usage events of every tenant settled since --since, which metering's relay "
        "had already published, for publishing again (metering's ReplayUsageEvents): the recovery when NATS "
        "lost its JetStream store before billing consumed them. Billing counts each event once however often "
        "it is replayed. Reaches back only as far as metering's outbox keeps sent events "
        "(PARAPET_OUTBOX_RETENTION_SECONDS, a day by default). Needs a platform operator's key.",
    )
    replay.add_argument(
        "--since", required=True, help="settled at or after: a date/time, or 90m / 24h ago (required)"
    )
    connect.add_arguments(replay, "metering")
    replay.set_defaults(func=failures.run, execute=execute_replay)


def _window(args: argparse.Namespace, now: datetime) -> tuple[datetime, datetime]:
    try:
        start = timespec.period(args.since, now)
        end = timespec.moment(args.until, now) if args.until else now
    except ValueError as exc:
        raise failures.CliError(str(exc)) from None
    if start >= end:
        raise failures.CliError(
            f"the period is empty: {start:%Y-%m-%d %H:%M} is not before {end:%Y-%m-%d %H:%M}"
        )
    return start, end


def _aggregate_row(by: list[str], aggregate: usage_report_pb2.UsageAggregate) -> list[str]:
    cells = {
        "day": when(aggregate.bucket_start_time)[:10],
        "month": when(aggregate.bucket_start_time)[:7],
        "model": aggregate.model or "-",
        "feature": aggregate.feature or "-",
        "user": aggregate.user_id or "-",
        "key": aggregate.api_key_id or "-",
    }
    usage = aggregate.usage
    return [
        *(cells[name] for name in by),
        str(aggregate.request_count),
        str(aggregate.cached_request_count),
        str(usage.prompt_tokens),
        str(usage.completion_tokens),
        money(aggregate.cost) + (" (est.)" if usage.estimated else ""),
    ]


def _invoice_window(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """Billing bills whole UTC days: every day the period touches."""
    first, last = timespec.start_of_day(start), timespec.start_of_day(end)
    return first, last if last == end else last + timedelta(days=1)


async def execute(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    start, end = _window(args, now)
    request = metering_service_pb2.GetUsageRequest(
        start_time=timestamp(start),
        end_time=timestamp(end),
        group_by=[DIMENSIONS[name] for name in args.by],
        user_id=args.user,
        model=args.model,
        feature=args.feature,
        page_size=1000,
    )
    async with connect.Session.from_args(args) as session:
        metering = session.client(clients.metering, "metering").stub
        metadata = await session.token_metadata()
        aggregates: list[usage_report_pb2.UsageAggregate] = []
        while True:
            reply = await metering.GetUsage(request, metadata=metadata)
            aggregates.extend(reply.aggregates)
            if not reply.next_page_token:
                break
            request.page_token = reply.next_page_token
        invoice = None
        if args.invoice:
            billing = session.client(clients.billing, "billing").stub
            first, last = _invoice_window(start, end)
            invoice = await billing.GetInvoicePreview(
                billing_service_pb2.GetInvoicePreviewRequest(
                    start_time=timestamp(first), end_time=timestamp(last)
                ),
                metadata=metadata,
            )
        tenant = await session.tenant()
    if args.json:
        data = {
            "start_time": start.isoformat(),
            "end_time": end.isoformat(),
            "aggregates": [as_dict(a) for a in aggregates],
            "total": as_dict(reply.total),
            "budgets": [as_dict(b) for b in reply.budgets],
        }
        if invoice is not None:
            data["invoice_preview"] = as_dict(invoice.invoice_preview)
        print_json(data)
        return failures.EXIT_OK
    print(f"usage of tenant {tenant} from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC", flush=True)
    header = [name.upper() for name in args.by] + [
        "REQUESTS",
        "CACHED",
        "PROMPT_TOKENS",
        "COMPLETION_TOKENS",
        "COST",
    ]
    rows = [_aggregate_row(args.by, a) for a in aggregates]
    if args.by:
        rows.append(["total", *["" for _ in args.by[1:]], *_aggregate_row([], reply.total)])
    else:
        rows.append(_aggregate_row([], reply.total))
    print_table(header, rows)
    if reply.budgets:
        print()
        budget_rows = [
            [
                b.budget_id,
                b.scope_id,
                money(b.used_cost) if b.limit_cost.currency_code else str(b.used_tokens),
                money(b.limit_cost) if b.limit_cost.currency_code else str(b.limit_tokens),
                f"{b.used_percent}%" + (" (soft limit reached)" if b.soft_limit_reached else ""),
                when(b.window_end_time),
            ]
            for b in reply.budgets
        ]
        print_table(["BUDGET", "SCOPE", "USED", "LIMIT", "USED%", "RESETS"], budget_rows)
    if invoice is not None:
        preview = invoice.invoice_preview
        print(
            f"\ninvoice preview (billing) {when(preview.start_time)[:10]} to {when(preview.end_time)[:10]}, "
            f"{preview.event_count} events, as of {when(preview.as_of_time)}"
        )
        lines = [
            [
                line.model,
                line.feature or "-",
                str(line.request_count),
                str(line.prompt_tokens),
                str(line.completion_tokens),
                money(line.cost),
            ]
            for line in preview.lines
        ]
        lines.append(["total", "", "", "", "", money(preview.total)])
        print_table(["MODEL", "FEATURE", "REQUESTS", "PROMPT_TOKENS", "COMPLETION_TOKENS", "COST"], lines)
    return failures.EXIT_OK


async def execute_replay(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    try:
        start = timespec.moment(args.since, now)
    except ValueError as exc:
        raise failures.CliError(str(exc), failures.EXIT_USAGE) from None
    request = metering_service_pb2.ReplayUsageEventsRequest(start_time=timestamp(start))
    async with connect.Session.from_args(args, operator=True) as session:
        # No call timeout: a day of events is marked in batches that can take minutes; cut short, the call
        # keeps what it marked and running it again finishes it.
        metering = session.client(clients.metering, "metering", streaming=True).stub
        reply = await metering.ReplayUsageEvents(request, metadata=await session.token_metadata())
    if args.json:
        print_json({"start_time": start.isoformat(), **as_dict(reply)})
        return failures.EXIT_OK
    print(
        f"{reply.event_count} usage events settled since {start:%Y-%m-%d %H:%M:%S} UTC (every tenant) marked "
        f"for publishing again; replays can reach back to {when(reply.earliest_start_time)}"
    )
    return failures.EXIT_OK
