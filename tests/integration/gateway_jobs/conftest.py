"""A real auth service, a tenant with an API key, and gateways serving JobService (real PostgreSQL, NATS,
channels), whose job items run through a test runner that calls auth with the delegated token."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from parapet import clients
from parapet.auth.v1 import auth_service_pb2, auth_service_pb2_grpc, permission_pb2, tenant_policy_pb2
from parapet.embedded import EmbeddedNats
from parapet.gateway.v1 import chat_pb2, chat_service_pb2, job_pb2, job_service_pb2, job_service_pb2_grpc
from parapet.inference.v1 import message_pb2
from parapet.kit import timeouts
from parapet.kit.app import Resources, ServiceApp
from parapet.kit.errors import FailedPrecondition, Unauthenticated
from parapet.kit.identity import Principal
from parapet.kit.testing import running
from parapet.usage.v1 import money_pb2, token_usage_pb2
from services.gateway.authorization import Authorizer
from services.gateway.caller import Caller
from services.gateway.jobs.settings import JobSettings
from services.gateway.jobs.wiring import register_job_service
from tests.integration.auth.conftest import PLATFORM, Auth, running_auth, signing_key_file

__all__ = ["signing_key_file"]

TERMINAL = frozenset({job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED})
JOB_SERVICE = job_service_pb2.DESCRIPTOR.services_by_name["JobService"]
MIGRATIONS = Path(__file__).parents[3] / "services" / "gateway" / "migrations"


@dataclass
class Runner:
    """Runs an item the way the flow starts one: acts for the caller at auth (Authorize with its token),
    then answers. Counts runs per item (past the gate) and keeps every request id it was given (also of runs
    the gate held and a stop cancelled); ``gate`` holds items until set.

    With ``tenant``, items of other tenants' jobs fail at once, neither counted nor held: the database outlives a
    test's NATS, and the sweeper rightly queues again, into the next test's new stream, the jobs earlier tests
    left unfinished (each in a tenant of its own), which must neither skew the counts nor occupy the gate."""

    auth_target: str
    tenant: str = ""
    calls: Counter[int] = field(default_factory=Counter)
    request_ids: list[str] = field(default_factory=list)
    callers: list[Caller] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    held: asyncio.Event = field(default_factory=asyncio.Event)  # an item waits at the closed gate
    free_items: int = 1_000_000  # items that pass before the gate is consulted

    def __post_init__(self) -> None:
        self.gate.set()

    async def __call__(
        self, caller: Caller, request: chat_service_pb2.ChatRequest, request_id: str
    ) -> chat_service_pb2.ChatResponse:
        if self.tenant and caller.tenant_id != self.tenant:
            raise FailedPrecondition("an earlier test's job", reason="NOT_THIS_TEST_S_JOB")
        index = item_index(request_id)
        self.request_ids.append(request_id)
        self.started.set()
        if sum(self.calls.values()) >= self.free_items:
            if not self.gate.is_set():
                self.held.set()
            await self.gate.wait()
        self.calls[index] += 1
        self.callers.append(caller)
        async with grpc.aio.insecure_channel(self.auth_target) as channel:
            decision = await auth_service_pb2_grpc.AuthServiceStub(channel).Authorize(
                auth_service_pb2.AuthorizeRequest(permission=permission_pb2.PERMISSION_CHAT),
                metadata=caller.auth_metadata(),
            )
        assert decision.allowed, decision.reason
        question = request.messages[-1].content
        return chat_service_pb2.ChatResponse(
            text=f"answer to {question}",
            summary=chat_pb2.ChatSummary(
                request_id=request_id,
                usage=token_usage_pb2.TokenUsage(prompt_tokens=3, completion_tokens=5),
                cost=money_pb2.Money(currency_code="USD", amount_micros=10),
            ),
        )


def item_index(request_id: str) -> int:
    """The item index named by an item's request id, ``job-<job uuid>-<index>`` or ``...-<index>-run<n>``."""
    return int(request_id.split("-")[6])


