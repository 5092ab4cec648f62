"""What the emulator does wrong for one request, parsed from ``key=value`` pairs separated by ``;``.

The spec travels in the model name after the first ``;`` (``echo;status=503;times=2``) or in the
``x-upstream-fault`` header; the header wins where both set a key. Keys:

- ``status=429|500|503|...``: answer with that HTTP status and a wire-format error body
- ``retry_after=SECONDS``: the ``Retry-After`` header of such an answer
- ``times=N``: apply the fault only to the first N requests with this exact spec (then answer normally);
  pair it with ``tag=...`` to keep tests apart
- ``reset``: close the connection without answering (the client sees a connection error)
- ``first_token_delay=SECONDS``: wait before the first content chunk (headers are sent at once)
- ``chunk_delay=SECONDS``: wait before every later chunk
- ``cut_after=N``: close the stream after N content chunks, without a finish or a terminator
- ``malformed_after=N``: send an event that is not JSON after N content chunks, then stop
- ``error_after=N``: send an error event after N content chunks (a stream that began with 200 reporting a
  failure, as providers do when rate-limited or overloaded mid-answer), then end the stream
- ``error_type=TYPE``: that event's error type (default ``api_error``; e.g. ``rate_limit_error``,
  ``overloaded_error`` for Anthropic, ``rate_limit_exceeded``, ``server_error`` for OpenAI); with ``status``,
  the error body's type instead of the API's usual one for that status (OpenAI's ``code`` too: e.g.
  ``status=429;error_type=insufficient_quota``, an exhausted account)
- ``prompt_tokens=N``: the prompt's tokens the usage reports, instead of the emulator's own count (a
  provider's tokenizer counts differently from Parapet's offline estimate)
- ``cache_read=N`` / ``cache_write=N``: of the prompt's tokens, those reported read from and written to the
  provider's prompt cache (Anthropic's ``cache_read_input_tokens`` / ``cache_creation_input_tokens``, which its
  ``input_tokens`` leaves out; OpenAI's ``prompt_tokens_details.cached_tokens`` for reads)
- ``omit_usage``: report no usage (non-streaming answers too)
- ``finish=stop|length``: the finish reason reported, in the API's own word (OpenAI ``stop``/``length``,
  Anthropic ``end_turn``/``max_tokens``); any other value is reported as it is (``finish=refusal``,
  ``finish=model_context_window_exceeded``, ``finish=abort``), as providers add reasons of their own
- ``reply=TEXT``: the answer (URL-style ``+`` for spaces); default: an echo of the last user message
- ``tag=ANY``: no effect but making the spec distinct
"""

from __future__ import annotations

from dataclasses import dataclass

FAULT_HEADER = "x-upstream-fault"


@dataclass(frozen=True)
class Fault:
    status: int | None = None
    retry_after: float | None = None
    times: int | None = None
    reset: bool = False
    first_token_delay: float = 0.0
    chunk_delay: float = 0.0
    cut_after: int | None = None
    malformed_after: int | None = None
    error_after: int | None = None
    error_type: str | None = None  # None: "api_error" in a stream, the API's usual type for a status
    omit_usage: bool = False
    finish: str = "stop"
    reply: str | None = None
    prompt_tokens: int | None = None
    cache_read: int = 0
    cache_write: int = 0
    tag: str = ""

    @property
    def is_error(self) -> bool:
        return self.status is not None or self.reset


_FLOATS = {"retry_after", "first_token_delay", "chunk_delay"}
_INTS = {
    "status",
    "times",
    "cut_after",
    "malformed_after",
    "error_after",
    "prompt_tokens",
    "cache_read",
    "cache_write",
}
_FLAGS = {"reset", "omit_usage"}
_STRINGS = {"finish", "reply", "tag", "error_type"}


def split_model(model: str) -> tuple[str, str]:
    """``"echo;status=503"`` -> ``("echo", "status=503")``."""
    name, _, spec = model.partition(";")
    return name, spec


def parse_fault(*specs: str) -> Fault:
    """The fault described by ``specs`` (later specs override earlier ones); raises ValueError on bad input."""
    values: dict[str, object] = {}
    for spec in specs:
        for item in filter(None, (part.strip() for part in spec.split(";"))):
            key, has_value, raw = item.partition("=")
            key = key.strip()
            if key in _FLAGS:
                values[key] = raw.strip().lower() not in ("0", "false", "no") if has_value else True
            elif not has_value:
                raise ValueError(f"fault key {key!r} needs a value")
            elif key in _FLOATS:
                values[key] = float(raw)
            elif key in _INTS:
                values[key] = int(raw)
            elif key in _STRINGS:
                values[key] = raw.replace("+", " ") if key == "reply" else raw
            else:
                raise ValueError(f"unknown fault key {key!r}")
    return Fault(**values)  # type: ignore[arg-type]
