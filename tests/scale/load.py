"""Steady load over real flows from a client process of its own, every call recorded with its method, status
and when it ran (``time.monotonic()``: one clock for every process of the machine).

``python -m tests.scale.load CONFIG.json`` runs until SIGTERM, then writes its ledger as JSON next to the
config (``Ledger.read`` loads it). A process of its own, not a task of the test: the test forks replicas
while the load runs, and forking a process whose gRPC threads are busy breaks the child's gRPC.

A worker calls each service the way the gateway does per request: authenticate the API key, reserve budget,
screen the input, retrieve context, complete (the local model), settle the usage (an event to billing) and
write an audit record to the audit stream over NATS; every other round it also asks the gateway itself for a
governed ``StreamChat`` (which makes the same calls, settles and audits on its own), now and then it records
over the audit RPC and reads billing's rollups. Calls go through the kit's typed clients, so they balance over the replicas and the kit
retries the methods the contract marks safe to repeat; nothing here retries anything.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio

from parapet import clients
from parapet.audit.v1 import audit_record_pb2, audit_service_pb2, interaction_pb2
from parapet.auth.v1 import auth_service_pb2
from parapet.billing.v1 import billing_service_pb2
from parapet.events import audit as audit_events
from parapet.gateway.v1 import chat_service_pb2
from parapet.inference.v1 import inference_service_pb2, message_pb2
from parapet.kit.bus import Bus
from parapet.metering.v1 import metering_service_pb2 as mpb
from parapet.moderation.v1 import moderation_service_pb2
from parapet.retrieval.v1 import retrieval_service_pb2
from parapet.usage.v1 import money_pb2

T = TypeVar("T")
CALL_TIMEOUT = 20.0  # generous: fourteen services share two cores with the test
QUESTION = "What is the refund window for annual plans?"


@dataclass(frozen=True)
class Call:
    method: str  # /package.Service/Method, or "nats:publish" for the audit stream
    code: str  # gRPC status code name, OK on success
    start: float  # time.monotonic()
    end: float
    # The failure's message (gRPC details or the exception), so a failed run says what happened.
    detail: str = ""


@dataclass
class Ledger:
    """What the load did: every call, and what must arrive (settled request ids, audit record ids)."""

    calls: list[Call] = field(default_factory=list)
    settled: set[str] = field(default_factory=set)
    audit_records: set[str] = field(default_factory=set)
    chats: set[str] = field(default_factory=set)  # request ids of the gateway chats that ended with a summary

    def failures(self) -> list[Call]:
        return [c for c in self.calls if c.code != "OK"]

    def count(self, since: float = 0.0, until: float = float("inf")) -> int:
        return sum(1 for c in self.calls if since <= c.start < until)

    def write(self, path: Path) -> None:
        document = {
            "calls": [asdict(c) for c in self.calls],
            "settled": sorted(self.settled),
            "audit_records": sorted(self.audit_records),
            "chats": sorted(self.chats),
        }
        path.write_text(json.dumps(document))

    @staticmethod
    def read(path: Path) -> Ledger:
        document = json.loads(path.read_text())
        return Ledger(
            [Call(**c) for c in document["calls"]],
            set(document["settled"]),
            set(document["audit_records"]),
            set(document["chats"]),
        )


@dataclass(frozen=True)
class Targets:
    auth: str
    metering: str
    moderation: str
    retrieval: str
    inference: str
    audit: str
    billing: str
    gateway: str
    nats_url: str


class Load:
    """``workers`` loops over the flow, each at most one round per ``pace`` seconds, until stopped."""

    def __init__(self, targets: Targets, api_key: str, tenant_id: str, *, workers: int, pace: float) -> None:
        self.targets = targets
        self.api_key = api_key
        self.tenant_id = tenant_id
        self.workers = workers
        self.pace = pace
        self.ledger = Ledger()
        self._stop = asyncio.Event()
        self._stack = AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        t = self.targets
        enter = self._stack.enter_async_context
        self.auth = (await enter(clients.auth(t.auth))).stub
        self.metering = (await enter(clients.metering(t.metering))).stub
        self.moderation = (await enter(clients.moderation(t.moderation))).stub
        self.retrieval = (await enter(clients.retrieval(t.retrieval))).stub
        self.inference = (await enter(clients.inference(t.inference))).stub
        self.audit = (await enter(clients.audit(t.audit))).stub
        self.billing = (await enter(clients.billing(t.billing))).stub
        self.chat = (await enter(clients.chat(t.gateway))).stub
        self.bus = await Bus.connect(t.nats_url)
        self._stack.push_async_callback(self.bus.close)
        self._tasks = [asyncio.create_task(self._worker(w)) for w in range(self.workers)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._stack.aclose()

    async def _call(self, method: str, call: Callable[[], Awaitable[T]]) -> T | None:
        start = time.monotonic()
        try:
            result = await call()
        except grpc.aio.AioRpcError as error:
            self.ledger.calls.append(
                Call(method, error.code().name, start, time.monotonic(), error.details() or "")
            )
            return None
        except Exception as error:  # a NATS publish that got no ack: a failure like any other
            self.ledger.calls.append(Call(method, type(error).__name__, start, time.monotonic(), str(error)))
            return None
        self.ledger.calls.append(Call(method, "OK", start, time.monotonic()))
        return result

    async def _worker(self, worker: int) -> None:
        round_number = 0
        while not self._stop.is_set():
            began = time.monotonic()
            await self._round(f"w{worker}-{round_number}", round_number)
            round_number += 1
            await asyncio.sleep(max(0.0, self.pace - (time.monotonic() - began)))

    async def _round(self, request_id: str, round_number: int) -> None:
        authenticated = await self._call(
            "/parapet.auth.v1.AuthService/Authenticate",
            lambda: self.auth.Authenticate(
                auth_service_pb2.AuthenticateRequest(api_key=self.api_key), timeout=CALL_TIMEOUT
            ),
        )
        if authenticated is None:
            return
        md = (("authorization", f"Bearer {authenticated.token}"), ("x-request-id", request_id))
        reserved = await self._call(
            "/parapet.metering.v1.MeteringService/Reserve",
            lambda: self.metering.Reserve(
                mpb.ReserveRequest(request_id=request_id, estimated_tokens=200),
                metadata=md,
                timeout=CALL_TIMEOUT,
            ),
        )
        if reserved is None:
            return
        await self._call(
            "/parapet.moderation.v1.ModerationService/ScreenInput",
            lambda: self.moderation.ScreenInput(
                moderation_service_pb2.ScreenInputRequest(texts=[QUESTION]), metadata=md, timeout=CALL_TIMEOUT
            ),
        )
        await self._call(
            "/parapet.retrieval.v1.RetrievalService/Query",
            lambda: self.retrieval.Query(
                retrieval_service_pb2.QueryRequest(query=QUESTION, top_k=3), metadata=md, timeout=CALL_TIMEOUT
            ),
        )
        completed = await self._call(
            "/parapet.inference.v1.InferenceService/Complete",
            lambda: self.inference.Complete(
                inference_service_pb2.CompleteRequest(
                    messages=[message_pb2.Message(role=message_pb2.ROLE_USER, content=QUESTION)],
                    request_id=request_id,
                ),
                metadata=md,
                timeout=CALL_TIMEOUT,
            ),
        )
        reservation_id = reserved.reservation.reservation_id
        if completed is None:
            # The model call failed: nothing was used, the hold goes back (Release is idempotent).
            await self._call(
                "/parapet.metering.v1.MeteringService/Release",
                lambda: self.metering.Release(
                    mpb.ReleaseRequest(reservation_id=reservation_id, reason="MODEL_CALL_FAILED"),
                    metadata=md,
                    timeout=CALL_TIMEOUT,
                ),
            )
            return
        summary = completed.summary
        settled = await self._call(
            "/parapet.metering.v1.MeteringService/Settle",
            lambda: self.metering.Settle(
                mpb.SettleRequest(
                    reservation_id=reservation_id,
                    request_id=request_id,
                    model=summary.routing.model,
                    provider=summary.routing.provider,
                    feature="scale-test",
                    usage=summary.usage,
                    cost=money_pb2.Money(currency_code="USD", amount_micros=summary.cost.amount_micros),
                ),
                metadata=md,
                timeout=CALL_TIMEOUT,
            ),
        )
        if settled is not None:
            self.ledger.settled.add(request_id)
        record = self._record(request_id, summary.routing.model)
        published = await self._call("nats:publish", lambda: self._publish(record))
        if published:
            self.ledger.audit_records.add(record.record_id)  # JetStream acknowledged it: it must arrive
        if round_number % 4 == 0:
            by_rpc = self._record(request_id + "-rpc", summary.routing.model)
            recorded = await self._call(
                "/parapet.audit.v1.AuditService/Record",
                lambda: self.audit.Record(
                    audit_service_pb2.RecordRequest(record=by_rpc), metadata=md, timeout=CALL_TIMEOUT
                ),
            )
            if recorded is not None:
                self.ledger.audit_records.add(by_rpc.record_id)
        if round_number % 2 == 0:
            chat = await self._call("/parapet.gateway.v1.ChatService/StreamChat", self._chat)
            if chat is not None:
                self.ledger.chats.add(chat)
        if round_number % 5 == 0:
            await self._call(
                "/parapet.billing.v1.BillingService/ListRollups",
                lambda: self.billing.ListRollups(
                    billing_service_pb2.ListRollupsRequest(), metadata=md, timeout=CALL_TIMEOUT
                ),
            )

    async def _chat(self) -> str:
        """One governed chat through the gateway with the API key; the request id of its summary."""
        request = chat_service_pb2.StreamChatRequest(
            messages=[message_pb2.Message(role=message_pb2.ROLE_USER, content=QUESTION)], feature="scale-test"
        )
        summary_id = ""
        md = (("authorization", f"Bearer {self.api_key}"),)
        async for event in self.chat.StreamChat(request, metadata=md, timeout=CALL_TIMEOUT):
            if event.HasField("summary"):
                summary_id = event.summary.request_id
        assert summary_id, "a chat stream that ended without its summary"
        return summary_id

    async def _publish(self, record: audit_record_pb2.AuditRecord) -> bool:
        await audit_events.publish(self.bus, record, source="/parapet/scale-test")
        return True

    def _record(self, request_id: str, model: str) -> audit_record_pb2.AuditRecord:
        record = audit_record_pb2.AuditRecord(
            record_id=str(uuid.uuid4()),
            tenant_id=self.tenant_id,
            interaction=interaction_pb2.Interaction(
                request_id=request_id,
                user_id="loader",
                model=model,
                body=interaction_pb2.InteractionBody(prompt=QUESTION, response="(scale test)"),
            ),
        )
        record.create_time.GetCurrentTime()
        return record


async def _main(config_path: Path, config: dict[str, Any]) -> None:
    load = Load(
        Targets(**config["targets"]),
        config["api_key"],
        config["tenant_id"],
        workers=config["workers"],
        pace=config["pace"],
    )
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    await load.start()
    await stopped.wait()
    await load.stop()
    await asyncio.to_thread(load.ledger.write, config_path.with_suffix(".ledger.json"))


if __name__ == "__main__":
    path = Path(sys.argv[1])
    asyncio.run(_main(path, json.loads(path.read_text())))
