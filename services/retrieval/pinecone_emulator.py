"""A local EMULATION of Pinecone's data-plane HTTP API, for tests and benchmarks. Not Pinecone.

No Pinecone service is reachable here, so the Pinecone store is tested through the official SDK against
this server: the SDK's real HTTP requests (`/vectors/upsert`, `/query`, `/vectors/fetch`,
`/vectors/delete`, `/vectors/list`, `/vectors/update`, `/describe_index_stats`) over 127.0.0.1, answered
with an exact (brute-force) cosine search per namespace and Pinecone's metadata filter operators
(`$eq $ne $in $nin $gt $gte $lt $lte $exists $and $or`; a list-valued field matches `$eq`/`$in` when any
element does). It checks for an `Api-Key` header. What it does not emulate: approximate search, eventual
consistency (Pinecone serverless makes writes visible after a short delay), quotas and sparse vectors. It
keeps Pinecone's documented operation limits that a store must respect: an upsert request of at most 2 MB and
at most 1,000 vectors, and at most 40 KB of metadata a vector (each refused with 400 as Pinecone does).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np

Json = dict[str, Any]

#: Pinecone's operation limits (docs.pinecone.io, "Database limits").
MAX_UPSERT_REQUEST_BYTES = 2 * 1024 * 1024
MAX_UPSERT_VECTORS = 1000
MAX_METADATA_BYTES = 40 * 1024


def _compare(value: Any, operator: str, operand: Any) -> bool:
    values = value if isinstance(value, list) else [value]
    if operator == "$eq":
        return operand in values
    if operator == "$ne":
        return operand not in values
    if operator == "$in":
        return any(v in operand for v in values)
    if operator == "$nin":
        return not any(v in operand for v in values)
    if operator == "$exists":
        return (value is not None) == bool(operand)
    if value is None or isinstance(value, list):
        return False
    comparisons: dict[str, Callable[[Any, Any], bool]] = {
        "$gt": lambda a, b: a > b,
        "$gte": lambda a, b: a >= b,
        "$lt": lambda a, b: a < b,
        "$lte": lambda a, b: a <= b,
    }
    if operator not in comparisons:
        raise ValueError(f"unsupported filter operator {operator}")
    return comparisons[operator](value, operand)


def matches(metadata: Json, condition: Json) -> bool:
    """Whether `metadata` satisfies a Pinecone metadata filter."""
    for key, expected in condition.items():
        if key == "$and":
            if not all(matches(metadata, part) for part in expected):
                return False
        elif key == "$or":
            if not any(matches(metadata, part) for part in expected):
                return False
        elif isinstance(expected, dict):
            if not all(_compare(metadata.get(key), op, operand) for op, operand in expected.items()):
                return False
        elif not _compare(metadata.get(key), "$eq", expected):
            return False
    return True


class _Namespace:
    def __init__(self) -> None:
        self.vectors: dict[str, tuple[np.ndarray, Json]] = {}


class PineconeEmulator:
    """`with PineconeEmulator(dimension=384) as emulator:`; `emulator.host` is the index host for the SDK."""

    def __init__(self, dimension: int = 384, api_key: str = "emulated-key") -> None:
        self.dimension = dimension
        self.api_key = api_key
        self.namespaces: dict[str, _Namespace] = {}
        self.request_count = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def host(self) -> str:
        assert self._server is not None, "emulator not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> PineconeEmulator:
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._dispatch()

            def do_POST(self) -> None:
                self._dispatch()

            def _dispatch(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length", "0"))
                if url.path == "/vectors/upsert" and length > MAX_UPSERT_REQUEST_BYTES:
                    self.rfile.read(length)
                    message = f"Request size {length} exceeds the maximum supported size of 2MB"
                    self._send(400, {"code": 3, "message": message, "details": []})
                    return
                body: Json = json.loads(self.rfile.read(length)) if length else {}
                query = {k: v if k == "ids" else v[0] for k, v in parse_qs(url.query).items()}
                if self.headers.get("Api-Key") != emulator.api_key:
                    self._send(401, {"code": 16, "message": "Invalid API Key", "details": []})
                    return
                try:
                    status, payload = emulator.handle(self.command, url.path, body, query)
                except (ValueError, KeyError, TypeError) as error:
                    status, payload = 400, {"code": 3, "message": str(error), "details": []}
                self._send(status, payload)

            def _send(self, status: int, payload: Json) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def handle(self, method: str, path: str, body: Json, query: dict[str, Any]) -> tuple[int, Json]:
        with self._lock:
            self.request_count += 1
            route = (method, path)
            if route == ("POST", "/vectors/upsert"):
                return 200, self._upsert(body)
            if route == ("POST", "/query"):
                return 200, self._query(body)
            if route == ("GET", "/vectors/fetch"):
                return 200, self._fetch(query)
            if route == ("POST", "/vectors/delete"):
                return 200, self._delete(body)
            if route == ("GET", "/vectors/list"):
                return 200, self._list(query)
            if route == ("POST", "/vectors/update"):
                return 200, self._update(body)
            if route == ("POST", "/describe_index_stats"):
                return 200, self._stats()
            return 404, {"code": 5, "message": f"no route {method} {path}", "details": []}

    def _space(self, namespace: str | None) -> _Namespace:
        return self.namespaces.setdefault(namespace or "", _Namespace())

    def _upsert(self, body: Json) -> Json:
        space = self._space(body.get("namespace"))
        vectors = body["vectors"]
        if len(vectors) > MAX_UPSERT_VECTORS:
            raise ValueError(f"at most {MAX_UPSERT_VECTORS} vectors per upsert, got {len(vectors)}")
        for item in vectors:
            metadata_bytes = len(json.dumps(item.get("metadata") or {}, ensure_ascii=False).encode())
            if metadata_bytes > MAX_METADATA_BYTES:
                raise ValueError(
                    f"Metadata size is {metadata_bytes} bytes, which exceeds the limit of {MAX_METADATA_BYTES} bytes"
                    f" per vector"
                )
            values = np.asarray(item["values"], dtype=np.float32)
            if values.shape != (self.dimension,):
                raise ValueError(
                    f"Vector dimension {values.shape[0]} does not match the dimension of the index {self.dimension}"
                )
            space.vectors[str(item["id"])] = (values, dict(item.get("metadata") or {}))
        return {"upsertedCount": len(vectors)}

    def _query(self, body: Json) -> Json:
        space = self._space(body.get("namespace"))
        vector = np.asarray(body["vector"], dtype=np.float32)
        condition: Json = body.get("filter") or {}
        candidates = [(i, v, m) for i, (v, m) in space.vectors.items() if matches(m, condition)]
        scored = []
        for vector_id, values, metadata in candidates:
            denominator = float(np.linalg.norm(values) * np.linalg.norm(vector)) or 1.0
            scored.append((float(values @ vector) / denominator, vector_id, values, metadata))
        scored.sort(key=lambda item: (-item[0], item[1]))
        result = []
        for score, vector_id, values, metadata in scored[: int(body["topK"])]:
            match: Json = {"id": vector_id, "score": score}
            if body.get("includeValues"):
                match["values"] = values.tolist()
            if body.get("includeMetadata"):
                match["metadata"] = metadata
            result.append(match)
        return {"matches": result, "namespace": body.get("namespace", ""), "usage": {"readUnits": 1}}

    def _fetch(self, query: dict[str, Any]) -> Json:
        space = self._space(query.get("namespace"))
        vectors = {
            i: {"id": i, "values": space.vectors[i][0].tolist(), "metadata": space.vectors[i][1]}
            for i in query.get("ids", [])
            if i in space.vectors
        }
        return {"vectors": vectors, "namespace": query.get("namespace", ""), "usage": {"readUnits": 1}}

    def _delete(self, body: Json) -> Json:
        namespace = body.get("namespace") or ""
        if body.get("deleteAll"):
            self.namespaces.pop(namespace, None)
            return {}
        space = self._space(namespace)
        for vector_id in body.get("ids") or []:
            space.vectors.pop(vector_id, None)
        if body.get("filter"):
            for vector_id in [i for i, (_, m) in space.vectors.items() if matches(m, body["filter"])]:
                del space.vectors[vector_id]
        return {}

    def _list(self, query: dict[str, Any]) -> Json:
        space = self._space(query.get("namespace"))
        prefix = query.get("prefix", "")
        limit = int(query.get("limit", 100))
        ids = sorted(i for i in space.vectors if i.startswith(prefix))
        after = query.get("paginationToken")
        if after:
            ids = [i for i in ids if i > after]
        page = ids[:limit]
        result: Json = {
            "vectors": [{"id": i} for i in page],
            "namespace": query.get("namespace", ""),
            "usage": {"readUnits": 1},
        }
        if len(ids) > limit:
            result["pagination"] = {"next": page[-1]}
        return result

    def _update(self, body: Json) -> Json:
        space = self._space(body.get("namespace"))
        vector_id = body["id"]
        if vector_id not in space.vectors:
            return {"matchedRecords": 0}
        values, metadata = space.vectors[vector_id]
        if "values" in body:
            values = np.asarray(body["values"], dtype=np.float32)
        metadata = metadata | dict(body.get("setMetadata") or {})
        space.vectors[vector_id] = (values, metadata)
        return {"matchedRecords": 1}

    def _stats(self) -> Json:
        namespaces = {name: {"vectorCount": len(space.vectors)} for name, space in self.namespaces.items()}
        return {
            "namespaces": namespaces,
            "dimension": self.dimension,
            "indexFullness": 0.0,
            "totalVectorCount": sum(n["vectorCount"] for n in namespaces.values()),
            "metric": "cosine",
            "vectorType": "dense",
        }
