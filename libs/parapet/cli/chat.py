"""``parapet chat [QUESTION]``: the governed chat in a terminal, streamed as the gateway screens it.

Text deltas go to stdout as they arrive; citations follow the answer; notices and the one-line summary
(model, tokens, cost, cache, Parapet's own time) go to stderr, so ``parapet chat "..." > answer.txt`` keeps
only the answer. ``--json`` prints every StreamChatResponse as one JSON line instead. Without a question, a
REPL keeps the conversation (Ctrl-D ends it). Ctrl-C cancels the stream: the gateway cancels the model call
and settles what was produced; a single question then exits 130, the REPL drops that turn and goes on. An
answer the tenant's output screening stopped (finish reason content_filter) is said so on stderr and, for a
single question, exits 4: what reached stdout is not the answer.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass, field
from typing import TypeVar

from parapet import clients
from parapet.cli import connect, failures, inputs
from parapet.cli.printing import enum_label, money, print_json
from parapet.gateway.v1 import chat_pb2, chat_service_pb2
from parapet.inference.v1 import cache_pb2, generation_pb2, message_pb2
from parapet.retrieval.v1 import citation_pb2

PROMPT = "you> "
RequestT = TypeVar("RequestT", chat_service_pb2.StreamChatRequest, chat_service_pb2.ChatRequest)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="ask the gateway; the answer streams to the terminal (no question: a conversation)",
        description="StreamChat through the gateway with the credential's API key: retrieval over the "
        "tenant's documents, moderation, budgets and audit all apply. Needs `chat`.",
    )
    parser.add_argument("question", nargs="*", help="the question (omit it for a conversation)")
    parser.add_argument("--model", default="", help="model or alias (default: the tenant policy's default)")
    parser.add_argument("--no-retrieval", action="store_true", help="answer without the tenant's documents")
    parser.add_argument(
        "--feature", default="cli", help="product feature for budgets and usage (default: cli)"
    )
    parser.add_argument(
        "--max-tokens",
        type=inputs.whole_number(0, inputs.INT32_MAX),
        default=0,
        help="cap on the answer's tokens (0: the default)",
    )
    connect.add_arguments(parser, "gateway")
    parser.set_defaults(func=run, execute=ask_once)


def message(role: message_pb2.Role.ValueType, text: str) -> message_pb2.Message:
    return message_pb2.Message(role=role, content=text)


def build_request(
    args: argparse.Namespace,
    history: list[message_pb2.Message],
    kind: type[RequestT] = chat_service_pb2.StreamChatRequest,  # type: ignore[assignment]
) -> RequestT:
    """The chat request the command's flags describe: a StreamChatRequest, or the field-for-field equal
    ChatRequest (``kind``) that a job's items are."""
    mode = chat_pb2.RETRIEVAL_MODE_DISABLED if args.no_retrieval else chat_pb2.RETRIEVAL_MODE_ENABLED
    return kind(
        messages=history,
        model=args.model,
        retrieval=chat_pb2.RetrievalOptions(mode=mode),
        generation=generation_pb2.GenerationConfig(max_tokens=args.max_tokens) if args.max_tokens else None,
        feature=args.feature,
    )


def citation_line(number: int, citation: citation_pb2.Citation) -> str:
    title = citation.title or citation.document_id
    return f"[{number}] {title} ({citation.document_id})"


def distinct_documents(citations: list[citation_pb2.Citation]) -> list[citation_pb2.Citation]:
    """The best citation of each document, best first: a person reads sources, not chunks."""
    seen: set[str] = set()
    distinct = []
    for citation in citations:  # the gateway sends them best first
        if citation.document_id not in seen:
            seen.add(citation.document_id)
            distinct.append(citation)
    return distinct


def notice_line(notice: chat_pb2.Notice) -> str:
    return f"notice ({enum_label(chat_pb2.NoticeType, notice.type)}): {notice.message}"


def summary_line(summary: chat_pb2.ChatSummary) -> str:
    """model, tokens, cost, cache, Parapet's own time: what a person wants to know after an answer."""
    routing = summary.routing
    model = "/".join(part for part in (routing.provider, routing.model) if part) or "-"
    usage = summary.usage
    tokens = f"{usage.prompt_tokens}+{usage.completion_tokens} tokens" + (
        " (est.)" if usage.estimated else ""
    )
    cache = enum_label(cache_pb2.CacheOutcome, summary.cache.outcome) if summary.cache.outcome else "-"
    overhead = summary.parapet_duration.ToTimedelta().total_seconds() * 1000
    total = summary.duration.ToTimedelta().total_seconds() * 1000
    finish = enum_label(generation_pb2.FinishReason, summary.finish_reason)
    return (
        f"{model} · {tokens} · {money(summary.cost)} · cache {cache} · parapet {overhead:.1f} ms "
        f"of {total:.0f} ms · {finish} · request {summary.request_id}"
    )


@dataclass
class Answer:
    """What one streamed answer brought; ``text`` joins into the next turn's history."""

    text: list[str] = field(default_factory=list)
    citations: list[citation_pb2.Citation] = field(default_factory=list)
    summary: chat_pb2.ChatSummary | None = None


