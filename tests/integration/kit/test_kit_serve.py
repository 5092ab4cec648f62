"""``serve``: a real process announces its port-0 binding on stdout and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc.aio

from parapet.kit import timeouts
from parapet.kit.testing import health_status


@asynccontextmanager
async def _program(
    tmp_path: Path, source: str, **env: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, asyncio.StreamReader, asyncio.StreamReader]]:
    """``source`` run as a service process on port 0 with ``env`` added; killed if it outlives the test."""
    script = tmp_path / "program.py"
    script.write_text(source)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PARAPET_PORT": "0", **env},
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        yield proc, proc.stdout, proc.stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


PROGRAM = """
from parapet.kit.server import main
from parapet.kit.testing import generic_app

main(generic_app(name="served", service_names=("test.v1.Served",)))
"""


async def test_serve_announces_port_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {"PARAPET_SHUTDOWN_GRACE_SECONDS": "3", "PARAPET_LOG_FORMAT": "json"}
    async with _program(tmp_path, PROGRAM, **env) as (proc, stdout, stderr_stream):
        announcement = json.loads(await timeouts.within(30, stdout.readline()))
        assert announcement["event"] == "serving" and announcement["service"] == "served"
        port = int(announcement["port"])
        assert port > 0
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await health_status(channel) == 1
            assert await health_status(channel, "test.v1.Served") == 1
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert await timeouts.within(10, proc.wait()) == 0
        assert time.monotonic() - started < 3  # nothing in flight: no need to wait out the grace
        stderr = (await stderr_stream.read()).decode()
        events = [json.loads(line)["event"] for line in stderr.splitlines() if line.startswith("{")]
        assert "serving" in events and "shutting down" in events and "stopped" in events


NATS_PROGRAM = """
from parapet.kit.server import main
from parapet.kit.testing import generic_app

main(generic_app(name="stuck", service_names=("test.v1.Stuck",), uses_nats=True))
"""


async def test_sigterm_during_startup_ends_the_process(tmp_path: Path) -> None:
    """Start-up waiting on an unreachable dependency still honours SIGTERM at once."""
    from parapet.embedded import free_port

    env = {
        "PARAPET_NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "PARAPET_NATS_RECONNECT_WAIT_SECONDS": "5",
        "PARAPET_NATS_START_WAIT_SECONDS": "60",  # the start waits for NATS this long before serving without it
    }
    async with _program(tmp_path, NATS_PROGRAM, **env) as (proc, _stdout, stderr):
        # Wait until it is trying to connect (its first warning), then ask it to stop.
        line = await timeouts.within(30, stderr.readline())
        assert b"nats" in line, line
        proc.send_signal(signal.SIGTERM)
        assert await timeouts.within(5, proc.wait()) == 0


HUNG_PROGRAM = """
import asyncio

from parapet.kit.app import ServiceApp
from parapet.kit.config import ServiceSettings
from parapet.kit.server import main


async def register(server, resources):
    async def never_closes() -> None:
        await asyncio.Event().wait()  # a resource whose close waits on an answer that never comes

    resources.cleanup.push_async_callback(never_closes)


main(ServiceApp(name="hung", settings_type=ServiceSettings, register=register, service_names=("test.v1.Hung",)))
"""


async def test_a_shutdown_that_cannot_finish_still_ends_the_process(tmp_path: Path) -> None:
    """Closing a resource hangs: the process exits once the drain and the cleanup bound are over, and the
    log says what was stuck."""
    env = {
        "PARAPET_SHUTDOWN_GRACE_SECONDS": "0.5",
        "PARAPET_SHUTDOWN_CLEANUP_SECONDS": "1",
        "PARAPET_LOG_FORMAT": "json",
    }
    async with _program(tmp_path, HUNG_PROGRAM, **env) as (proc, stdout, stderr_stream):
        announcement = json.loads(await timeouts.within(30, stdout.readline()))
        assert announcement["event"] == "serving"
        proc.send_signal(signal.SIGTERM)
        assert await timeouts.within(20, proc.wait()) == 0
        stderr = (await stderr_stream.read()).decode()
        events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
        stuck = [e for e in events if e["event"] == "shutdown did not finish in time; exiting without it"]
        assert stuck and any("never_closes" in t["awaiting"] for t in stuck[0]["tasks"]), stderr
