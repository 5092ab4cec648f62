"""A local emulation of the OpenAI embeddings endpoint, for tests (fakellm serves no embeddings).

`OpenAIEmbeddingsEmulator` answers `POST /v1/embeddings` over real HTTP on 127.0.0.1 with deterministic
pseudo-embeddings (a hash of the text seeds them), honours `dimensions`, and records each request so a
test can see batching. `fail_with` makes it answer every request with that HTTP status;
`max_input_chars` makes it refuse, as the API does an input over the model's token limit, any request
holding a longer text (400 `invalid_request_error`), and answer every other request.
"""

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import numpy as np


def fake_vector(text: str, dimension: int) -> list[float]:
    """The emulator's (non-unit) vector for `text`: the same text always gives the same vector."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    values: list[float] = (np.random.default_rng(seed).standard_normal(dimension) * 3.0).tolist()
    return values


@dataclass
class OpenAIEmbeddingsEmulator:
    """Start with `with OpenAIEmbeddingsEmulator() as emulator:`; `emulator.base_url` is the SDK's base_url."""

    fail_with: int | None = None
    #: Overrides the requested dimension in answers (to test dimension checks).
    answer_dimension: int | None = None
    #: Refuses a request with a text longer than this (a stand-in for the model's token limit).
    max_input_chars: int | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None, "emulator not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> "OpenAIEmbeddingsEmulator":
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
                emulator.requests.append(body)
                if self.path != "/v1/embeddings":
                    self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
                elif emulator.fail_with is not None:
                    self._send(
                        emulator.fail_with, {"error": {"message": "emulated failure", "type": "server_error"}}
                    )
                elif (too_long := emulator.too_long(body)) is not None:
                    self._send(400, too_long)
                else:
                    self._send(200, emulator.answer(body))

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def too_long(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """OpenAI's refusal of a request with an input over the limit, or None when every input fits."""
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        longest = max((len(str(text)) for text in texts), default=0)
        if self.max_input_chars is None or longest <= self.max_input_chars:
            return None
        message = (
            f"This model's maximum context length is {self.max_input_chars} tokens, however you requested "
            f"{longest} tokens. Please reduce your prompt."
        )
        return {
            "error": {"message": message, "type": "invalid_request_error", "param": "input", "code": None}
        }

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dimension = self.answer_dimension or int(body.get("dimensions") or 1536)
        data = [
            {"object": "embedding", "index": i, "embedding": fake_vector(text, dimension)}
            for i, text in enumerate(texts)
        ]
        # Answer out of order: clients must sort by index.
        data.reverse()
        tokens = sum(len(str(text).split()) for text in texts)
        return {
            "object": "list",
            "data": data,
            "model": body.get("model", ""),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
