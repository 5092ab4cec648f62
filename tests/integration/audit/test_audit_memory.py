"""Reading a tenant's log holds a bounded amount of it in memory, however large its records' bodies.

VerifyChain read 5,000 rows per statement bodies included (it only needs their hashes), and QueryInteractions and
ExportInteractions 500: a tenant whose interactions carry long prompts (retrieved context makes 100 KB common,
and a record may hold 3 MiB) put hundreds of megabytes in the service's memory per call, twice over (the driver's
result buffer and the Python strings), past the 384 MiB the deployment gives the audit pod. One auditor's
VerifyChain killed the pod, and with it the stream consumer of every tenant.

The service runs in this test's process, so ``tracemalloc`` sees what it allocates."""

from __future__ import annotations

import secrets
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from parapet.audit.v1 import audit_service_pb2, chain_pb2
from services.audit import verify
from services.audit.canonical import ZERO_HASH, prepare, record_hash
from services.audit.scope import tenant_scope
from services.audit.store import Row, insert_rows
from tests.integration.audit.conftest import Audit, interaction, new_tenant

Kind = chain_pb2.ChainBreakKind

BODY = 1_400_000  # characters of each of prompt and response: a record of 2.8 MB, under the 3 MiB limit
RECORDS = 30  # 84 MB of bodies in all
PEAK_BYTES = 32 << 20  # what one call may allocate at most (now under 20 MB; before, about the whole log)


async def _peak(call: Callable[[], Awaitable[object]]) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        await call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def _drain(stream: AsyncIterator[object]) -> int:
    """How many messages ``stream`` yields, keeping none of them."""
    count = 0
    async for _ in stream:
        count += 1
    return count


async def test_reading_a_log_of_large_records_holds_a_bounded_part_of_it(audit: Audit) -> None:
    tenant = new_tenant()
    for i in range(RECORDS):
        body = chr(ord("a") + i % 26)
        await audit.record(tenant, interaction(f"user-{i}", prompt=body * BODY, response=body.upper() * BODY))

    async def verify() -> None:
        result = await audit.verify(tenant)
        assert result.intact and result.records_verified == RECORDS

    read: list[int] = []

    async def query() -> None:
        call = audit.stub.QueryInteractions(
            audit_service_pb2.QueryInteractionsRequest(page_size=RECORDS),
            metadata=audit.metadata(tenant),
            timeout=60,
        )
        async for message in call:
            read.extend(r.chain.sequence for r in message.records)
            assert all(len(r.interaction.body.prompt) == BODY for r in message.records)

    async def export() -> None:
        call = audit.stub.ExportInteractions(
            audit_service_pb2.ExportInteractionsRequest(), metadata=audit.metadata(tenant), timeout=60
        )
        assert await _drain(call) >= RECORDS * 2  # each line of 2.8 MB over three chunks of at most 1 MiB

    verify_peak = await _peak(verify)
    query_peak = await _peak(query)
    export_peak = await _peak(export)
    assert read == list(range(1, RECORDS + 1))
    peaks = {"VerifyChain": verify_peak, "QueryInteractions": query_peak, "ExportInteractions": export_peak}
    assert max(peaks.values()) < PEAK_BYTES, peaks


CHECKPOINTED = 12_000  # three chunks; a year of checkpoints is 525,600 for a tenant active every minute


async def _checkpointed_chain(audit: Audit, tenant: str) -> None:
    """A chain of CHECKPOINTED records with a signed checkpoint at every one, loaded set-wise as the benchmark
    loads its chains (appending them one by one would take minutes)."""
    rows: list[Row] = []
    checkpoints: list[dict[str, object]] = []
    previous = ZERO_HASH
    now = datetime.now(UTC)
    for sequence in range(1, CHECKPOINTED + 1):
        prepared = prepare(interaction(f"user-{sequence % 7}"), tenant)
        digest = record_hash(sequence, previous, prepared.metadata_sha256)
        rows.append((prepared, sequence, previous, digest))
        signature = audit.signer.sign(tenant, sequence, digest, now)
        checkpoints.append(
            {"t": tenant, "s": sequence, "h": digest, "c": now, "sig": signature, "k": audit.signer.key_id}
        )
        previous = digest
    async with audit.database.transaction() as session:
        await insert_rows(session, tenant, rows)
        await session.execute(
            text("INSERT INTO chain_heads (tenant_id, sequence, head_hash) VALUES (:t, :s, :h)"),
            {"t": tenant, "s": CHECKPOINTED, "h": previous},
        )
        await session.execute(
            text(
                "INSERT INTO checkpoints (tenant_id, sequence, head_hash, create_time, signature, key_id)"
                " VALUES (:t, :s, :h, :c, :sig, :k)"
            ),
            checkpoints,
        )


async def test_verifying_a_range_reads_the_checkpoints_of_that_range_only(audit: Audit) -> None:
    """VerifyChain read every checkpoint of the tenant, and checked every signature, whatever the range asked: one
    per minute of activity, so a tenant a year old had half a million, held in memory (about 250 MB) and checked
    (about half a minute of CPU) by a call that verifies one record."""
    tenant = new_tenant()
    await _checkpointed_chain(audit, tenant)

    async def one_record() -> None:
        result = await audit.verify(tenant, 1, 1)
        assert result.intact and result.records_verified == 1
        assert result.latest_checkpoint.sequence == CHECKPOINTED

    async def whole_chain() -> None:
        result = await audit.verify(tenant)
        assert result.intact and result.records_verified == CHECKPOINTED

    # Before: about 470 bytes per checkpoint of the tenant (5.6 MB here), whatever the range.
    assert await _peak(one_record) < 1 << 20
    await whole_chain()  # the checkpoints read chunk by chunk as the scan reaches them, every one checked
    # A checkpoint altered within the range is still found; one outside it is no concern of that range.
    await audit.tamper(
        "UPDATE checkpoints SET head_hash = :h WHERE tenant_id = :t AND sequence = 11000",
        t=tenant,
        h=bytes(32),
    )
    broken = await audit.verify(tenant, 10_000, 11_500)
    assert (broken.intact, broken.first_break.sequence) == (False, 11_000)
    assert broken.first_break.kind == Kind.CHAIN_BREAK_KIND_CHECKPOINT_INVALID
    assert (await audit.verify(tenant, 1, 100)).intact
    assert (await audit.verify(tenant)).first_break.sequence == 11_000


