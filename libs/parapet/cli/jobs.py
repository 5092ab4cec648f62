"""``parapet jobs submit|list|show|watch|results|cancel|delete``: batches of questions run later by the gateway.

Each question of a submitted file is its own governed chat (screened, budgeted, settled, audited), run by the
gateway's job workers; the job and its results stay until its ``expire_time`` or ``delete``. Like ``chat``, these
talk to the gateway with the credential's API key (jobs act for the key's user later).
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from parapet import clients
from parapet.cli import connect, failures, inputs
from parapet.cli.chat import build_request, message
from parapet.cli.printing import as_dict, enum_label, money, print_json, print_table, when
from parapet.gateway.v1 import chat_service_pb2, job_pb2
from parapet.gateway.v1 import job_service_pb2 as pb
from parapet.inference.v1 import message_pb2
from parapet.status.v1 import status_pb2

if TYPE_CHECKING:
    from parapet.gateway.v1.job_service_pb2_grpc import JobServiceAsyncStub

_TERMINAL = frozenset({job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED})


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    actions = connect.command_with_actions(
        subparsers,
        "jobs",
        "submit batches of questions and read their answers later",
        "Async jobs through the gateway's JobService with the credential's API key (submitting needs "
        "`chat`). A caller sees its own jobs; a tenant admin sees everyone's.",
    )

    submit = actions.add_parser("submit", help="submit a file of questions, one per line ('-': stdin)")
    submit.add_argument(
        "file", metavar="FILE", type=Path, help="text file, one question per non-empty line ('-': stdin)"
    )
    submit.add_argument("--key", default="", help="idempotency key (default: a new one, so a new job)")
    submit.add_argument("--model", default="", help="model or alias (default: the tenant policy's default)")
    submit.add_argument("--no-retrieval", action="store_true", help="answer without the tenant's documents")
    submit.add_argument("--feature", default="cli-jobs", help="product feature for budgets and usage")
    submit.add_argument(
        "--max-tokens",
        type=inputs.whole_number(0, inputs.INT32_MAX),
        default=0,
        help="cap on each answer's tokens (0: default)",
    )
    submit.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="label for usage and audit"
    )
    submit.add_argument("--wait", action="store_true", help="follow the job until it ends")
    submit.set_defaults(execute=_submit)

    listing = actions.add_parser("list", help="list jobs, newest first")
    who = listing.add_mutually_exclusive_group()
    who.add_argument("--user", default="", help="another user's jobs (needs admin)")
    who.add_argument("--all-users", action="store_true", help="every user's jobs (needs admin)")
    listing.add_argument(
        "--state",
        action="append",
        default=[],
        choices=[enum_label(job_pb2.JobState, s) for s in _states()],
        help="only jobs in this state (repeatable)",
    )
    listing.add_argument("--limit", type=int, default=50, help="at most this many jobs (default 50)")
    listing.set_defaults(execute=_list)

    for name, help_text, execute in (
        ("show", "a job's state, progress, usage and cost", _show_one),
        ("watch", "follow a job's progress until it ends", _watch),
        ("results", "the answers of a job's finished items, in item order", _results),
        ("cancel", "cancel a queued or running job (running items finish)", _cancel),
        ("delete", "delete a finished job and its results now", _delete),
    ):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("job_id", metavar="JOB_ID")
        action.set_defaults(execute=execute)

    for action in actions.choices.values():
        connect.add_arguments(action, "gateway")
        action.set_defaults(func=failures.run)


def _states() -> list[job_pb2.JobState.ValueType]:
    return [s for s in job_pb2.JobState.values() if s != job_pb2.JOB_STATE_UNSPECIFIED]


def _questions(path: Path) -> list[str]:
    if str(path) == "-":
        try:
            # Bytes, decoded strictly: a text stdin may let undecodable bytes through as surrogates, which
            # only fail later, when the request is serialized.
            text = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError:
            raise failures.CliError("the questions on stdin are not UTF-8 text") from None
    else:
        text = inputs.read_text(path, "questions file")
    questions = [line.strip() for line in text.splitlines() if line.strip()]
    if not questions:
        raise failures.CliError(f"{path} holds no question")
    return questions


def _labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise failures.CliError(f"--label takes KEY=VALUE, not {pair!r}")
        labels[key] = value
    return labels


def _summary_row(job: job_pb2.Job) -> list[str]:
    progress = job.progress
    return [
        job.job_id,
        job.user_id or "-",
        enum_label(job_pb2.JobState, job.state),
        f"{progress.succeeded_items + progress.failed_items}/{progress.total_items}",
        str(progress.failed_items),
        str(job.usage.prompt_tokens + job.usage.completion_tokens),
        money(job.cost),
        when(job.create_time),
        when(job.expire_time),
    ]


_HEADER = ["JOB_ID", "USER", "STATE", "DONE", "FAILED", "TOKENS", "COST", "CREATED", "EXPIRES"]


def _print_jobs(args: argparse.Namespace, jobs: list[job_pb2.Job]) -> None:
    if args.json:
        print_json({"jobs": [as_dict(job) for job in jobs]})
        return
    print_table(_HEADER, [_summary_row(job) for job in jobs], empty="(no jobs)")
    for job in jobs:
        if job.HasField("error"):
            failures.say(
                f"{job.job_id}: {failures.describe_status(job.error.code, job.error.message, job.error.details)}"
            )


def _status_line(status: status_pb2.Status) -> str:
    return failures.describe_status(status.code, status.message, status.details)


def _stub(session: connect.Session, *, streaming: bool = False) -> JobServiceAsyncStub:
    return session.client(clients.jobs, "gateway", streaming=streaming).stub


async def _submit(args: argparse.Namespace) -> int:
    questions = _questions(args.file)
    labels = _labels(args.label)
    items = [
        build_request(args, [message(message_pb2.ROLE_USER, question)], chat_service_pb2.ChatRequest)
        for question in questions
    ]
    request = pb.SubmitJobRequest(
        idempotency_key=args.key or f"cli-{uuid.uuid4()}",
        chat_batch=job_pb2.ChatBatch(requests=items),
        metadata=labels,
    )
    async with connect.Session.from_args(args) as session:
        reply = await _stub(session).SubmitJob(request, metadata=session.key_metadata())
        job = reply.job
        if not args.json:
            failures.say(f"job {job.job_id}: {len(questions)} question(s) queued")
        if args.wait:
            job = await _follow(args, session, job.job_id)
    _print_jobs(args, [job])
    return _exit_of(job) if args.wait else failures.EXIT_OK


async def _follow(args: argparse.Namespace, session: connect.Session, job_id: str) -> job_pb2.Job:
    """The job once it ends, a progress line on stderr at each change (unless --json)."""
    job = job_pb2.Job()
    watch = _stub(session, streaming=True).WatchJob(
        pb.WatchJobRequest(job_id=job_id), metadata=session.key_metadata()
    )
    async for update in watch:
        job = update.job
        if not args.json:
            progress = job.progress
            failures.say(
                f"{enum_label(job_pb2.JobState, job.state)}: {progress.succeeded_items} answered, "
                f"{progress.failed_items} failed, of {progress.total_items}"
            )
    return job


def _exit_of(job: job_pb2.Job) -> int:
    ok = job.state == job_pb2.JOB_STATE_SUCCEEDED and job.progress.failed_items == 0
    return failures.EXIT_OK if ok else failures.EXIT_PROBLEM_FOUND


async def _list(args: argparse.Namespace) -> int:
    if args.limit <= 0:
        raise failures.CliError("--limit must be a positive number")
    states = [job_pb2.JobState.Value(f"JOB_STATE_{state.upper()}") for state in args.state]
    async with connect.Session.from_args(args) as session:
        stub, token = _stub(session), ""
        jobs: list[job_pb2.Job] = []
        while len(jobs) < args.limit:
            request = pb.ListJobsRequest(
                page_size=min(args.limit - len(jobs), 1000),
                page_token=token,
                user_id=args.user,
                all_users=args.all_users,
                states=states,
            )
            reply = await stub.ListJobs(request, metadata=session.key_metadata())
            jobs.extend(reply.jobs)
            token = reply.next_page_token
            if not token:
                break
    _print_jobs(args, jobs)
    return failures.EXIT_OK


async def _show_one(args: argparse.Namespace) -> int:
    return await _one_job(
        args, lambda stub, metadata: stub.GetJob(pb.GetJobRequest(job_id=args.job_id), metadata=metadata)
    )


async def _one_job(
    args: argparse.Namespace,
    call: Callable[
        [JobServiceAsyncStub, connect.Metadata], Awaitable[pb.GetJobResponse | pb.CancelJobResponse]
    ],
) -> int:
    """Make ``call`` with the session's stub and credential, and print the job it answers."""
    async with connect.Session.from_args(args) as session:
        reply = await call(_stub(session), session.key_metadata())
    _print_jobs(args, [reply.job])
    return failures.EXIT_OK


