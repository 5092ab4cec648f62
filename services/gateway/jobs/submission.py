"""What SubmitJob accepts, the fingerprint that makes it idempotent, and the request each item runs as."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from parapet.gateway.v1 import chat_service_pb2, job_pb2, job_service_pb2
from parapet.kit.errors import InvalidArgument

MAX_ITEMS = 10_000  # the contract's bound (ChatBatch.requests)
MAX_IDEMPOTENCY_KEY = 128
MAX_METADATA = 16  # also the bound of one chat's metadata, which the job's labels are merged into
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 256


def _metadata_violations(metadata: Mapping[str, str], path: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if len(metadata) > MAX_METADATA:
        found.append((path, f"at most {MAX_METADATA} entries"))
    for key, value in metadata.items():
        if not key or len(key) > MAX_METADATA_KEY:
            found.append((f"{path}[{key[:MAX_METADATA_KEY]!r}]", f"keys are 1-{MAX_METADATA_KEY} characters"))
        if len(value) > MAX_METADATA_VALUE:
            found.append(
                (f"{path}[{key[:MAX_METADATA_KEY]!r}]", f"values are at most {MAX_METADATA_VALUE} characters")
            )
    return found


def validate(request: job_service_pb2.SubmitJobRequest) -> None:
    """INVALID_ARGUMENT with a field violation per problem; each item's own content is checked by the chat
    flow when it runs (an invalid item fails alone, as the same Chat call would)."""
    found: list[tuple[str, str]] = []
    key = request.idempotency_key
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        found.append(("idempotency_key", f"required, 1-{MAX_IDEMPOTENCY_KEY} printable characters"))
    if request.WhichOneof("spec") != "chat_batch":
        found.append(("chat_batch", "required"))
    else:
        count = len(request.chat_batch.requests)
        if not 0 < count <= MAX_ITEMS:
            found.append(("chat_batch.requests", f"1-{MAX_ITEMS} requests"))
        else:
            for index, item in enumerate(request.chat_batch.requests):
                merged = {**request.metadata, **item.metadata}
                if len(merged) > MAX_METADATA:
                    found.append(
                        (
                            f"chat_batch.requests[{index}].metadata",
                            f"with the job's labels, at most {MAX_METADATA}",
                        )
                    )
                    break
    found.extend(_metadata_violations(request.metadata, "metadata"))
    if found:
        raise InvalidArgument("the job is invalid", field_violations=found)


def fingerprint(subject: str, batch: job_pb2.ChatBatch, metadata: Mapping[str, str]) -> bytes:
    """SHA-256 over the submitter and the deterministic serialization of what runs: a repeated key with the
    same of both is the same job; with anything else it is IDEMPOTENCY_KEY_REUSED (also when another user of
    the tenant picked the same key, who must not be handed someone else's job).

    The items' own idempotency keys are left out: the contract ignores them, so they must not make a retry of
    the same job (whose client drew new item keys) a different one. Without them the serialization is the
    batch's own when no item has a key (proto3 leaves an empty string out), as every fingerprint stored before;
    :func:`same_job` also takes the earlier form for items that had keys."""
    runs = job_pb2.ChatBatch()
    runs.CopyFrom(batch)
    for item in runs.requests:
        item.idempotency_key = ""
    return _digest(subject, runs, metadata)


def same_job(stored: bytes, subject: str, batch: job_pb2.ChatBatch, metadata: Mapping[str, str]) -> bool:
    """Whether a repeated submission is the job whose fingerprint is ``stored``. Jobs submitted before
    2026-12-06 were fingerprinted with their items' keys: such a job, retried with the same keys, is still
    the same job (the earlier form can go once their retention, 30 days, has passed)."""
    return stored in (fingerprint(subject, batch, metadata), _digest(subject, batch, metadata))


def _digest(subject: str, runs: job_pb2.ChatBatch, metadata: Mapping[str, str]) -> bytes:
    digest = hashlib.sha256()
    for part in (subject.encode(), runs.SerializeToString(deterministic=True)):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    for key in sorted(metadata):
        digest.update(f"{len(key)}:{key}={len(metadata[key])}:{metadata[key]}".encode())
    return digest.digest()


def item_request(
    item: chat_service_pb2.ChatRequest, job_metadata: Mapping[str, str]
) -> chat_service_pb2.ChatRequest:
    """The Chat request item runs as: the job's labels added (the item's own win on a clash), its own
    idempotency key dropped (the contract ignores it: the job's key and the item's request id cover it)."""
    request = chat_service_pb2.ChatRequest()
    request.CopyFrom(item)
    request.idempotency_key = ""
    for key, value in job_metadata.items():
        if key not in request.metadata:
            request.metadata[key] = value
    return request


def item_request_id(job_id: str, index: int, run: int = 1) -> str:
    """The request id of item ``index`` in the job's ``run``-th run (``JobRow.runs``): ``job-<job id>-<index>``
    in the first, ``job-<job id>-<index>-run<n>`` in a later one, so every run of an item is its own chat.

    Metering takes a repeated request id for a retry of the same call: a rerun under its first run's id (after
    a stop, a lost lease or a failed checkpoint) would get the first run's reservation back without a budget
    check and have its settlement refused, so its usage would never reach the ledger; its audit record could not
    be told from the first run's. The prefix still names the job and the item."""
    base = f"job-{job_id}-{index}"
    return base if run <= 1 else f"{base}-run{run}"
