"""Signed checkpoints: every interval, each tenant whose chain head moved gets an Ed25519-signed statement
of (tenant, head sequence, head hash, time). A deleted tail, or a chain rewritten and re-hashed from some
record on, no longer matches a checkpoint the attacker cannot re-sign without the service's key.

Runs as the schema owner across tenants (a background job, never on a caller's behalf); several replicas
may run it at once: a checkpoint is keyed by (tenant, sequence) and inserted at most once.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import text

from parapet.kit.database import Database
from services.audit.signing import CheckpointSigner

_ADVANCED = text(
    """
    SELECT h.tenant_id, h.sequence, h.head_hash FROM chain_heads h
    WHERE h.sequence > COALESCE((SELECT max(c.sequence) FROM checkpoints c WHERE c.tenant_id = h.tenant_id), 0)
    """
)
_INSERT = text(
    """
    INSERT INTO checkpoints (tenant_id, sequence, head_hash, create_time, signature, key_id)
    VALUES (:tenant_id, :sequence, :head_hash, :create_time, :signature, :key_id)
    ON CONFLICT (tenant_id, sequence) DO NOTHING
    """
)


async def checkpoint_all(database: Database, signer: CheckpointSigner) -> int:
    """Sign a checkpoint for every tenant whose head advanced since its last one; returns how many."""
    # Microseconds, like PostgreSQL: the time signed is exactly the time stored.
    now = datetime.now(UTC)
    async with database.transaction() as session:
        heads = (await session.execute(_ADVANCED)).all()
        for head in heads:
            head_hash = bytes(head.head_hash)
            await session.execute(
                _INSERT,
                {
                    "tenant_id": head.tenant_id,
                    "sequence": int(head.sequence),
                    "head_hash": head_hash,
                    "create_time": now,
                    "signature": signer.sign(head.tenant_id, int(head.sequence), head_hash, now),
                    "key_id": signer.key_id,
                },
            )
    return len(heads)