async def _watch(args: argparse.Namespace) -> int:
    async with connect.Session.from_args(args) as session:
        job = await _follow(args, session, args.job_id)
    _print_jobs(args, [job])
    return _exit_of(job)


async def _results(args: argparse.Namespace) -> int:
    """Every result there is now, a page at a time; a running job's later results need another call."""
    failed = 0
    async with connect.Session.from_args(args) as session:
        stub, token = _stub(session), ""
        while True:
            reply = await stub.ListJobResults(
                pb.ListJobResultsRequest(job_id=args.job_id, page_size=1000, page_token=token),
                metadata=session.key_metadata(),
            )
            for result in reply.results:
                failed += result.HasField("error")
                _print_result(args, result)
            token = reply.next_page_token
            if not token or not reply.results:  # done, or nothing more has finished yet
                break
    return failures.EXIT_PROBLEM_FOUND if failed else failures.EXIT_OK


def _print_result(args: argparse.Namespace, result: job_pb2.JobItemResult) -> None:
    if args.json:
        print_json(result, lines=True)
    elif result.HasField("error"):
        failures.say(f"[{result.index}] {_status_line(result.error)}")
    else:
        print(f"[{result.index}] {result.response.text}", flush=True)


async def _cancel(args: argparse.Namespace) -> int:
    return await _one_job(
        args,
        lambda stub, metadata: stub.CancelJob(pb.CancelJobRequest(job_id=args.job_id), metadata=metadata),
    )


async def _delete(args: argparse.Namespace) -> int:
    async with connect.Session.from_args(args) as session:
        await _stub(session).DeleteJob(
            pb.DeleteJobRequest(job_id=args.job_id), metadata=session.key_metadata()
        )
    if args.json:
        print_json({"deleted": args.job_id})
    else:
        failures.say(f"job {args.job_id} deleted")
    return failures.EXIT_OK
