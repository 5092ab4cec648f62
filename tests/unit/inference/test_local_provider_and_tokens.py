"""The deterministic local provider and the offline token counter."""

from __future__ import annotations

from parapet import tokens
from services.inference.providers.base import Delta, Finish, PromptMessage, ProviderRequest
from services.inference.providers.local import LocalProvider


async def _run(request: ProviderRequest) -> tuple[list[str], Finish]:
    deltas: list[str] = []
    finish = None
    async for event in LocalProvider("local").stream(request):
        if isinstance(event, Delta):
            deltas.append(event.text)
        else:
            finish = event
    assert isinstance(finish, Finish)
    return deltas, finish


async def test_answers_from_the_best_matching_context_deterministically() -> None:
    request = ProviderRequest(
        model="local",
        system="",
        messages=(PromptMessage("user", "When does the office open?"),),
        context=(("Hours", "The office opens at 9. Lunch is at noon."), ("Parking", "Parking is free.")),
    )
    first, finish = await _run(request)
    second, _ = await _run(request)
    assert first == second and len(first) > 3
    assert "".join(first).startswith("The office opens at 9. [Hours]")
    assert finish.reason == "stop" and finish.usage is None


async def test_max_tokens_cuts_with_finish_length() -> None:
    request = ProviderRequest(
        model="local", system="", messages=(PromptMessage("user", "a b c d e f g"),), max_tokens=4
    )
    deltas, finish = await _run(request)
    assert finish.reason == "length"
    assert tokens.count("".join(deltas)) <= 4


async def test_max_tokens_keeps_the_most_words_that_fit_however_long_the_answer() -> None:
    """The cut keeps exactly the leading words that fit, as counting each prefix in turn did (which was quadratic
    in the answer's length: every word recounted the whole text before it)."""
    text = " ".join(f"word{i % 97}-{i}" for i in range(3000))
    for limit in (1, 7, 500, 4000):
        request = ProviderRequest(
            model="local", system="", messages=(PromptMessage("user", text),), max_tokens=limit
        )
        deltas, finish = await _run(request)
        kept = "".join(deltas)
        words = kept.split(" ")
        answer = (await _run(ProviderRequest(model="local", system="", messages=request.messages)))[0]
        full = "".join(answer).split(" ")
        assert finish.reason == "length" and tokens.count(kept) <= limit
        # One more word would not have fitted.
        assert tokens.count(" ".join(full[: len(words) + 1])) > limit
        assert full[: len(words)] == words


def test_token_counts_match_the_encodings() -> None:
    assert tokens.count("hello world") == 2
    assert tokens.count("") == 0
    assert tokens.encoding_for_model("gpt-4o-mini") == "o200k_base"
    assert tokens.encoding_for_model("gpt-4") == "cl100k_base"
    assert tokens.count_many(["a", "hello world"]) == [1, 2]
    # OpenAI chat framing: 3 per message + 3 for the reply.
    assert tokens.count_chat([("user", "hello world")]) == 2 + 1 + 3 + 3
