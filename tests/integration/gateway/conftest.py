"""The whole flow in one process: real auth, moderation, metering, retrieval, inference, audit and gateway servers
over real channels, on the session's PostgreSQL and a NATS of this module's own, with the fault-injecting
upstream as the model provider."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc.aio
import pytest
import pytest_asyncio

from parapet.auth.v1 import (
    tenant_admin_service_pb2,
    tenant_admin_service_pb2_grpc,
    tenant_pb2,
    tenant_policy_pb2,
)
from parapet.cli.identity import provision
from parapet.embedded import EmbeddedNats, free_port
from parapet.gateway.v1 import (
    chat_service_pb2,
    chat_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
)
from parapet.inference.v1 import message_pb2
from parapet.kit.database import Database
from parapet.kit.errors import ErrorDetails, error_details
from parapet.kit.identity import Principal, TokenSigner
from parapet.kit.testing import running
from parapet.retrieval.v1 import document_pb2, retrieval_service_pb2, retrieval_service_pb2_grpc
from parapet.upstream import UpstreamServer
from services.audit.app import APP as AUDIT
from services.audit.settings import AuditSettings
from services.auth.app import APP as AUTH
from services.auth.settings import AuthSettings
from services.gateway.app import APP as GATEWAY
from services.gateway.settings import GatewaySettings
from services.inference.app import APP as INFERENCE
from services.inference.settings import InferenceSettings
from services.metering.app import APP as METERING
from services.metering.settings import MeteringSettings
from services.moderation.app import APP as MODERATION
from services.moderation.settings import ModerationSettings
from services.retrieval.app import APP as RETRIEVAL
from services.retrieval.settings import RetrievalSettings
from tests.integration.auth.conftest import create_key, create_user, signer_for, update_policy

PLATFORM = "parapet"
MODULE = pytest.mark.asyncio(loop_scope="module")
JOB_TERMINAL = frozenset({job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED})


def inference_config(upstream: UpstreamServer) -> dict[str, Any]:
    """`gpt` on the emulator (OpenAI wire) falling back to `claude` (Anthropic wire); `local` answers from the
    retrieved context. Prices make costs non-zero and exact."""
    prices = {"input_price_per_million": "1.00", "output_price_per_million": "2.00"}
    limits = {"context_window_tokens": 128000, "max_output_tokens": 4096}
    return {
        "currency": "USD",
        "default_model": "gpt",
        "providers": {
            "openai": {
                "kind": "openai",
                "base_url": upstream.base_url + "/v1",
                "api_key_env": "GATEWAY_TEST_KEY",
            },
            "anthropic": {
                "kind": "anthropic",
                "base_url": upstream.base_url,
                "api_key_env": "GATEWAY_TEST_KEY",
            },
            "local": {"kind": "local"},
        },
        "models": [
            {
                "name": "gpt",
                "provider": "openai",
                "upstream_model": "gpt-4o-mini",
                "fallbacks": ["claude"],
                "context_window_tokens": 128000,
                "max_output_tokens": 4096,
                **prices,
            },
            {
                "name": "claude",
                "provider": "anthropic",
                "upstream_model": "claude-haiku-4-5",
                "context_window_tokens": 200000,
                "max_output_tokens": 4096,
                **prices,
            },
            # Faults through the emulator's model-name syntax: a model that always fails (falls back to claude),
            # one that streams slowly (cancellation, in-progress idempotency), one whose whole chain is down.
            {
                "name": "broken",
                "provider": "openai",
                "upstream_model": "gpt-4o-mini;status=503",
                "fallbacks": ["claude"],
                **limits,
                **prices,
            },
            {
                "name": "slow",
                "provider": "openai",
                "upstream_model": "gpt-4o-mini;chunk_delay=0.05",
                **limits,
                **prices,
            },
            {
                "name": "down",
                "provider": "openai",
                "upstream_model": "gpt-4o-mini;status=503",
                "fallbacks": ["down-too"],
                **limits,
                **prices,
            },
            {
                "name": "down-too",
                "provider": "anthropic",
                "upstream_model": "claude-haiku-4-5;status=529",
                **limits,
                **prices,
            },
            {
                # An answer holding a card number and a term tenants may block: output screening's test case.
                "name": "leaky",
                "provider": "openai",
                "upstream_model": "gpt-4o-mini;reply=Sure:+the+card+4111+1111+1111+1111+is+on+file+for+Project+Falcon.",
                **limits,
                **prices,
            },
            {
                # An answer holding a NUL, which PostgreSQL cannot store: inference repairs it (U+FFFD).
                "name": "nul",
                "provider": "openai",
                "upstream_model": "gpt-4o-mini;reply=before\x00after",
                **limits,
                **prices,
            },
            {
                "name": "local",
                "provider": "local",
                "context_window_tokens": 32000,
                "max_output_tokens": 2048,
                **prices,
            },
        ],
        "retry": {"max_attempts": 2, "base_delay_seconds": 0.01, "max_delay_seconds": 0.05},
        "timeouts": {"connect_seconds": 1.0, "first_token_seconds": 5.0, "idle_seconds": 5.0},
        "breaker": {
            "window": 1000,
            "min_calls": 1000,
            "failure_ratio": 1.0,
            "open_seconds": 1,
            "half_open_calls": 1,
        },
    }


@dataclass
class Tenant:
    tenant_id: str
    user_id: str
    api_key: str
    api_key_id: str

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),)


@dataclass
class Answer:
    """What a StreamChat call produced, in order, and how it ended."""

    events: list[chat_service_pb2.StreamChatResponse] = field(default_factory=list)
    error: ErrorDetails | None = None
    trailers: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "".join(e.text_delta.text for e in self.events if e.HasField("text_delta"))

    @property
    def summary(self) -> Any:
        summaries = [e.summary for e in self.events if e.HasField("summary")]
        assert len(summaries) <= 1
        return summaries[0] if summaries else None

    @property
    def citations(self) -> list[Any]:
        return [e.citation for e in self.events if e.HasField("citation")]

    def notices(self, kind: int | None = None) -> list[Any]:
        return [e.notice for e in self.events if e.HasField("notice") and kind in (None, e.notice.type)]


def question(text: str, **fields: Any) -> chat_service_pb2.StreamChatRequest:
    """A StreamChat of one user message; retrieval off unless ``fields`` say otherwise."""
    fields.setdefault("retrieval", {"mode": 2})  # RETRIEVAL_MODE_DISABLED unless a test grounds the answer
    return chat_service_pb2.StreamChatRequest(
        messages=[message_pb2.Message(role=message_pb2.ROLE_USER, content=text)], **fields
    )


def unary_question(text: str, **fields: Any) -> chat_service_pb2.ChatRequest:
    """``question`` for Chat and job items (the same fields)."""
    return chat_service_pb2.ChatRequest.FromString(question(text, **fields).SerializeToString())


@dataclass
class Suite:
    channel: grpc.aio.Channel
    admin: tenant_admin_service_pb2_grpc.TenantAdminServiceStub
    retrieval: retrieval_service_pb2_grpc.RetrievalServiceStub
    signer: TokenSigner
    upstream: UpstreamServer
    database: Database
    gateway_settings: dict[str, Any]
    addresses: dict[str, str]
    inference_settings: InferenceSettings
    # The main gateway's /metrics: the registry is the process's, so it shows every in-process service's series.
    metrics_port: int | None = None
    gateway_address: str = ""  # host:port of the main gateway, for clients of its own (the CLI as a process)

    @property
    def chat(self) -> chat_service_pb2_grpc.ChatServiceStub:
        return chat_service_pb2_grpc.ChatServiceStub(self.channel)

    @property
    def jobs(self) -> job_service_pb2_grpc.JobServiceStub:
        return job_service_pb2_grpc.JobServiceStub(self.channel)

    def token(self, tenant_id: str, subject: str, roles: tuple[str, ...] = (), **kw: Any) -> Any:
        return (("authorization", f"Bearer {self.signer.sign(Principal(tenant_id, subject, roles, **kw))}"),)

    @property
    def operator(self) -> Any:
        return self.token(PLATFORM, "operator", ("platform-admin",))

    async def tenant(
        self, policy: tenant_policy_pb2.TenantPolicy | None = None, groups: tuple[str, ...] = ("all",)
    ) -> Tenant:
        tenant_id = f"gw-{uuid.uuid4().hex[:10]}"
        await self.admin.CreateTenant(
            tenant_admin_service_pb2.CreateTenantRequest(
                tenant=tenant_pb2.Tenant(tenant_id=tenant_id, display_name=tenant_id)
            ),
            metadata=self.operator,
        )
        await create_user(self.admin, self.operator, tenant_id, "alice", ("admin",), groups)
        if policy is not None:
            await self.set_policy(tenant_id, policy)
        return await self._key(tenant_id, "alice")

    async def user(
        self, tenant_id: str, user_id: str, roles: tuple[str, ...], groups: tuple[str, ...] = ("all",)
    ) -> Tenant:
        """Another user of ``tenant_id`` (its roles must be in the tenant's policy), with a key of their own."""
        await create_user(self.admin, self.operator, tenant_id, user_id, roles, groups)
        return await self._key(tenant_id, user_id)

    async def _key(self, tenant_id: str, user_id: str) -> Tenant:
        key_id, secret = await create_key(self.admin, self.operator, tenant_id, user_id)
        return Tenant(tenant_id, user_id, secret, key_id)

    async def set_policy(self, tenant_id: str, edit: tenant_policy_pb2.TenantPolicy) -> None:
        await update_policy(self.admin, self.operator, tenant_id, edit)

    async def ingest(
        self, tenant_id: str, documents: dict[str, tuple[str, str]], groups: tuple[str, ...] = ("all",)
    ) -> None:
        """documents: id -> (title, text)."""

        async def requests() -> AsyncIterator[Any]:
            for document_id, (title, body) in documents.items():
                yield retrieval_service_pb2.IngestDocumentsRequest(
                    document=document_pb2.Document(
                        document_id=document_id, title=title, mime_type="text/plain", access_groups=groups
                    ),
                    content=body.encode(),
                )

        reply = await self.retrieval.IngestDocuments(
            requests(), metadata=self.token(tenant_id, "alice", ("admin",), groups=groups), timeout=60
        )
        assert all(r.outcome != retrieval_service_pb2.DOCUMENT_OUTCOME_REJECTED for r in reply.results), reply

    async def stream(
        self,
        tenant: Tenant,
        request: chat_service_pb2.StreamChatRequest,
        *,
        stub: Any = None,
        seconds: float | None = 30,
        first_delta: asyncio.Event | None = None,
    ) -> Answer:
        """The whole answer; ``first_delta`` is set when its first text delta arrives (for a test that acts
        mid-answer without guessing when the answer started)."""
        answer = Answer()
        call = (stub or self.chat).StreamChat(request, metadata=tenant.metadata(), timeout=seconds)
        try:
            async for event in call:
                answer.events.append(event)
                if first_delta is not None and event.HasField("text_delta"):
                    first_delta.set()
        except grpc.aio.AioRpcError as error:
            answer.error = error_details(error)
        answer.trailers = {k: v for k, v in (await call.trailing_metadata() or ()) if isinstance(v, str)}
        return answer

    async def leave_after_first_delta(
        self, tenant: Tenant, request: chat_service_pb2.StreamChatRequest
    ) -> None:
        """A caller who reads the answer's first text delta, then cancels the call."""
        call = self.chat.StreamChat(request, metadata=tenant.metadata(), timeout=30)
        async for event in call:
            if event.HasField("text_delta"):
                break
        call.cancel()

    async def finished_job(self, tenant: Tenant, job_id: str, seconds: float = 60.0) -> job_pb2.Job:
        """Watch the job to its end (a gateway running job workers must be up), then the whole of it."""
        states = []
        async with asyncio.timeout(seconds):
            async for update in self.jobs.WatchJob(
                job_service_pb2.WatchJobRequest(job_id=job_id), metadata=tenant.metadata()
            ):
                states.append(update.job.state)
        assert states and states[-1] in JOB_TERMINAL, states
        reply = await self.jobs.GetJob(
            job_service_pb2.GetJobRequest(job_id=job_id, view=job_pb2.JOB_VIEW_FULL),
            metadata=tenant.metadata(),
        )
        job: job_pb2.Job = reply.job
        return job

    async def wait_rows(self, sql: str, *, seconds: float = 10.0, count: int = 1, **params: Any) -> list[Any]:
        """The rows of ``sql`` once there are at least ``count`` (the finaliser and consumers run after the answer)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            rows = await self.rows(sql, **params)
            if len(rows) >= count or loop.time() > deadline:
                return rows
            await asyncio.sleep(0.1)

    async def scalar(self, sql: str, **params: Any) -> Any:
        from sqlalchemy import text

        async with self.database.session() as session:
            return (await session.execute(text(sql), params)).scalar()

    async def rows(self, sql: str, **params: Any) -> list[Any]:
        from sqlalchemy import text

        async with self.database.session() as session:
            return list((await session.execute(text(sql), params)).all())

    @asynccontextmanager
    async def inference(self, **overrides: Any) -> AsyncIterator[str]:
        """Another inference service on the same suite with some settings changed; yields its address."""
        settings = self.inference_settings.model_copy(update=overrides)
        async with running(INFERENCE, settings) as (_server, port):
            yield f"127.0.0.1:{port}"

    @asynccontextmanager
    async def gateway(self, **overrides: Any) -> AsyncIterator[chat_service_pb2_grpc.ChatServiceStub]:
        """Another gateway on the same suite, with some settings changed (a peer pointed at nothing...)."""
        settings = GatewaySettings(**{**self.gateway_settings, **overrides})
        async with (
            running(GATEWAY, settings) as (_server, port),
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            yield chat_service_pb2_grpc.ChatServiceStub(channel)

    @asynccontextmanager
    async def stalled_stream(
        self, tenant: Tenant, *, deadline: float | None, **overrides: Any
    ) -> AsyncIterator[Any]:
        """A StreamChat of about 180 kB of answer (echoed back) whose caller reads the first delta, then stops
        reading: without BDP probing the client's window stays at 64 kB, so the gateway's writes wait once it
        is full. Yields the call; on leaving, the gateway's finaliser gets half a second before it stops.
        ``overrides`` are settings of the gateway it runs on."""
        long_answer = " ".join("x" * 99 for _ in range(1800))
        settings = GatewaySettings(
            **{**self.gateway_settings, "gateway_job_workers_enabled": False, **overrides}
        )
        async with (
            running(GATEWAY, settings) as (_server, port),
            grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.http2.bdp_probe", 0)]) as channel,
        ):
            call = chat_service_pb2_grpc.ChatServiceStub(channel).StreamChat(
                question(long_answer, model="gpt"), metadata=tenant.metadata(), timeout=deadline
            )
            async for event in call:
                if event.HasField("text_delta"):
                    break
            yield call
            await asyncio.sleep(0.5)


@pytest.fixture(scope="module")
def module_nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    # Our own NATS: the audit service's durable consumer would otherwise first read every record that other
    # modules left on the session's AUDIT stream. A test may stop and start it (an audit outage).
    server = EmbeddedNats(tmp_path_factory.mktemp("gateway-nats") / "store", free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def module_nats(module_nats_server: EmbeddedNats) -> str:
    return module_nats_server.url


@pytest.fixture(scope="module")
def main_gateway_overrides() -> dict[str, Any]:
    """Settings of the suite's own gateway that differ from ``Suite.gateway_settings`` (which the gateways a
    test starts get): a module overrides this fixture, e.g. to keep job items off the main gateway."""
    return {}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def suite(
    tmp_path_factory: pytest.TempPathFactory,
    database_url: str,
    module_nats: str,
    main_gateway_overrides: dict[str, Any],
) -> AsyncIterator[Suite]:
    import os

    os.environ.setdefault("GATEWAY_TEST_KEY", "sk-test")
    home = tmp_path_factory.mktemp("gateway-suite")
    identity = provision(home / "identity")
    assert identity.masking_key_file is not None
    masking_key = identity.masking_key_file.read_text().strip()
    base: dict[str, Any] = {
        "port": 0,
        "database_url": database_url,
        "nats_url": module_nats,
        "identity_jwks_file": identity.jwks_file,
        "shutdown_grace_seconds": 2.0,
        "health_interval_seconds": 0.5,
    }
    async with AsyncExitStack() as stack:
        upstream = await stack.enter_async_context(UpstreamServer())
        _auth, auth_port = await stack.enter_async_context(
            running(
                AUTH,
                AuthSettings(
                    **base,
                    auth_signing_key_file=identity.signing_key_file,
                    auth_outbox_interval_seconds=0.2,
                    auth_gateway_key_file=home / "identity" / "gateway.key",
                ),
            )
        )
        auth_address = f"127.0.0.1:{auth_port}"
        with_auth = {**base, "auth_address": auth_address}
        config_file = home / "inference.json"
        config_file.write_text(json.dumps(inference_config(upstream)))
        # The semantic cache is off here (a test that wants it starts its own inference): tests repeat
        # questions and expect the model to answer them.
        inference_settings = InferenceSettings(
            **with_auth, inference_config_file=config_file, cache_enabled=False, policy_cache_seconds=0.5
        )
        starts: list[tuple[str, Any, Any]] = [
            (
                "moderation",
                MODERATION,
                ModerationSettings(
                    **with_auth,
                    ner_enabled=False,
                    policy_cache_seconds=0.5,
                    masking_key=masking_key,
                ),
            ),
            (
                "metering",
                METERING,
                MeteringSettings(**with_auth, policy_cache_seconds=0.5, relay_interval_seconds=0.1),
            ),
            ("retrieval", RETRIEVAL, RetrievalSettings(**with_auth)),
            ("inference", INFERENCE, inference_settings),
            ("audit", AUDIT, AuditSettings(**with_auth, audit_checkpoint_interval_seconds=3600)),
        ]
        addresses = {"auth": auth_address}
        for name, app, settings in starts:
            _server, port = await stack.enter_async_context(running(app, settings))
            addresses[name] = f"127.0.0.1:{port}"
        gateway_settings = {
            **with_auth,
            **{f"{name}_address": address for name, address in addresses.items() if name != "auth"},
            "gateway_outbox_interval_seconds": 0.2,
            "gateway_policy_cache_seconds": 0.5,
            # Job workers run their items through this same flow, as the submitter (auth's delegation).
            "gateway_job_service_key_file": home / "identity" / "gateway.key",
            "gateway_job_sweep_seconds": 1.0,
        }
        gateway, gateway_port = await stack.enter_async_context(
            running(
                GATEWAY, GatewaySettings(**{**gateway_settings, **main_gateway_overrides}, metrics_port=0)
            )
        )
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{gateway_port}"))
        auth_channel = await stack.enter_async_context(grpc.aio.insecure_channel(auth_address))
        retrieval_channel = await stack.enter_async_context(grpc.aio.insecure_channel(addresses["retrieval"]))
        database = Database(database_url, "public")
        stack.push_async_callback(database.close)
        yield Suite(
            channel=channel,
            admin=tenant_admin_service_pb2_grpc.TenantAdminServiceStub(auth_channel),
            retrieval=retrieval_service_pb2_grpc.RetrievalServiceStub(retrieval_channel),
            signer=signer_for(identity.signing_key_file),
            upstream=upstream,
            database=database,
            gateway_settings=gateway_settings,
            addresses=addresses,
            inference_settings=inference_settings,
            metrics_port=gateway.metrics_port,
            gateway_address=f"127.0.0.1:{gateway_port}",
        )


def dead_address() -> str:
    return f"127.0.0.1:{free_port()}"
