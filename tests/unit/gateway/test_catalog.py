"""Which models a budget hold prices: every model a request may be answered by (ListModels says which)."""

from __future__ import annotations

from parapet.inference.v1 import model_pb2
from parapet.usage.v1 import money_pb2
from services.gateway.catalog import answering_models


def _model(
    name: str, output_price: int, *, aliases: tuple[str, ...] = (), fallbacks: tuple[str, ...] = ()
) -> model_pb2.Model:
    return model_pb2.Model(
        model=name,
        aliases=list(aliases),
        fallbacks=list(fallbacks),
        output_price_per_million=money_pb2.Money(currency_code="USD", amount_micros=output_price),
    )


MODELS = (
    _model("cheap", 1, aliases=("fast",), fallbacks=("pricey",)),
    _model("pricey", 60, aliases=("fast",)),
    _model("other", 5),
)


def test_a_model_s_candidates_are_itself_and_its_fallbacks() -> None:
    assert [m.model for m in answering_models(MODELS, "cheap")] == ["cheap", "pricey"]
    assert [m.model for m in answering_models(MODELS, "pricey")] == ["pricey"]
    assert [m.model for m in answering_models(MODELS, "fast")] == ["cheap", "pricey"]
    assert [m.model for m in answering_models(MODELS, "unknown")] == ["cheap", "pricey", "other"]
