"""Masking contexts between users and turns, and tenant blocked terms at their edges, over real channels with
policies from the real auth service."""

from __future__ import annotations

import unicodedata

import grpc
import grpc.aio
import pytest

from parapet.auth.v1 import tenant_policy_pb2
from parapet.kit.errors import error_details
from parapet.moderation.v1 import category_pb2 as C
from parapet.moderation.v1 import finding_pb2
from parapet.moderation.v1 import moderation_service_pb2 as pb
from tests.integration.moderation.conftest import MODULE, Suite

pytestmark = MODULE


def _refused_as_invalid_context(error: grpc.aio.AioRpcError, field: str = "masking_context") -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error_details(error)
    assert details.error_info is not None and details.error_info.reason == "MASKING_CONTEXT_INVALID"
    assert details.bad_request is not None
    assert [v.field for v in details.bad_request.field_violations] == [field]


async def test_another_users_masking_context_reveals_nothing(suite: Suite) -> None:
    """The context was bound to the tenant only: another user of the same tenant who got hold of it (a shared
    log, a proxy) read every value in it through Unmask, or in clear through ScreenInput's masked_values."""
    tenant = suite.tenant_id("tenant-a")
    owner, colleague = suite.auth.as_(tenant, "user-1"), suite.auth.as_(tenant, "user-2")
    screened = await suite.stub.ScreenInput(
        pb.ScreenInputRequest(texts=["mail maria@x.example"]), metadata=owner
    )
    context = screened.masking_context
    with pytest.raises(grpc.aio.AioRpcError) as unmask:
        await suite.stub.Unmask(
            pb.UnmaskRequest(text="<EMAIL_1>", masking_context=context), metadata=colleague
        )
    _refused_as_invalid_context(unmask.value)
    with pytest.raises(grpc.aio.AioRpcError) as next_turn:
        await suite.stub.ScreenInput(
            pb.ScreenInputRequest(texts=["hi"], masking_context=context, return_masked_values=True),
            metadata=colleague,
        )
    _refused_as_invalid_context(next_turn.value)
    with pytest.raises(grpc.aio.AioRpcError) as output:
        await suite.stub.ScreenOutput(
            pb.ScreenOutputRequest(text="<EMAIL_1>", masking_context=context), metadata=colleague
        )
    _refused_as_invalid_context(output.value)
    for error in (unmask.value, next_turn.value, output.value):
        assert "maria" not in (error.details() or "")
    # The owner restores it.
    restored = await suite.stub.Unmask(
        pb.UnmaskRequest(text="<EMAIL_1>", masking_context=context), metadata=owner
    )
    assert (restored.text, restored.restored_count) == ("maria@x.example", 1)


async def test_a_placeholder_typed_in_an_earlier_turn_is_never_issued_later(suite: Suite) -> None:
    """Turn 1 holds "<EMAIL_2>" as typed (a template) and gives its address "<EMAIL_1>"; turn 2 (with turn 1's
    context, its own text only) gave a new address "<EMAIL_2>", and restoring turned the template into it."""
    template = "Template: Dear <EMAIL_2>, thanks. Mine is a@x.example."
    turn1 = await suite.stub.ScreenInput(pb.ScreenInputRequest(texts=[template]), metadata=suite.metadata())
    assert list(turn1.sanitized_texts) == ["Template: Dear <EMAIL_2>, thanks. Mine is <EMAIL_1>."]
    turn2 = await suite.stub.ScreenInput(
        pb.ScreenInputRequest(texts=["My colleague is b@y.example."], masking_context=turn1.masking_context),
        metadata=suite.metadata(),
    )
    assert list(turn2.sanitized_texts) == ["My colleague is <EMAIL_3>."]
    answer = "Your template says Dear <EMAIL_2>; I will write to <EMAIL_3> and <EMAIL_1>."
    restored = await suite.stub.Unmask(
        pb.UnmaskRequest(text=answer, masking_context=turn2.masking_context), metadata=suite.metadata()
    )
    assert restored.text == "Your template says Dear <EMAIL_2>; I will write to b@y.example and a@x.example."
    assert restored.restored_count == 2


async def test_a_flagged_blocked_term_inside_an_address_leaves_the_address_masked_whole(suite: Suite) -> None:
    """A tenant that flags mentions of a competitor: the term inside an e-mail address beat the address in the
    overlap settling, though it replaces nothing, and the address went out as "<EMAIL_1>acme<EMAIL_2>"."""
    await suite.set_policy("tenant-a", tenant_policy_pb2.TenantPolicy(
        moderation=tenant_policy_pb2.ModerationPolicy(
            rules=[tenant_policy_pb2.ModerationRule(category=C.CATEGORY_BLOCKED_TERM, action=C.ACTION_FLAG)],
            blocked_terms=["acme"],
        ),
    ))  # fmt: skip
    text = "Please mail john.doe@acme.com about Acme pricing."
    screened = await suite.stub.ScreenInput(pb.ScreenInputRequest(texts=[text]), metadata=suite.metadata())
    assert list(screened.sanitized_texts) == ["Please mail <EMAIL_1> about Acme pricing."]
    assert dict(
        (await suite.stub.ScreenInput(
            pb.ScreenInputRequest(texts=[text], return_masked_values=True), metadata=suite.metadata()
        )).masked_values
    ) == {"<EMAIL_1>": "john.doe@acme.com"}  # fmt: skip
    flagged = [
        (f.start_offset, f.end_offset) for f in screened.findings if f.category == C.CATEGORY_BLOCKED_TERM
    ]
    assert flagged == [(21, 25), (36, 40)]  # both mentions still flagged
    output = await suite.stub.ScreenOutput(pb.ScreenOutputRequest(text=text), metadata=suite.metadata())
    assert output.text == "Please mail [REDACTED:EMAIL] about Acme pricing."


_CAFE_NFD = unicodedata.normalize("NFD", "Café")


@pytest.mark.parametrize(
    ("term", "text", "matched"),
    [
        ("Straße", "Wo ist die STRASSE?", "STRASSE"),  # full case folding: ß is "ss" in capitals
        ("STRASSE", "Wo ist die Straße?", "Straße"),
        ("café", f"Wir treffen uns im {_CAFE_NFD}.", _CAFE_NFD),  # decomposed text (macOS input, PDFs)
        (unicodedata.normalize("NFD", "café"), "Wir treffen uns im Café.", "Café"),  # decomposed term
        ("project falcon", "Tell me about Project  Falcon.", "Project  Falcon"),  # two spaces
        ("project falcon", "Tell me about Project\nFalcon.", "Project\nFalcon"),  # a line break
    ],
)
async def test_blocked_terms_match_whatever_case_and_unicode_form(
    suite: Suite, term: str, text: str, matched: str
) -> None:
    await suite.set_policy(
        "tenant-a",
        tenant_policy_pb2.TenantPolicy(moderation=tenant_policy_pb2.ModerationPolicy(blocked_terms=[term])),
    )
    screened = await suite.stub.ScreenInput(pb.ScreenInputRequest(texts=[text]), metadata=suite.metadata())
    assert screened.decision == finding_pb2.DECISION_BLOCK, (term, text)
    terms = [f for f in screened.findings if f.category == C.CATEGORY_BLOCKED_TERM]
    assert [text[f.start_offset : f.end_offset] for f in terms] == [matched]  # spans of the text as sent
    # The same word inside a longer one is no match, in any form.
    other = await suite.stub.ScreenInput(
        pb.ScreenInputRequest(texts=[f"x{matched.split()[-1]}y is fine"]), metadata=suite.metadata()
    )
    assert other.decision == finding_pb2.DECISION_PASS, (term, text)