async def stream_answer(
    session: connect.Session, args: argparse.Namespace, history: list[message_pb2.Message]
) -> Answer:
    """One StreamChat, printed as it arrives; cancelling the task cancels the call."""
    stub = session.client(clients.chat, "gateway", streaming=True).stub
    answer = Answer()
    call = stub.StreamChat(build_request(args, history), metadata=session.key_metadata())
    try:
        async for event in call:
            kind = event.WhichOneof("event")
            if args.json:
                print_json(event, lines=True)
            if kind == "text_delta":
                answer.text.append(event.text_delta.text)
                if not args.json:
                    sys.stdout.write(event.text_delta.text)
                    sys.stdout.flush()
            elif kind == "citation":
                answer.citations.append(event.citation)
            elif kind == "notice" and not args.json:
                failures.say(notice_line(event.notice))
            elif kind == "summary":
                answer.summary = event.summary
    finally:
        # Cancelled (Ctrl-C) or failed mid-stream: tell the gateway, so it stops the model call now.
        call.cancel()
        if answer.text and not args.json:
            # End the answer's line, also when an error or "interrupted" follows on the same terminal (it was
            # glued to the last word of a cut answer).
            print(flush=True)
    if not args.json:
        if answer.citations:
            print("\nsources:")
            for number, citation in enumerate(distinct_documents(answer.citations), 1):
                print(citation_line(number, citation))
            sys.stdout.flush()
        if answer.summary is not None:
            failures.say(summary_line(answer.summary))
    if withheld(answer):
        failures.say(
            "parapet chat: the rest of the answer was withheld by the tenant's output screening "
            "(finish reason content_filter)"
        )
    return answer


def withheld(answer: Answer) -> bool:
    """Whether output screening stopped the answer: the stream ends OK, but what came is not the answer."""
    return (
        answer.summary is not None
        and answer.summary.finish_reason == generation_pb2.FINISH_REASON_CONTENT_FILTER
    )


def utf8_question(text: str) -> str:
    """``text`` if it can be sent; else a CliError. Bytes of a piped stdin that are not UTF-8 reach Python as
    lone surrogates, which protobuf cannot encode (a traceback until 2026-12-06; ``main`` checks argv)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise failures.CliError(
            "the question is not UTF-8 text (a terminal or file in another encoding?)"
        ) from None
    return text


async def ask_once(args: argparse.Namespace) -> int:
    question = " ".join(args.question).strip()
    if not question:
        raise failures.CliError("the question is empty")
    async with connect.Session.from_args(args) as session:
        answer = await stream_answer(session, args, [message(message_pb2.ROLE_USER, question)])
    # A withheld answer is no answer: `parapet chat "..." > answer.txt` must not exit 0 with part of one.
    return failures.EXIT_PROBLEM_FOUND if withheld(answer) else failures.EXIT_OK


def run(args: argparse.Namespace) -> int:
    """A question: one streamed answer. None: a conversation, one event loop per turn, so Ctrl-C during an
    answer cancels just that answer (asyncio.run turns SIGINT into cancelling the running turn)."""
    if args.question:
        return failures.run(args)
    try:
        return converse(args)
    except KeyboardInterrupt:  # at the prompt, or between an answer and the next prompt
        print()
        return failures.EXIT_INTERRUPTED


def converse(args: argparse.Namespace) -> int:
    """The conversation; at its end, the exit code of the last question that failed (0: all answered), so that
    ``parapet chat < questions > answers`` does not exit 0 when answers are missing."""
    history: list[message_pb2.Message] = []
    outcome = failures.EXIT_OK
    failures.say("parapet chat: ask away; Ctrl-C cancels an answer, Ctrl-D ends the conversation")
    # The prompt is for a person at a terminal: questions piped in get answers on stdout and nothing else,
    # so `parapet chat < questions > answers` keeps only the answers.
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = input(PROMPT if interactive else "").strip()
        except EOFError:
            if interactive:
                print()  # end the prompt's line
            return outcome
        if not line:
            continue
        try:
            utf8_question(line)
        except failures.CliError as exc:
            failures.say(f"parapet chat: {exc}; skipped")
            outcome = exc.code
            continue
        turn = [*history, message(message_pb2.ROLE_USER, line)]
        try:
            answer = asyncio.run(_turn(args, turn))
        except KeyboardInterrupt:
            failures.say("(cancelled; that question is dropped from the conversation)")
            continue
        if isinstance(answer, int):
            if answer == failures.EXIT_USAGE:
                return answer
            outcome = answer  # the error was printed; the conversation goes on without that turn
            continue
        if withheld(answer):
            outcome = failures.EXIT_PROBLEM_FOUND
        history = [*turn, message(message_pb2.ROLE_ASSISTANT, "".join(answer.text))]


async def _turn(args: argparse.Namespace, turn: list[message_pb2.Message]) -> Answer | int:
    async def one(_: argparse.Namespace) -> int:
        async with connect.Session.from_args(args) as session:
            result.append(await stream_answer(session, args, turn))
        return failures.EXIT_OK

    result: list[Answer] = []
    code = await failures.run_async(argparse.Namespace(**{**vars(args), "execute": one}))
    return result[0] if result else code