WIDE = 20  # records of about 1.2 MB of metadata each: VerifyChain's 8 MiB per statement holds 6 or 7 of them


async def _wide_chain(audit: Audit, tenant: str) -> list[int]:
    """WIDE records whose metadata (1,000 retrieved document ids of 1,200 characters) is large enough for
    VerifyChain's statements to be cut by bytes, with 200 KB bodies that do not compress (random hex); returns
    the sequences at which VerifyChain's chunks start, from the metadata sizes PostgreSQL reports."""
    for i in range(WIDE):
        record = interaction(
            f"user-{i}", prompt=secrets.token_hex(100_000), response=secrets.token_hex(100_000)
        )
        record.interaction.document_ids.extend(secrets.token_hex(600) for _ in range(1000))
        await audit.record(tenant, record)
    async with tenant_scope(audit.database, tenant) as session:
        sizes = (
            await session.execute(text("SELECT octet_length(metadata) FROM records ORDER BY sequence"))
        ).scalars()
        starts, before = [1], 0
        for sequence, size in enumerate(sizes, start=1):
            if before >= verify._FETCH_BYTES:
                starts.append(sequence)
                before = 0
            before += size
    return starts


async def _toast_blocks(session: AsyncSession) -> int:
    """Blocks of the records' TOAST table (where large metadata and bodies are) this transaction has read."""
    return int(
        (
            await session.execute(
                text(
                    "SELECT pg_stat_get_xact_blocks_fetched(reltoastrelid) FROM pg_class"
                    " WHERE oid = 'records'::regclass"
                )
            )
        ).scalar_one()
    )


async def test_verify_reads_the_bodies_of_the_rows_a_statement_keeps_only(audit: Audit) -> None:
    """Each of VerifyChain's statements hashed the bodies of all the rows its LIMIT let through (up to 5,000),
    before the cut by bytes dropped most of them (to be read and hashed again by the next statement): with large
    metadata, many times the database work of the verification."""
    tenant = new_tenant()
    starts = await _wide_chain(audit, tenant)
    kept = starts[1] - 1
    assert len(starts) >= 3 and kept < WIDE  # the first statement is cut by bytes

    async def blocks_read(limit: int) -> tuple[int, int]:
        async with tenant_scope(audit.database, tenant) as session:
            before = await _toast_blocks(session)
            params = {"after": 0, "end": WIDE, "limit": limit, "budget": verify._FETCH_BYTES}
            rows = (await session.execute(verify._ROW_SQL, params)).all()
            return len(rows), await _toast_blocks(session) - before

    cut, cut_blocks = await blocks_read(5000)  # as VerifyChain runs it: WIDE rows fetched, cut to `kept`
    exact, exact_blocks = await blocks_read(kept)  # only the rows kept are fetched
    assert cut == exact == kept
    # Before: 2,097 blocks against 1,421 (the bodies of all WIDE rows read and hashed, 7 rows kept).
    assert cut_blocks <= exact_blocks * 1.1, (cut_blocks, exact_blocks)


async def test_verify_cut_by_bytes_finds_tampering_at_the_chunk_boundaries(audit: Audit) -> None:
    tenant = new_tenant()
    starts = await _wide_chain(audit, tenant)
    assert len(starts) >= 3
    result = await audit.verify(tenant)
    assert result.intact and result.records_verified == WIDE
    # A body edited in the last row of a chunk, and in the first of the next: each hashed after the cut.
    for sequence in (starts[1] - 1, starts[1], starts[2]):
        await audit.tamper(
            "UPDATE records SET response = response || 'x' WHERE tenant_id = :t AND sequence = :s",
            t=tenant,
            s=sequence,
        )
        broken = await audit.verify(tenant)
        assert (broken.intact, broken.first_break.sequence) == (False, sequence)
        assert broken.first_break.kind == Kind.CHAIN_BREAK_KIND_MODIFIED
        assert broken.records_verified == sequence - 1
        await audit.tamper(
            "UPDATE records SET response = left(response, -1) WHERE tenant_id = :t AND sequence = :s",
            t=tenant,
            s=sequence,
        )
    assert (await audit.verify(tenant)).intact
    # Metadata edited at a chunk's first row; the links between chunks still checked.
    await audit.tamper(
        "UPDATE records SET metadata = metadata || '\\x00'::bytea WHERE tenant_id = :t AND sequence = :s",
        t=tenant,
        s=starts[2],
    )
    broken = await audit.verify(tenant)
    assert (broken.first_break.sequence, broken.first_break.kind) == (
        starts[2],
        Kind.CHAIN_BREAK_KIND_MODIFIED,
    )
    # The first row of a chunk deleted: the gap is found where the next statement starts.
    await audit.tamper("DELETE FROM records WHERE tenant_id = :t AND sequence = :s", t=tenant, s=starts[1])
    broken = await audit.verify(tenant)
    assert (broken.first_break.sequence, broken.first_break.kind) == (
        starts[1],
        Kind.CHAIN_BREAK_KIND_DELETED,
    )
