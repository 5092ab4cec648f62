"""Exact cost from a price table: Decimal prices per million tokens, integer micro-units out.

Prices are per million tokens in currency units, so the cost of ``n`` tokens in micro-units is exactly
``n * price``: no float ever touches money. Sums are kept exact and rounded once (half up) to whole micros.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from services.inference.config import ModelConfig
from services.inference.providers.base import Usage


def cost_micros_exact(model: ModelConfig, usage: Usage) -> Decimal:
    cached_price = (
        model.cached_input_price_per_million
        if model.cached_input_price_per_million is not None
        else model.input_price_per_million
    )
    uncached = max(usage.prompt_tokens - usage.cached_tokens, 0)
    return (
        uncached * model.input_price_per_million
        + usage.cached_tokens * cached_price
        + usage.completion_tokens * model.output_price_per_million
    )


def to_micros(amount: Decimal) -> int:
    return int(amount.quantize(Decimal(1), rounding=ROUND_HALF_UP))
