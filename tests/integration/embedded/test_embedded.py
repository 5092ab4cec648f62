"""The embedded PostgreSQL and NATS start, serve real connections, stop and restart with their data."""

from __future__ import annotations

import socket
from pathlib import Path

import nats
import nats.errors
import psycopg
import pytest

from parapet.embedded import EmbeddedNats, EmbeddedPostgres, EmbeddedStartError, free_port
from parapet.embedded.ports import port_is_open


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def test_postgres_has_pgvector_and_keeps_data_across_restart(fresh_postgres: EmbeddedPostgres) -> None:
    with psycopg.connect(_plain(fresh_postgres.url), autocommit=True) as conn:
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        assert version is not None and tuple(int(p) for p in version[0].split(".")) >= (0, 8, 0)
        conn.execute("CREATE TABLE kept (v vector(3))")
        conn.execute("INSERT INTO kept VALUES ('[1,2,3]')")
    fresh_postgres.stop()
    assert not port_is_open("127.0.0.1", fresh_postgres.port)
    fresh_postgres.start()
    with psycopg.connect(_plain(fresh_postgres.url)) as conn:
        row = conn.execute("SELECT v <=> '[1,2,3]' FROM kept").fetchone()
        assert row is not None and abs(row[0]) < 1e-9


async def test_nats_jetstream_keeps_messages_across_restart(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats", free_port())
    server.start()
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="KEPT", subjects=["kept.>"])
        ack = await js.publish("kept.one", b"hello")
        assert ack.seq == 1
        await nc.close()
        server.stop()
        assert not port_is_open("127.0.0.1", server.port)
        server.start()
        nc = await nats.connect(server.url)
        msg = await nc.jetstream().get_msg("KEPT", 1)
        assert msg.data == b"hello"
        await nc.close()
    finally:
        server.stop()


async def test_embedded_servers_refuse_clients_without_their_secret(
    fresh_postgres: EmbeddedPostgres, fresh_nats: EmbeddedNats
) -> None:
    """Loopback is shared by every account on the machine: the URL's secret is what admits a client."""
    assert fresh_postgres.password_file.stat().st_mode & 0o077 == 0
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(
            f"host=127.0.0.1 port={fresh_postgres.port} user=postgres dbname=parapet connect_timeout=2"
        )
    assert fresh_nats.token_file.stat().st_mode & 0o077 == 0
    with pytest.raises(nats.errors.Error, match="Authorization"):
        await nats.connect(
            f"nats://127.0.0.1:{fresh_nats.port}", allow_reconnect=False, max_reconnect_attempts=0
        )
    nc = await nats.connect(fresh_nats.url)
    await nc.close()


def test_nats_on_a_port_someone_else_took_is_a_start_error(tmp_path: Path) -> None:
    # The port was free when `parapet up` checked it and taken just after (another program, another suite):
    # NATS cannot bind it, but anything listening there passed for our server, and the services were
    # handed the URL of a stranger (with our token).
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        server = EmbeddedNats(tmp_path / "nats", stranger.getsockname()[1])
        try:
            with pytest.raises(EmbeddedStartError, match="nats-server exited with code"):
                server.start(timeout=30.0)
        finally:
            server.stop()
