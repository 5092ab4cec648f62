"""A fault-injecting LLM upstream: the OpenAI chat-completions and Anthropic messages wire formats over real HTTP.

Tests and benchmarks point the official SDKs (through Parapet's providers, or directly) at it. Faults are chosen
per request, so one running emulator serves every scenario: by the model name (``echo;status=429;retry_after=1``)
or by the ``x-upstream-fault`` header, in the syntax of :func:`parse_fault`. See ``docs/inference.md``.
"""

from parapet.upstream.faults import Fault, parse_fault
from parapet.upstream.server import RecordedRequest, UpstreamServer

__all__ = ["Fault", "RecordedRequest", "UpstreamServer", "parse_fault"]
