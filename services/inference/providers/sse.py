"""Server-sent events read straight off the SDK's HTTP response.

The SDKs build a pydantic object per streamed chunk, which costs more CPU than everything else Parapet does with
the chunk; the request, authentication, base URL and error mapping still go through the official SDK, only the
event lines are parsed here (into plain dicts).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2

# Request options asking the SDK for the unread HTTP response (what `with_streaming_response` sets).
RAW_STREAM: Any = {"headers": {"X-Stainless-Raw-Response": "stream"}}


async def sse_data(response: httpx2.Response) -> AsyncIterator[tuple[str, str]]:
    """(event name, data) of each complete event; an event cut off before its blank line is not yielded."""
    event = ""
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "", []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("event:"):
            event = line[6:].strip()
