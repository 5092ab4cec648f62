"""``parapet erase USER --reason R --yes``: a user's right to erasure, in the stores that keep their content.

First the caller's `admin` permission is checked, so that nothing is erased halfway. Then, in order: the user's
jobs (unfinished ones cancelled, then every one deleted with its prompts and answers: gateway ``JobService``),
the stored answers of their idempotent chats (gateway ``DeleteReplays``), the semantic cache's answers to their
questions (inference ``DeleteCacheEntries``), their documents (retrieval ``DeleteDocuments``, which also drops
cached answers grounded in them), then their audit records (audit ``Erase``: the bodies go, metadata and hashes
stay, so the chain still verifies; their records set aside as unstorable are deleted; the erasure itself is
recorded). Audit goes last so that what the earlier steps set off is erased too.

Every step is idempotent, so a run that fails part way (a service down) is finished by running it again.
"""

from __future__ import annotations

import argparse

from parapet import clients
from parapet.audit.v1 import audit_service_pb2
from parapet.auth.v1 import auth_service_pb2, permission_pb2
from parapet.cli import connect, failures
from parapet.cli.printing import print_json
from parapet.gateway.v1 import chat_service_pb2, job_pb2, job_service_pb2
from parapet.inference.v1 import inference_service_pb2
from parapet.retrieval.v1 import retrieval_service_pb2

_UNFINISHED = (job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_RUNNING)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "erase",
        help="erase a user's jobs, stored and cached answers, documents and audited prompts and answers "
        "(right to erasure)",
        description="Deletes USER's jobs and their results, the stored answers of USER's idempotent chats, the "
        "cached answers to USER's questions, USER's documents (and cached answers grounded in them), and drops "
        "the prompt and answer bodies of USER's audit records, in the credential's tenant. Cannot be undone. "
        "Needs `admin`. Usage records (tokens, cost) stay: billing needs them and they hold no content.",
    )
    parser.add_argument("user", metavar="USER", help="the user id (the subject their chats ran as)")
    parser.add_argument(
        "--reason", required=True, help="why, e.g. a ticket reference (recorded in the audit trail)"
    )
    parser.add_argument("--yes", action="store_true", help="confirm: nothing is erased without it")
    connect.add_arguments(parser, "audit")
    parser.set_defaults(func=failures.run, execute=_erase)


async def _erase(args: argparse.Namespace) -> int:
    if not args.yes:
        raise failures.CliError(f"this erases {args.user}'s content for good; add --yes to confirm")
    async with connect.Session.from_args(args) as session:
        auth = session.client(clients.auth, "auth").stub
        allowed = await auth.Authorize(
            auth_service_pb2.AuthorizeRequest(permission=permission_pb2.PERMISSION_ADMIN),
            metadata=await session.token_metadata(),
        )
        if not allowed.allowed:
            raise failures.CliError(
                f"erasing a user needs the admin permission ({allowed.reason}); nothing was erased",
                failures.EXIT_FAILED,
            )
        jobs = session.client(clients.jobs, "gateway").stub
        key = session.key_metadata()
        cancelled = deleted_jobs = 0
        listing = job_service_pb2.ListJobsRequest(user_id=args.user, page_size=1000)
        while True:
            # Deleting shortens the listing, so every round reads the first page again.
            page = await jobs.ListJobs(listing, metadata=key)
            if not page.jobs:
                break
            for job in page.jobs:
                if job.state in _UNFINISHED:
                    await jobs.CancelJob(job_service_pb2.CancelJobRequest(job_id=job.job_id), metadata=key)
                    cancelled += 1
                removal = job_service_pb2.DeleteJobRequest(job_id=job.job_id, allow_missing=True)
                deleted_jobs += (await jobs.DeleteJob(removal, metadata=key)).deleted

        chat = session.client(clients.chat, "gateway").stub
        replays = await chat.DeleteReplays(
            chat_service_pb2.DeleteReplaysRequest(user_id=args.user), metadata=key
        )
        inference = session.client(clients.inference, "inference").stub
        # The session renews its short-lived internal token when needed: deleting many jobs may take a while.
        cached = await inference.DeleteCacheEntries(
            inference_service_pb2.DeleteCacheEntriesRequest(user_id=args.user),
            metadata=await session.token_metadata(),
        )
        retrieval = session.client(clients.retrieval, "retrieval").stub
        documents = await retrieval.DeleteDocuments(
            retrieval_service_pb2.DeleteDocumentsRequest(user_id=args.user),
            metadata=await session.token_metadata(),
        )
        audit = session.client(clients.audit, "audit").stub
        erased = await audit.Erase(
            audit_service_pb2.EraseRequest(user_id=args.user, reason=args.reason),
            metadata=await session.token_metadata(),
        )
    counts = {
        "user_id": args.user,
        "jobs_cancelled": cancelled,
        "jobs_deleted": deleted_jobs,
        "stored_answers_deleted": replays.deleted_count,
        "cached_answers_deleted": cached.deleted_count,
        "documents_deleted": documents.deleted_count,
        "audit_records_erased": erased.erased_count,
        "set_aside_audit_records_deleted": erased.rejected_deleted_count,
    }
    if args.json:
        print_json(counts)
    else:
        print(
            f"erased {args.user}: {deleted_jobs} job(s) deleted ({cancelled} cancelled first), "
            f"{replays.deleted_count} stored and {cached.deleted_count} cached answer(s) deleted, "
            f"{documents.deleted_count} document(s) deleted, {erased.erased_count} audit record(s) erased "
            f"and {erased.rejected_deleted_count} set-aside one(s) deleted",
            flush=True,
        )
    if cancelled:
        # A cancelled job's running items finish, and their audit records arrive after this Erase.
        failures.say("jobs were running: run this again in a minute to erase what their last items recorded")
    return failures.EXIT_OK
