"""Model prices and limits for budget reservations, from inference's ListModels, cached per tenant.

A reservation must hold at least what the answer can cost before the model runs. When the request names a
route whose model is chosen later (complexity, canary), or nothing, the most expensive model the tenant may
use is priced, so the hold is an upper bound and a budget is never overspent by more than one request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import grpc.aio

from parapet.inference.v1 import inference_service_pb2, model_pb2
from parapet.usage.v1 import money_pb2
from services.auth.cache import TenantKeyedCache
from services.gateway.caller import Caller
from services.gateway.errors import relayed
from services.gateway.peers import Peers
from services.gateway.settings import GatewaySettings


@dataclass(frozen=True)
class Estimate:
    tokens: int
    cost: money_pb2.Money
    max_output_tokens: int  # the model's own output limit; 0 = unknown
    # The price list the hold was priced from: what a chat cut short is billed by (``price``).
    models: tuple[model_pb2.Model, ...] = ()


def _price(model: model_pb2.Model, prompt_tokens: int, output_tokens: int) -> int:
    micros = (
        prompt_tokens * model.input_price_per_million.amount_micros
        + output_tokens * model.output_price_per_million.amount_micros
    )
    return math.ceil(micros / 1_000_000)


def answering_models(models: tuple[model_pb2.Model, ...], name: str) -> list[model_pb2.Model]:
    """The models a request for ``name`` may be answered by: a model and its fallbacks, or those listing it as an
    alias (inference lists a route on every model its chain can reach); all when unknown. Before 2026-12-06 a
    model's own fallbacks were left out, so a hold priced at a cheap model was overspent by its pricier
    fallback."""
    direct = next((m for m in models if name and m.model == name), None)
    if direct is not None:
        reached = {direct.model, *direct.fallbacks}
        return [m for m in models if m.model in reached]
    return [m for m in models if name in m.aliases] or list(models)


class ModelCatalog:
    def __init__(self, peers: Peers, settings: GatewaySettings) -> None:
        self._peers = peers
        self._timeout = settings.gateway_downstream_timeout_seconds
        self._cache: TenantKeyedCache[tuple[model_pb2.Model, ...]] = TenantKeyedCache(
            10_000, settings.gateway_models_cache_seconds
        )

    async def models(self, caller: Caller) -> tuple[model_pb2.Model, ...]:
        found = self._cache.get(caller.tenant_id)
        if found is not None:
            return found
        generation = self._cache.generation(caller.tenant_id)
        models: list[model_pb2.Model] = []
        token = ""
        try:
            while True:
                reply = await self._peers.inference.stub.ListModels(
                    inference_service_pb2.ListModelsRequest(page_size=1000, page_token=token),
                    metadata=caller.auth_metadata(),
                    timeout=self._timeout,
                )
                models.extend(reply.models)
                token = reply.next_page_token
                if not token:
                    break
        except grpc.aio.AioRpcError as error:
            raise relayed(error) from None
        result = tuple(models)
        self._cache.put(caller.tenant_id, caller.tenant_id, result, generation=generation)
        return result

    async def estimate(self, caller: Caller, name: str, prompt_tokens: int, output_tokens: int) -> Estimate:
        models = await self.models(caller)
        candidates = answering_models(models, name)
        # Inference caps each call's max_tokens at that model's own output limit, and any listed model may
        # answer as another's fallback: no call writes more than the largest limit. Reserving the caller's
        # figure instead refused a max_tokens of 100,000 under a 20,000-token budget with nothing spent.
        limits = [m.max_output_tokens for m in models]
        if limits and min(limits) > 0:
            output_tokens = min(output_tokens, max(limits))
        if not candidates:
            return Estimate(prompt_tokens + output_tokens, money_pb2.Money(), 0, models)
        cost = _costliest(candidates, prompt_tokens, output_tokens)
        return Estimate(
            prompt_tokens + output_tokens, cost, max(m.max_output_tokens for m in candidates), models
        )

    def invalidate_tenant(self, tenant_id: str) -> None:
        self._cache.invalidate_tenant(tenant_id)


def _costliest(candidates: list[model_pb2.Model], prompt_tokens: int, output_tokens: int) -> money_pb2.Money:
    """The cost of the costliest of ``candidates`` (one at least) for these tokens; no Money without a price."""
    model = max(candidates, key=lambda m: _price(m, prompt_tokens, output_tokens))
    currency = model.output_price_per_million.currency_code or model.input_price_per_million.currency_code
    if not currency:
        return money_pb2.Money()
    return money_pb2.Money(currency_code=currency, amount_micros=_price(model, prompt_tokens, output_tokens))


def price(
    models: tuple[model_pb2.Model, ...], name: str, prompt_tokens: int, output_tokens: int
) -> money_pb2.Money:
    """The cost of usage counted in the gateway (no provider figure), from ``models``: the price list the chat's
    hold was priced from (``Estimate.models``), so a chat cut short costs no wait on inference. ``name`` is the
    model inference announced, priced as itself (not its fallbacks); for an alias, the costliest model it may run
    on, as the reservation assumed. No Money when nothing is known. Until 2026-12-06 the prices came from the
    catalog's cache alone, and a chat cut short after it had expired (60 s, a long answer's time) or after a
    change of the tenant had dropped it was billed its tokens at no cost."""
    candidates = [m for m in models if m.model == name] or answering_models(models, name)
    return _costliest(candidates, prompt_tokens, output_tokens) if candidates else money_pb2.Money()
