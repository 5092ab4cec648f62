"""LiteLLM's proxy for the gateway benchmark: its own virtualenv (``.venv-litellm/``, pinned version, never in our
lock) created on first use, and the proxy started in front of the benchmark's upstream emulator."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.gateway_procs import ProcessGroup, spawn, stop, tree

ROOT = Path(__file__).resolve().parent.parent
VERSION = "1.108.7"
VENV = ROOT / ".venv-litellm"
CONFIG = ROOT / "bench" / "litellm" / "config.yaml"
_STAMP = VENV / f".litellm-{VERSION}"
STARTUP_TIMEOUT = 180.0  # it imports a great deal: about 30 s on this machine


def ensure_venv() -> Path:
    """The ``litellm`` executable of ``.venv-litellm/``, installing ``litellm[proxy]==VERSION`` there if missing.

    uv (the one ``make install`` put in ``.venv``) creates the venv and installs into it, so LiteLLM's many
    dependencies never meet ours."""
    executable = VENV / "bin" / "litellm"
    if _STAMP.exists() and executable.exists():
        return executable
    uv = ROOT / ".venv" / "bin" / "uv"
    python = ROOT / ".venv" / "bin" / "python"
    print(f"Installing litellm[proxy]=={VERSION} into {VENV} (once)", flush=True)
    subprocess.run(
        [str(uv), "venv", "--quiet", "--allow-existing", "--python", str(python), str(VENV)], check=True
    )
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")}
    subprocess.run(
        [
            str(uv),
            "pip",
            "install",
            "--quiet",
            "--python",
            str(VENV / "bin" / "python"),
            f"litellm[proxy]=={VERSION}",
        ],
        check=True,
        env=env,
    )
    _STAMP.touch()
    return executable


@dataclass(frozen=True)
class LiteLLM:
    base_url: str
    master_key: str
    workers: int
    processes: ProcessGroup


@asynccontextmanager
async def litellm_proxy(upstream_base_url: str, port: int, workers: int, log: Path) -> AsyncIterator[LiteLLM]:
    """The proxy on 127.0.0.1:``port`` with ``workers`` worker processes, until the block ends."""
    executable = ensure_venv()
    master_key = "sk-bench-" + secrets.token_urlsafe(16)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PARAPET_")},
        "LITELLM_MASTER_KEY": master_key,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "BENCH_UPSTREAM_API_BASE": upstream_base_url + "/v1",
    }
    argv = [str(executable), "--config", str(CONFIG), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--num_workers", str(workers)]
    process = await spawn(argv, log=log, env=env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        await _wait_alive(base_url, process, log)
        yield LiteLLM(base_url, master_key, workers, ProcessGroup("litellm", lambda: tree(process.pid)))
    finally:
        await stop(process)


async def _wait_alive(base_url: str, process: asyncio.subprocess.Process, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise RuntimeError(f"litellm exited with {process.returncode}; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(base_url + "/health/liveliness")).status_code == 200:
                    return
            await asyncio.sleep(0.5)
    raise RuntimeError(f"litellm not alive within {STARTUP_TIMEOUT:g} s; see {log}")
