"""The gRPC face of the engine: StreamComplete, Complete, ListModels, and DeleteCacheEntries (erasure)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import grpc.aio

from parapet.inference.v1 import (
    inference_service_pb2,
    inference_service_pb2_grpc,
    model_pb2,
)
from parapet.kit import paging
from parapet.kit.context import require_principal
from parapet.kit.permissions import erasure_target
from parapet.usage.v1 import money_pb2
from services.inference.config import InferenceConfig
from services.inference.engine import Engine

# How long DeleteCacheEntries waits for this replica's pending cache writes (each is an embedding and an INSERT).
_PENDING_WRITES_SECONDS = 2.0

_STATES = {
    "closed": model_pb2.CIRCUIT_STATE_CLOSED,
    "open": model_pb2.CIRCUIT_STATE_OPEN,
    "half_open": model_pb2.CIRCUIT_STATE_HALF_OPEN,
}


class InferenceServicer(inference_service_pb2_grpc.InferenceServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def StreamComplete(
        self, request: inference_service_pb2.StreamCompleteRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_service_pb2.StreamCompleteResponse]:
        # Bursts of provider deltas arrive merged already (engine.py, kit/coalesce.py).
        async for message in self.engine.stream(request):
            yield message

    async def Complete(
        self, request: inference_service_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> inference_service_pb2.CompleteResponse:
        response = inference_service_pb2.CompleteResponse()
        parts: list[str] = []
        async for message in self.engine.stream(request):
            if message.HasField("text_delta"):
                parts.append(message.text_delta.text)
            else:
                response.summary.CopyFrom(message.summary)
        response.text = "".join(parts)
        return response

    async def ListModels(
        self, request: inference_service_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> inference_service_pb2.ListModelsResponse:
        principal = require_principal()
        size = paging.page_size(request.page_size, default=50)
        # The models a caller may see depend on its tenant's policy: a token is the caller's own.
        query = paging.query_key(request, principal.tenant_id, principal.subject)
        after = paging.decode_text(request.page_token, query) or ""
        access = await self.engine.policy.model_access(principal.tenant_id)
        config = self.engine.config
        permitted = self.engine.router.permitted(access)
        names = sorted(m.name for m in config.models if permitted is None or m.name in permitted)
        reaches = _reach(config)
        page = [n for n in names if n > after][:size]
        response = inference_service_pb2.ListModelsResponse()
        currency = config.currency
        for name in page:
            model = config.model(name)
            assert model is not None
            cached_price = (
                model.cached_input_price_per_million
                if model.cached_input_price_per_million is not None
                else model.input_price_per_million
            )
            response.models.append(
                model_pb2.Model(
                    model=model.name,
                    provider=model.provider,
                    aliases=[r.name for r in config.routes if model.name in reaches[r.name]],
                    context_window_tokens=model.context_window_tokens,
                    max_output_tokens=model.max_output_tokens,
                    input_price_per_million=_money(currency, model.input_price_per_million),
                    output_price_per_million=_money(currency, model.output_price_per_million),
                    cached_input_price_per_million=_money(currency, cached_price),
                    circuit_state=_STATES[self.engine.breakers.get(model.provider, model.name).state],
                    fallbacks=[f for f in model.fallbacks if permitted is None or f in permitted],
                )
            )
        if len(page) == size and page and page[-1] != names[-1]:
            response.next_page_token = paging.encode([page[-1]], query)
        return response

    async def DeleteCacheEntries(
        self, request: inference_service_pb2.DeleteCacheEntriesRequest, context: grpc.aio.ServicerContext
    ) -> inference_service_pb2.DeleteCacheEntriesResponse:
        principal = require_principal()
        user_id = erasure_target(principal, request, everything="all_entries", what="cached answers")
        cache = self.engine.cache
        if cache is None:
            return inference_service_pb2.DeleteCacheEntriesResponse()  # no cache configured: nothing is kept
        # This replica's answers still being written (after their summary went out) land first, so that a
        # chat that just ended is reached too; bounded, as a write waits on the embedding and the database.
        await self.engine.settle_writes(_PENDING_WRITES_SECONDS)
        if user_id is not None:
            deleted = await cache.forget_user(principal.tenant_id, user_id)
        else:
            deleted = await cache.forget_tenant(principal.tenant_id)
        return inference_service_pb2.DeleteCacheEntriesResponse(deleted_count=deleted)


def _money(currency: str, units: Decimal) -> money_pb2.Money:
    return money_pb2.Money(currency_code=currency, amount_micros=int(units * 1_000_000))


def _reach(config: InferenceConfig) -> dict[str, frozenset[str]]:
    """Every model each route's requests can be answered by: its picks and fallbacks, and the picks' own
    fallbacks (routing.Router.plan's chain: the pick, the route's fallbacks, the pick's). A budget hold for the
    route must price all of them."""
    reach: dict[str, frozenset[str]] = {}
    for route in config.routes:
        names = set(route.candidates())
        for pick in route.picks():
            model = config.model(pick)
            if model is not None:
                names.update(model.fallbacks)
        reach[route.name] = frozenset(names)
    return reach
