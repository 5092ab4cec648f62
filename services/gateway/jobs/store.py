"""Every SQL statement of the async jobs, each in a tenant-scoped transaction under row-level security.

Transactions run ``SET LOCAL ROLE parapet_gateway_jobs`` (a role that owns nothing, so RLS applies even when
the service connects as the tables' owner or a superuser) with ``parapet.tenant_id`` set by the kit. Only the
sweeper spans tenants, under ``parapet.scope = 'jobs-sweep'``: it reads nothing but job ids, and deletes jobs
past their ``expire_time``.

Every change a watcher may care about ends with ``pg_notify('parapet_gateway_jobs', job_id)`` inside its
transaction: PostgreSQL delivers it exactly at commit, so a watcher woken by it always reads the change.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from parapet.kit.database import Database
from parapet.kit.errors import Aborted

JOBS_ROLE = "parapet_gateway_jobs"
NOTIFY_CHANNEL = "parapet_gateway_jobs"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
DELETED = "deleted"  # not a stored state: what a worker is told when its job's row is gone
_FOREIGN_KEY_VIOLATION = "23503"
# How often ``create`` inserts when, each time, the job holding the key is deleted between its INSERT and SELECT.
_CREATE_ATTEMPTS = 3


@dataclass(frozen=True)
class JobRow:
    """A job as stored (without its spec unless asked for)."""

    tenant_id: str
    job_id: str
    idempotency_key: str
    spec_sha256: bytes
    metadata: dict[str, str]
    subject: str
    api_key_id: str
    state: str
    total_items: int
    succeeded_items: int
    failed_items: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    usage_estimated: bool
    cost_micros: int
    currency_code: str
    error: bytes | None
    attempts: int
    create_time: datetime
    start_time: datetime | None
    end_time: datetime | None
    expire_time: datetime | None
    spec: bytes | None = None
    # Every claim of the job, never decremented (``attempts`` is, on a give-back): numbers the runs, whose
    # items get request ids of their own (``submission.item_request_id``).
    runs: int = 0

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


@dataclass(frozen=True)
class ItemOutcome:
    """A finished item: its response or its error (serialized protos), and what it consumed."""

    index: int
    response: bytes | None = None
    error: bytes | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    estimated: bool = False
    cost_micros: int = 0
    currency_code: str = ""


@dataclass(frozen=True)
class Claim:
    """What a worker learns when it tries to take a job."""

    job: JobRow | None  # None: no such job (never happens for a message we published)
    granted: bool  # the lease is ours
    lease_left: float  # seconds until another worker's lease expires, when not granted


_COLUMNS = """tenant_id, job_id::text AS job_id, idempotency_key, spec_sha256, metadata, subject, api_key_id,
    state, total_items, succeeded_items, failed_items, prompt_tokens, completion_tokens, cached_tokens,
    usage_estimated, cost_micros, currency_code, error, attempts, runs, create_time, start_time, end_time,
    expire_time"""


def _row(mapping: Any) -> JobRow:
    values = dict(mapping)
    for name in ("spec_sha256", "error", "spec"):
        if values.get(name) is not None:
            values[name] = bytes(values[name])
    return JobRow(**values)


ResultRow = tuple[int, bool, bytes | None, bytes | None]  # (index, succeeded, response, error)
# What a result adds to a message besides its stored bytes: the repeated field's tag and length, the index, the
# outcome's tag and length (at most 1 + 5 + 1 + 5 + 1 + 5 bytes), rounded up.
RESULT_FRAMING_BYTES = 24


def result_size(result: ResultRow) -> int:
    """The bytes ``result`` adds to a message (an upper bound)."""
    _index, _succeeded, response, error = result
    return len(response or b"") + len(error or b"") + RESULT_FRAMING_BYTES


class JobStore:
    def __init__(self, database: Database, *, retention_days: int) -> None:
        self.database = database
        # A job is deleted this long after it reached a terminal state (its expire_time).
        self._retention = timedelta(days=retention_days)

    def tenant(self, tenant_id: str) -> AbstractAsyncContextManager[AsyncSession]:
        return self.database.scoped_transaction(tenant_id=tenant_id, role=JOBS_ROLE)

    def _sweeping(self) -> AbstractAsyncContextManager[AsyncSession]:
        """A transaction of the sweeper's scope: every tenant's job ids, and deleting expired jobs."""
        return self.database.scoped_transaction(scope="jobs-sweep", role=JOBS_ROLE)

    @staticmethod
    async def _notify(session: AsyncSession, job_id: str) -> None:
        await session.execute(text("SELECT pg_notify(:c, :j)"), {"c": NOTIFY_CHANNEL, "j": job_id})

    # -- submitting -----------------------------------------------------------------------------------------

    async def create(
        self,
        tenant_id: str,
        *,
        idempotency_key: str,
        spec_sha256: bytes,
        spec: bytes,
        metadata: Mapping[str, str],
        subject: str,
        api_key_id: str,
        total_items: int,
    ) -> tuple[JobRow, bool]:
        """The new queued job and True, or the job already holding ``idempotency_key`` and False."""
        import json

        params = {
            "t": tenant_id,
            "k": idempotency_key,
            "h": spec_sha256,
            "s": spec,
            "m": json.dumps(dict(metadata)),
            "u": subject,
            "a": api_key_id,
            "n": total_items,
        }
        async with self.tenant(tenant_id) as session:
            for _attempt in range(_CREATE_ATTEMPTS):
                created = await session.execute(
                    text(
                        "INSERT INTO jobs (tenant_id, job_id, idempotency_key, spec_sha256, spec, metadata,"
                        " subject, api_key_id, state, total_items) VALUES (:t, :j, :k, :h, :s,"
                        " CAST(:m AS jsonb), :u, :a, 'queued', :n)"
                        f" ON CONFLICT (tenant_id, idempotency_key) DO NOTHING RETURNING {_COLUMNS}"
                    ),
                    {**params, "j": str(uuid.uuid4())},
                )
                row = created.mappings().one_or_none()
                if row is not None:
                    return _row(row), True
                existing = await session.execute(
                    text(f"SELECT {_COLUMNS} FROM jobs WHERE idempotency_key = :k"), {"k": idempotency_key}
                )
                found = existing.mappings().one_or_none()
                if found is not None:
                    return _row(found), False
                # The job holding the key was deleted between the two statements (DeleteJob of a finished
                # job, or its expiry): the key is free again, so this submission makes a new job, as it would
                # have a moment later. (Each statement reads what was committed before it began.)
        raise Aborted(
            "the job holding this idempotency_key kept changing; retry the submission",
            reason="CONCURRENT_CONFLICT",
            metadata={"idempotency_key": idempotency_key},
        )

    async def mark_enqueued(self, tenant_id: str, job_id: str) -> None:
        async with self.tenant(tenant_id) as session:
            await session.execute(
                text("UPDATE jobs SET enqueue_time = now() WHERE job_id = CAST(:j AS uuid)"), {"j": job_id}
            )

    # -- reading --------------------------------------------------------------------------------------------

    async def get(self, tenant_id: str, job_id: str, *, with_spec: bool = False) -> JobRow | None:
        try:
            key = str(uuid.UUID(job_id))
        except ValueError:
            return None
        columns = _COLUMNS + (", spec" if with_spec else "")
        async with self.tenant(tenant_id) as session:
            found = await session.execute(
                text(f"SELECT {columns} FROM jobs WHERE job_id = CAST(:j AS uuid)"), {"j": key}
            )
            row = found.mappings().one_or_none()
        return None if row is None else _row(row)

    async def list_jobs(
        self,
        tenant_id: str,
        *,
        subject: str | None,
        states: Sequence[str],
        before: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[JobRow]:
        """Jobs newest first (create_time, then job id, descending): of ``subject`` (None: every user), in
        ``states`` (empty: any), after the keyset position ``before``."""
        where: list[str] = []
        params: dict[str, Any] = {"n": limit}
        if subject is not None:
            where.append("subject = :u")
            params["u"] = subject
        if states:
            where.append("state = ANY(:s)")
            params["s"] = list(states)
        if before is not None:
            where.append("(create_time, job_id) < (:bt, CAST(:bj AS uuid))")
            params["bt"], params["bj"] = before
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        async with self.tenant(tenant_id) as session:
            rows = await session.execute(
                text(f"SELECT {_COLUMNS} FROM jobs{clause} ORDER BY create_time DESC, job_id DESC LIMIT :n"),
                params,
            )
            return [_row(row) for row in rows.mappings()]

    async def results(self, tenant_id: str, job_id: str, *, max_bytes: int) -> list[ResultRow] | None:
        """Every finished item's result, in item order; None when their message would exceed ``max_bytes``
        (the stored bytes plus ``RESULT_FRAMING_BYTES`` per result)."""
        async with self.tenant(tenant_id) as session:
            size = await session.execute(
                text(
                    "SELECT coalesce(sum(coalesce(octet_length(response), 0) + coalesce(octet_length(error), 0)"
                    " + :framing), 0) FROM job_results WHERE job_id = CAST(:j AS uuid)"
                ),
                {"j": job_id, "framing": RESULT_FRAMING_BYTES},
            )
            if int(size.scalar_one()) > max_bytes:
                return None
            return await self._results(session, job_id, start=0, limit=None)

    async def results_page(self, tenant_id: str, job_id: str, *, start: int, limit: int) -> list[ResultRow]:
        """At most ``limit`` finished items' results from index ``start`` on, in item order."""
        async with self.tenant(tenant_id) as session:
            return await self._results(session, job_id, start=start, limit=limit)

    @staticmethod
    async def _results(
        session: AsyncSession, job_id: str, *, start: int, limit: int | None
    ) -> list[ResultRow]:
        rows = await session.execute(
            text(
                "SELECT item_index, succeeded, response, error FROM job_results"
                " WHERE job_id = CAST(:j AS uuid) AND item_index >= :start ORDER BY item_index"
                + (" LIMIT :n" if limit is not None else "")
            ),
            {"j": job_id, "start": start, "n": limit},
        )
        return [
            (r[0], r[1], None if r[2] is None else bytes(r[2]), None if r[3] is None else bytes(r[3]))
            for r in rows
        ]

    async def finished_indices(self, tenant_id: str, job_id: str) -> set[int]:
        async with self.tenant(tenant_id) as session:
            rows = await session.execute(
                text("SELECT item_index FROM job_results WHERE job_id = CAST(:j AS uuid)"), {"j": job_id}
            )
            return {r[0] for r in rows}

    # -- state changes --------------------------------------------------------------------------------------

    async def cancel(self, tenant_id: str, job_id: str) -> None:
        """Queued or running → cancelled (no new item starts); finished jobs are left as they are."""
        async with self.tenant(tenant_id) as session:
            changed = await session.execute(
                text(
                    "UPDATE jobs SET state = 'cancelled', end_time = now(), expire_time = now() + :keep,"
                    " worker = NULL, lease_expire_time = NULL"
                    " WHERE job_id = CAST(:j AS uuid) AND state IN ('queued', 'running')"
                ),
                {"j": job_id, "keep": self._retention},
            )
            if getattr(changed, "rowcount", 0):
                await self._notify(session, job_id)

    async def claim(self, tenant_id: str, job_id: str, worker: str, lease_seconds: float) -> Claim:
        """Take the job's lease if it is unfinished and nobody else holds a live one; count the run, and the
        attempt (which ``release`` takes back when the worker gives the job back on purpose)."""
        async with self.tenant(tenant_id) as session:
            taken = await session.execute(
                text(
                    "UPDATE jobs SET state = 'running', start_time = coalesce(start_time, now()), worker = :w,"
                    " lease_expire_time = now() + make_interval(secs => :l),"
                    # greatest(): a replica of the release before 0005_job_runs counts attempts only, so a job
                    # it claimed after the migration must not give a later run a request id already used.
                    " attempts = attempts + 1, runs = greatest(runs, attempts) + 1"
                    " WHERE job_id = CAST(:j AS uuid) AND state IN ('queued', 'running')"
                    " AND (worker IS NULL OR worker = :w OR lease_expire_time <= now())"
                    f" RETURNING {_COLUMNS}, spec"
                ),
                {"j": job_id, "w": worker, "l": lease_seconds},
            )
            row = taken.mappings().one_or_none()
            if row is not None:
                await self._notify(session, job_id)
                return Claim(_row(row), True, 0.0)
            found = await session.execute(
                text(
                    f"SELECT {_COLUMNS}, greatest(0, extract(epoch FROM lease_expire_time - now()))::float8"
                    " AS lease_left FROM jobs WHERE job_id = CAST(:j AS uuid)"
                ),
                {"j": job_id},
            )
            other = found.mappings().one_or_none()
        if other is None:
            return Claim(None, False, 0.0)
        values = dict(other)
        lease_left = float(values.pop("lease_left") or 0.0)
        return Claim(_row(values), False, lease_left)

    async def renew(self, tenant_id: str, job_id: str, worker: str, lease_seconds: float) -> str | None:
        """Extend our lease; returns the job's state, or None when the lease is no longer ours."""
        async with self.tenant(tenant_id) as session:
            renewed = await session.execute(
                text(
                    "UPDATE jobs SET lease_expire_time = now() + make_interval(secs => :l)"
                    " WHERE job_id = CAST(:j AS uuid) AND worker = :w RETURNING state"
                ),
                {"j": job_id, "w": worker, "l": lease_seconds},
            )
            state = renewed.scalar_one_or_none()
            if state is not None:
                return str(state)
            current = await session.execute(
                text("SELECT state FROM jobs WHERE job_id = CAST(:j AS uuid)"), {"j": job_id}
            )
            found = current.scalar_one_or_none()
            # Cancelled (which clears the lease) and deleted (only a finished job can be, so a cancelled one) are
            # reported as such; anything else means we lost the lease.
            if found is None:
                return DELETED
            return "cancelled" if found == "cancelled" else None

    async def release(self, tenant_id: str, job_id: str, worker: str, *, count_attempt: bool) -> None:
        """Give the lease up (a stopping worker, a dependency down), so the next delivery need not wait for it
        to expire. The attempt the claim counted is taken back unless ``count_attempt``: the attempts limit is
        for jobs that break their workers, not for outages and restarts. ``runs`` stays: a request id of this
        run must never be used again."""
        async with self.tenant(tenant_id) as session:
            await session.execute(
                text(
                    "UPDATE jobs SET worker = NULL, lease_expire_time = NULL,"
                    " attempts = greatest(attempts - :back, 0) WHERE job_id = CAST(:j AS uuid) AND worker = :w"
                ),
                {"j": job_id, "w": worker, "back": 0 if count_attempt else 1},
            )

    async def record_item(self, tenant_id: str, job_id: str, outcome: ItemOutcome) -> str:
        """Checkpoint one finished item (once: a repeat changes nothing) and add it to the job's counters, in
        one transaction; returns the job's state (a worker stops starting items once it is cancelled), or
        DELETED when the job is gone (a cancelled job deleted while its last items ran: their results go too)."""
        try:
            return await self._record_item(tenant_id, job_id, outcome)
        except IntegrityError as error:
            if getattr(error.orig, "sqlstate", None) == _FOREIGN_KEY_VIOLATION:
                return DELETED
            raise

    async def _record_item(self, tenant_id: str, job_id: str, outcome: ItemOutcome) -> str:
        async with self.tenant(tenant_id) as session:
            inserted = await session.execute(
                text(
                    "INSERT INTO job_results (tenant_id, job_id, item_index, succeeded, response, error)"
                    " VALUES (:t, CAST(:j AS uuid), :i, :ok, :r, :e) ON CONFLICT DO NOTHING RETURNING item_index"
                ),
                {
                    "t": tenant_id,
                    "j": job_id,
                    "i": outcome.index,
                    "ok": outcome.error is None,
                    "r": outcome.response,
                    "e": outcome.error,
                },
            )
            if inserted.scalar_one_or_none() is None:
                state = await session.execute(
                    text("SELECT state FROM jobs WHERE job_id = CAST(:j AS uuid)"), {"j": job_id}
                )
                found = state.scalar_one_or_none()
                return DELETED if found is None else str(found)
            updated = await session.execute(
                text(
                    "UPDATE jobs SET succeeded_items = succeeded_items + :s, failed_items = failed_items + :f,"
                    " prompt_tokens = prompt_tokens + :pt, completion_tokens = completion_tokens + :ct,"
                    " cached_tokens = cached_tokens + :kt, usage_estimated = usage_estimated OR :est,"
                    " cost_micros = cost_micros + :c,"
                    # One currency per deployment in practice; the first item that names one sets it.
                    " currency_code = CASE WHEN currency_code = '' THEN :cur ELSE currency_code END"
                    " WHERE job_id = CAST(:j AS uuid) RETURNING state"
                ),
                {
                    "j": job_id,
                    "s": int(outcome.error is None),
                    "f": int(outcome.error is not None),
                    "pt": outcome.prompt_tokens,
                    "ct": outcome.completion_tokens,
                    "kt": outcome.cached_tokens,
                    "est": outcome.estimated,
                    "c": outcome.cost_micros,
                    "cur": outcome.currency_code,
                },
            )
            await self._notify(session, job_id)
            return str(updated.scalar_one())

    async def finish(self, tenant_id: str, job_id: str, worker: str, *, error: bytes | None = None) -> None:
        """Running → succeeded (or failed with ``error``) under our lease; a cancelled job stays cancelled."""
        async with self.tenant(tenant_id) as session:
            changed = await session.execute(
                text(
                    "UPDATE jobs SET state = :s, error = :e, end_time = now(), expire_time = now() + :keep,"
                    " worker = NULL, lease_expire_time = NULL"
                    " WHERE job_id = CAST(:j AS uuid) AND state IN ('queued', 'running')"
                    " AND (worker = :w OR worker IS NULL)"
                ),
                {
                    "j": job_id,
                    "w": worker,
                    "s": "failed" if error is not None else "succeeded",
                    "e": error,
                    "keep": self._retention,
                },
            )
            if getattr(changed, "rowcount", 0):
                await self._notify(session, job_id)

    async def delete(self, tenant_id: str, job_id: str) -> str | None:
        """Delete a finished job with its results: None when deleted, else the state that kept it (an unfinished
        one), or "missing"."""
        async with self.tenant(tenant_id) as session:
            deleted = await session.execute(
                text(
                    "DELETE FROM jobs WHERE job_id = CAST(:j AS uuid)"
                    " AND state IN ('succeeded', 'failed', 'cancelled') RETURNING job_id"
                ),
                {"j": job_id},
            )
            if deleted.scalar_one_or_none() is not None:
                await self._notify(session, job_id)
                return None
            kept = await session.execute(
                text("SELECT state FROM jobs WHERE job_id = CAST(:j AS uuid)"), {"j": job_id}
            )
            state = kept.scalar_one_or_none()
            return "missing" if state is None else str(state)

    # -- the sweeper (every tenant, ids only) ------------------------------------------------------------------

    async def to_requeue(
        self, stale_after_seconds: float, *, stream_created: datetime | None = None, limit: int = 100
    ) -> list[tuple[str, str, str]]:
        """(tenant, job id, message id) of unfinished jobs the queue may not hold: never acknowledged by
        JetStream, published before the stream now holding the queue was created (``stream_created``: their
        message went with the earlier stream, whether the job waited queued or was given back), or running under
        a lease expired long ago (their message lost with a stream).

        ``stream_created`` is NATS's clock, ``enqueue_time`` PostgreSQL's: with NATS's ahead, the jobs published
        within the skew after the stream's creation are queued again at each sweep until PostgreSQL's clock
        passes it; their message id (``job:runs``) does not change, so JetStream drops the repeats, and the
        lease would stop a second run anyway."""
        async with self._sweeping() as session:
            rows = await session.execute(
                text(
                    "SELECT tenant_id, job_id::text, runs FROM jobs"
                    " WHERE state IN ('queued', 'running') AND ("
                    "   (enqueue_time IS NULL AND create_time < now() - interval '2 seconds')"
                    "   OR enqueue_time < CAST(:created AS timestamptz)"
                    "   OR lease_expire_time < now() - make_interval(secs => :s))"
                    " ORDER BY create_time LIMIT :n"
                ),
                {"s": stale_after_seconds, "created": stream_created, "n": limit},
            )
            # The run count in the message id lets a re-queue through JetStream's duplicate window (the attempt
            # count would not: a give-back takes it back, so it repeats).
            return [(r[0], r[1], f"{r[1]}:{r[2]}") for r in rows]

    async def delete_expired(self, limit: int = 1000) -> int:
        """Delete up to ``limit`` jobs past their expire_time, with their results; the number deleted. (Replicas
        sweeping at once may wait on each other's rows, then find them gone: row-level security lets the sweep
        scope delete expired jobs but not lock rows, which SKIP LOCKED would need.)"""
        async with self._sweeping() as session:
            deleted = await session.execute(
                text(
                    "DELETE FROM jobs WHERE (tenant_id, job_id) IN (SELECT tenant_id, job_id FROM jobs"
                    " WHERE expire_time <= now() ORDER BY expire_time LIMIT :n)"
                ),
                {"n": limit},
            )
            return int(getattr(deleted, "rowcount", 0) or 0)
