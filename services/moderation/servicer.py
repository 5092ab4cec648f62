"""The gRPC face of moderation: ScreenInput, ScreenOutput, ScreenStream and Unmask.

The tenant is the verified caller's (``require_principal``); its policy comes from the policy source.
Screening with the NER model runs on one worker thread (spaCy pipelines are not shared between threads,
and the event loop stays free for streams); pattern-only screening runs inline, it takes microseconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import grpc.aio

from parapet.kit.context import require_principal
from parapet.kit.errors import InvalidArgument
from parapet.moderation.v1 import (
    finding_pb2,
    moderation_service_pb2,
    moderation_service_pb2_grpc,
)
from services.moderation.engine import Screened, record_findings, to_finding
from services.moderation.masking import ContextSealer, MaskingVault, owner
from services.moderation.policy_source import PolicySource
from services.moderation.screener import Screener
from services.moderation.stream import StreamScreener

T = TypeVar("T")
pb = moderation_service_pb2


class ModerationServicer(moderation_service_pb2_grpc.ModerationServiceServicer):
    def __init__(
        self,
        screener: Screener,
        sealer: ContextSealer,
        policies: PolicySource,
        *,
        max_text_chars: int,
        max_input_chars: int,
        max_texts: int,
        max_protected_texts: int,
    ) -> None:
        self._screener = screener
        self._sealer = sealer
        self._policies = policies
        self._max = max_text_chars
        self._max_input = max_input_chars
        self._max_texts = max_texts
        self._max_protected = max_protected_texts
        self._ner_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moderation-ner")

    def close(self) -> None:
        self._ner_thread.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._screener.names is None:
            return fn()
        return await asyncio.get_running_loop().run_in_executor(self._ner_thread, fn)

    def _check_length(self, field: str, length: int, limit: int | None = None) -> None:
        limit = self._max if limit is None else limit
        if length > limit:
            raise InvalidArgument(
                f"{field} is longer than {limit} characters",
                field_violations=[(field, f"at most {limit} characters")],
                reason="TEXT_TOO_LONG",
            )

    @staticmethod
    def _check_count(field: str, count: int, limit: int) -> None:
        """The length limit does not bound the number of texts, and each costs its own work (a screening,
        a matcher entry) however short it is: checked first, before anything is opened or screened."""
        if count > limit:
            raise InvalidArgument(
                f"{field} holds more than {limit} texts",
                field_violations=[(field, f"at most {limit} texts")],
                reason="TOO_MANY_TEXTS",
            )

    def _check_protected(self, field: str, protected_texts: Sequence[str]) -> None:
        # Matched against the whole output, or every chunk of a stream: bounded like the output itself.
        self._check_count(field, len(protected_texts), self._max_protected)
        self._check_length(field, sum(len(t) for t in protected_texts))

    async def ScreenInput(
        self, request: pb.ScreenInputRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScreenInputResponse:
        tenant, caller = _caller()
        if not request.texts:
            raise InvalidArgument("texts must hold at least one text", field_violations=[("texts", "empty")])
        self._check_count("texts", len(request.texts), self._max_texts)
        # Each text within the longest text, and all of them within the input's total: until 2026-12-06 the
        # total was the longest text's 200,000, and a chat the gateway's contract admits (two messages of
        # 199,000 characters) was refused after its budget hold and retrieval had run.
        for index, text in enumerate(request.texts):
            self._check_length(f"texts[{index}]", len(text))
        self._check_length("texts", sum(len(t) for t in request.texts), self._max_input)
        vault = self._sealer.open(request.masking_context, caller)
        policy = await self._policies.policy(tenant)
        texts = list(request.texts)

        def screen() -> list[Screened]:
            for text in texts:  # before any value is masked: numbering runs across the texts
                vault.avoid_typed(text)
            return [self._screener.screen_input(text, policy, vault) for text in texts]

        results = await self._run(screen)
        findings = [f for index, r in enumerate(results) for f in r.findings(index)]
        record_findings(findings, "input")
        blocked = any(r.decision == finding_pb2.DECISION_BLOCK for r in results)
        if blocked:
            return pb.ScreenInputResponse(decision=finding_pb2.DECISION_BLOCK, findings=findings)
        modified = any(r.decision == finding_pb2.DECISION_MODIFIED for r in results)
        return pb.ScreenInputResponse(
            decision=finding_pb2.DECISION_MODIFIED if modified else finding_pb2.DECISION_PASS,
            sanitized_texts=[r.text for r in results],
            findings=findings,
            masking_context=self._sealer.seal(vault, caller),
            masked_values=vault.values if request.return_masked_values else {},
        )

    async def ScreenOutput(
        self, request: pb.ScreenOutputRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScreenOutputResponse:
        tenant, caller = _caller()
        self._check_length("text", len(request.text))
        self._check_protected("protected_texts", request.protected_texts)
        vault = self._sealer.open(request.masking_context, caller)
        policy = await self._policies.policy(tenant)
        screened = self._screener.screen_output(request.text, policy, request.protected_texts)
        findings = screened.findings()
        record_findings(findings, "output")
        text = "" if screened.decision == finding_pb2.DECISION_BLOCK else vault.restore(screened.text)[0]
        return pb.ScreenOutputResponse(decision=screened.decision, text=text, findings=findings)  # type: ignore[arg-type]

    async def Unmask(self, request: pb.UnmaskRequest, context: grpc.aio.ServicerContext) -> pb.UnmaskResponse:
        _tenant, caller = _caller()
        if not request.masking_context:
            raise InvalidArgument(
                "masking_context is required", field_violations=[("masking_context", "empty")]
            )
        self._check_length("text", len(request.text))
        vault = self._sealer.open(request.masking_context, caller)
        text, restored = vault.restore(request.text)
        return pb.UnmaskResponse(text=text, restored_count=restored)

    async def ScreenStream(
        self, request_iterator: AsyncIterator[pb.ScreenStreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ScreenStreamResponse]:
        tenant, caller = _caller()
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("kind") != "config":
            raise InvalidArgument(
                "the first message of ScreenStream must carry the config",
                field_violations=[("config", "must be the first message")],
            )
        config = first.config
        self._check_protected("config.protected_texts", config.protected_texts)
        vault: MaskingVault = self._sealer.open(config.masking_context, caller, "config.masking_context")
        policy = await self._policies.policy(tenant)
        detectors = self._screener.output_detectors(policy, config.protected_texts)
        screener = StreamScreener(detectors, policy, vault)
        async for message in request_iterator:
            kind = message.WhichOneof("kind")
            if kind == "config":
                raise InvalidArgument(
                    "config may only be sent once, first", field_violations=[("config", "sent twice")]
                )
            if kind == "end":
                break
            if kind != "chunk":
                raise InvalidArgument(
                    "a message must carry a chunk or end", field_violations=[("kind", "unset")]
                )
            self._check_length("chunk", screener.received_chars + len(message.chunk))
            step = screener.feed(message.chunk)
            record_findings(step.findings, "output")
            for finding in step.findings:
                yield pb.ScreenStreamResponse(finding=finding)
            if step.blocked:
                yield self._summary(screener)
                return
            # Always, even empty: the answer to this chunk, which lets the caller pace its writes.
            yield pb.ScreenStreamResponse(safe_chunk=step.released)
        step = screener.finish()
        record_findings(step.findings, "output")
        for finding in step.findings:
            yield pb.ScreenStreamResponse(finding=finding)
        if step.released:
            yield pb.ScreenStreamResponse(safe_chunk=step.released)
        yield self._summary(screener)

    @staticmethod
    def _summary(screener: StreamScreener) -> pb.ScreenStreamResponse:
        return pb.ScreenStreamResponse(
            summary=pb.ScreenStreamSummary(
                decision=screener.decision(),  # type: ignore[arg-type]
                findings=[to_finding(a) for a in screener.applied],
                received_chars=screener.received_chars,
                released_chars=screener.released_chars,
            )
        )


def _caller() -> tuple[str, str]:
    """The verified caller's tenant, and the owner (``masking.owner``) its masking contexts are bound to."""
    principal = require_principal()
    return principal.tenant_id, owner(principal.tenant_id, principal.subject)