def test_resolver(auth_target: str) -> Callable[[grpc.aio.ServicerContext[Any, Any]], Any]:
    """The incoming `authorization: Bearer <API key>` exchanged at the real auth service (no caching)."""

    async def resolve(context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        credential = next(
            (
                str(v).removeprefix("Bearer ")
                for k, v in context.invocation_metadata() or ()
                if k == "authorization"
            ),
            "",
        )
        if not credential:
            raise Unauthenticated("no credential", reason="CREDENTIAL_MISSING")
        async with grpc.aio.insecure_channel(auth_target) as channel:
            reply = await auth_service_pb2_grpc.AuthServiceStub(channel).Authenticate(
                auth_service_pb2.AuthenticateRequest(api_key=credential)
            )
        return Caller(
            reply.token,
            Principal.from_proto(reply.principal),
            reply.policy_version,
            reply.expire_time.seconds,
        )

    return resolve


def gateway_app(runner: Runner, auth_target: str) -> ServiceApp[JobSettings]:
    async def register(server: grpc.aio.Server, resources: Resources[JobSettings]) -> None:
        auth = clients.auth(auth_target, resources.settings)
        resources.cleanup.push_async_callback(auth.close)
        authorizer = Authorizer(auth, timeout=5.0)
        await register_job_service(server, resources, runner, test_resolver(auth_target), authorizer)

    return ServiceApp(
        name="gateway",
        settings_type=JobSettings,
        register=register,
        service_names=(JOB_SERVICE.full_name,),
        uses_database=True,
        uses_nats=True,
        migrations=MIGRATIONS,
        public_methods=frozenset(f"/{JOB_SERVICE.full_name}/{m.name}" for m in JOB_SERVICE.methods),
    )


@dataclass
class Suite:
    auth: Auth
    database_url: str
    nats_url: str
    service_key_file: Path
    tenant: str = ""
    key: str = ""
    key_id: str = ""
    service_account: str = (
        ""  # the gateway's platform account (role token-delegator), whose key is in the file
    )
    service_key_id: str = ""

    def settings(self, **overrides: Any) -> JobSettings:
        values: dict[str, Any] = {
            "port": 0,
            "database_url": self.database_url,
            "nats_url": self.nats_url,
            "auth_address": self.auth.target,
            "health_interval_seconds": 0.5,
            "shutdown_grace_seconds": 1.0,
            "gateway_job_service_key_file": self.service_key_file,
            "gateway_job_ack_wait_seconds": 1.5,
            "gateway_job_sweep_seconds": 0.5,
            "gateway_job_watch_poll_seconds": 1.0,
            "gateway_job_item_concurrency": 2,
        }
        values.update(overrides)
        return JobSettings(**values)

    @asynccontextmanager
    async def gateway(
        self, runner: Runner, **overrides: Any
    ) -> AsyncIterator[job_service_pb2_grpc.JobServiceStub]:
        async with (
            running(gateway_app(runner, self.auth.target), self.settings(**overrides)) as (_server, port),
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            yield job_service_pb2_grpc.JobServiceStub(channel)

    def runner(self, **kwargs: Any) -> Runner:
        return Runner(self.auth.target, tenant=self.tenant, **kwargs)

    async def new_member(self, user_id: str, roles: tuple[str, ...] = ("member",)) -> tuple[str, str]:
        await self.auth.new_user(self.tenant, user_id, roles=roles)
        return await self.auth.new_key(self.tenant, user_id)


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def batch_request(key: str, questions: list[str], **metadata: str) -> job_service_pb2.SubmitJobRequest:
    return job_service_pb2.SubmitJobRequest(
        idempotency_key=key,
        chat_batch=job_pb2.ChatBatch(
            requests=[
                chat_service_pb2.ChatRequest(
                    messages=[message_pb2.Message(role=message_pb2.ROLE_USER, content=q)], feature="batch"
                )
                for q in questions
            ]
        ),
        metadata=metadata,
    )


@pytest.fixture
async def suite(
    database_url: str, nats_url: str, signing_key_file: Path, fresh_nats: EmbeddedNats, tmp_path: Path
) -> AsyncIterator[Suite]:
    async with running_auth(database_url, nats_url, signing_key_file) as auth:
        # The gateway's platform service account (what PARAPET_AUTH_GATEWAY_KEY_FILE bootstraps).
        account = f"gw-{uuid.uuid4().hex[:6]}"
        await auth.new_user(PLATFORM, account, roles=("token-delegator",))
        service_key_id, service_key = await auth.new_key(PLATFORM, account)
        key_file = tmp_path / "gateway.key"
        key_file.write_text(service_key + "\n")
        # A tenant whose `member` role may chat, and a member's key.
        tenant = await auth.new_tenant("jobs")
        member = tenant_policy_pb2.RoleDefinition(role="member", permissions=[permission_pb2.PERMISSION_CHAT])
        await auth.set_policy(tenant, tenant_policy_pb2.TenantPolicy(roles=[member]))
        suite = Suite(auth, database_url, fresh_nats.url, key_file, tenant, "", "", account, service_key_id)
        suite.key_id, suite.key = await suite.new_member("alice")
        yield suite


async def watch_until(
    stub: job_service_pb2_grpc.JobServiceStub,
    key: str,
    job_id: str,
    done: Callable[[Any], bool],
    within: float = 30.0,
) -> Any:
    """The job, via WatchJob, once ``done(job)`` holds."""

    async def watch() -> Any:
        async for message in stub.WatchJob(
            job_service_pb2.WatchJobRequest(job_id=job_id), metadata=bearer(key)
        ):
            if done(message.job):
                return message.job
        raise AssertionError("the watch ended before the job got there")

    return await timeouts.within(within, watch())


def ended(job: Any) -> bool:
    return job.state in TERMINAL


def succeeded_at_least(count: int) -> Callable[[Any], bool]:
    return lambda job: job.progress.succeeded_items >= count
