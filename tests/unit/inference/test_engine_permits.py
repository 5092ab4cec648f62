"""The engine and the breaker together, with no server: every permit the engine takes is settled, whatever
the point at which its caller goes away."""

from __future__ import annotations

from parapet.inference.v1 import inference_service_pb2, message_pb2
from parapet.kit.context import principal_var
from parapet.kit.identity import Principal
from services.inference.config import parse_config
from services.inference.engine import Engine
from services.inference.policy import OpenPolicySource
from services.inference.prompts import PromptLibrary
from services.inference.providers.registry import build_providers
from services.inference.resilience.breaker import Breakers
from services.inference.settings import DEFAULT_PROMPTS_DIR


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _engine(clock: Clock) -> Engine:
    config = parse_config(
        {
            "default_model": "local",
            "providers": {"local": {"kind": "local"}},
            "models": [{"name": "local", "provider": "local"}],
            "breaker": {"window": 1, "min_calls": 1, "open_seconds": 10, "half_open_calls": 1},
        },
        environ={},
    )
    return Engine(
        config,
        build_providers(config),
        Breakers(config.breaker, clock),
        PromptLibrary(DEFAULT_PROMPTS_DIR),
        OpenPolicySource(),
        None,
        "grounded-answer",
    )


async def test_a_caller_leaving_at_the_prompt_announcement_frees_the_half_open_trial() -> None:
    """The gateway asks for PromptSent; a caller that goes away while it is sent (before the provider call)
    used to keep the half-open breaker's only trial slot for ever: no trial could run again, so the model
    was skipped as CIRCUIT_OPEN by every later request, with nothing left to close the breaker."""
    clock = Clock()
    engine = _engine(clock)
    breaker = engine.breakers.get("local", "local")
    permit = breaker.allow()
    assert permit is not None
    breaker.record(permit, False)  # one failure of one: open
    clock.now += 11  # half-open: one trial may run
    request = inference_service_pb2.StreamCompleteRequest(
        messages=[message_pb2.Message(role=message_pb2.ROLE_USER, content="hello?")], report_prompt_sent=True
    )
    token = principal_var.set(Principal(tenant_id="t", subject="u", roles=("member",)))
    try:
        stream = engine.stream(request)
        first = await anext(stream)
        assert first.HasField("prompt_sent")
        await stream.aclose()  # type: ignore[attr-defined]  # an async generator
        # The caller left right there (its stream was closed): the trial never reached the provider.
    finally:
        principal_var.reset(token)
    assert breaker.state == "half_open"
    assert breaker.allow() is not None, "the unused trial slot must go to the next caller"
