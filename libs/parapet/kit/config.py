"""Service settings from ``PARAPET_*`` environment variables: one frozen, typed object per service.

Every service subclasses :class:`ServiceSettings` and adds its own fields; each field has a default and a
description, which :func:`settings_markdown` renders for ``docs/configuration.md`` so the documentation is
generated from the code and cannot drift from it.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import grpc
from pydantic import Field, SecretBytes, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from parapet.kit.redact import redact_url
from parapet.kit.tls import TlsFiles

ENV_PREFIX = "PARAPET_"


class ServiceSettings(BaseSettings):
    """Settings every service has. Subclass to add a service's own fields (they get the same prefix)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    host: str = Field(
        "127.0.0.1",
        description="Address the gRPC server binds. Loopback by default; containers set `0.0.0.0`.",
    )
    port: int = Field(
        0,
        ge=0,
        le=65535,
        description="gRPC port. 0 lets the OS pick a free one; the bound port is announced on stdout.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of PostgreSQL, `postgresql+psycopg://user:pass@host:port/db` "
        "(needed by services that use the database); `postgresql://` is read as that. Another scheme or driver is "
        "refused when settings load.",
    )
    database_pool_size: int = Field(
        5,
        ge=1,
        le=100,
        description="Connections each service process keeps open to PostgreSQL. Seven services and their "
        "replicas share the server's `max_connections`: keep pool size times processes below it.",
    )
    database_max_overflow: int = Field(
        5, ge=0, le=100, description="Extra connections a process may open briefly under a burst."
    )
    nats_url: str | None = Field(
        None,
        description="NATS server URL, `nats://host:port` (`tls://`, `ws://`, `wss://` too; needed by services that "
        "use the bus). Another scheme is refused when settings load.",
    )
    shutdown_grace_seconds: float = Field(
        10.0,
        ge=0,
        description="On SIGTERM, how long in-flight RPCs and streams may run before they are cancelled. "
        "Shorter than Kubernetes' default 30 s termination grace period so the pod exits cleanly.",
    )
    shutdown_delay_seconds: float = Field(
        0.5,
        ge=0,
        le=30,
        description="On SIGTERM, how long a replica that clients balance over keeps taking calls after it "
        "turned NOT_SERVING, before it refuses new ones: the kit's channels to several replicas watch its health "
        "and move new calls to the others within milliseconds, so none of theirs reaches it as it stops (other "
        "clients rely on the preStop delay). Skipped when no channel watches it.",
    )
    shutdown_cleanup_seconds: float = Field(
        10.0,
        gt=0,
        description="After the drain, how long closing the service's resources (relays, workers, connections) "
        "may take before the process exits without them; what did not finish is logged with its stack.",
    )
    health_interval_seconds: float = Field(
        1.0, gt=0, description="How often dependencies (database, NATS) are probed for the health service."
    )
    health_probe_timeout_seconds: float = Field(
        1.0, gt=0, description="A dependency probe slower than this counts as failed."
    )
    identity_jwks_file: Path | None = Field(
        None,
        description="JWKS JSON file with the auth service's public keys for the internal identity token. "
        "Re-read when a token names an unknown `kid` (key rotation). Unset: keys come from auth's "
        "GetJwks at `PARAPET_AUTH_ADDRESS`; with neither set, every non-public RPC is refused with "
        "UNAUTHENTICATED.",
    )
    auth_address: str | None = Field(
        None,
        description="gRPC target of the auth service (`host:port` or `dns:///auth:8080`): where identity "
        "keys come from when `PARAPET_IDENTITY_JWKS_FILE` is unset (its GetJwks RPC), and where services "
        "read tenant policies.",
    )
    identity_audience: str = Field("parapet", description="Required `aud` claim of internal identity tokens.")
    identity_issuer: str = Field(
        "parapet-auth", description="Required `iss` claim of internal identity tokens."
    )
    identity_leeway_seconds: float = Field(
        5.0, ge=0, le=60, description="Clock skew tolerated on `exp` and `nbf` of identity tokens."
    )
    identity_require_permissions: bool = Field(
        False,
        description="Refuse identity tokens that carry no resolved permissions (claim `perm`) with "
        "UNAUTHENTICATED `TOKEN_PERMISSIONS_MISSING`, instead of deciding by their role and scope names. Every "
        "token auth issues carries them since 2026-12-05: turn this on once no auth replica of an earlier "
        "release runs, and tokens it issued have expired (5 minutes).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Lowest level logged."
    )
    log_format: Literal["json", "text"] = Field(
        "json", description="`json`: one JSON object per line (for collectors); `text`: for humans."
    )
    otlp_endpoint: str | None = Field(
        None, description="OTLP/gRPC endpoint for traces, e.g. `http://collector:4317`. Unset: no export."
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="HTTP port of the Prometheus `/metrics` endpoint (on `PARAPET_HOST`). Unset: no endpoint; "
        "0: a free port, logged. `parapet up` gives each service base + 30 + its offset.",
    )
    health_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="A second, plaintext port (on `PARAPET_HOST`) serving only `grpc.health.v1.Health`, for "
        "probes that cannot present a client certificate (the kubelet's gRPC probe) when the main port "
        "requires mutual TLS. Unset: health is served on the main port only; 0: a free port, logged.",
    )
    service_name: str | None = Field(
        None, description="Overrides the service name in traces and logs (default: the service's own name)."
    )
    nats_reconnect_wait_seconds: float = Field(
        1.0, gt=0, description="Pause between NATS reconnect attempts (the kit reconnects forever)."
    )
    nats_start_wait_seconds: float = Field(
        5.0,
        ge=0,
        le=300,
        description="How long a start waits for NATS (connected, streams declared) before it serves without "
        "it and goes on connecting in the background: calls do without NATS (outboxes, paused consumers), so a "
        "pod started during a NATS outage serves instead of crash-looping.",
    )
    grpc_keepalive_seconds: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="How long a connection of the kit's channels may receive nothing before the channel pings "
        "the peer (also with no call in flight); the kit's servers accept a ping every half of this, and always "
        "one every 5 s, and ping their clients alike (a stream to a client that vanished is cancelled). "
        "Without pings a peer whose host vanished without closing its connections (node failure, partition) "
        "held every call on them until its deadline. Set it alike for every service. Behind a mesh the sidecar "
        "answers the pings, and its own settings watch the hop to the peer pod (`docs/kit.md`).",
    )
    grpc_keepalive_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=600,
        description="How long a ping, or data sent (the socket's `TCP_USER_TIMEOUT`), may go unanswered before "
        "the channel drops the connection, fails the calls on it (UNAVAILABLE) and reconnects: a vanished peer "
        "is noticed within keepalive plus this (15 s by default, half the kit's default call timeout).",
    )
    grpc_server_keepalive_timeout_seconds: float = Field(
        20.0,
        gt=0,
        le=600,
        description="The same bound on the servers' side: how long a server's ping to a client, or data sent to it "
        "(`TCP_USER_TIMEOUT`), may go unanswered before the server drops the connection and cancels its calls (a "
        "stream to a client that vanished). Longer than the channels' own: the gateway's callers are outside "
        "the suite (a phone changing networks, a client's busy event loop) and a burst of loss must not cost "
        "them a chat in flight.",
    )
    grpc_reconnect_backoff_max_seconds: float = Field(
        10.0,
        gt=0,
        le=120,
        description="Longest pause between a channel's attempts to reconnect to a peer that is down (gRPC's "
        "own default, 120 s, kept failing calls for up to two minutes after the peer was back).",
    )

    tls_cert_file: Path | None = Field(
        None,
        description="PEM certificate chain of this service: served to callers, and presented to peers "
        "for mutual TLS. Unset: plaintext (a service mesh may provide mTLS).",
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of `PARAPET_TLS_CERT_FILE`.")
    tls_ca_file: Path | None = Field(
        None,
        description="PEM CA bundle that peers' certificates must chain to. Set: calls to other services "
        "use TLS and verify them; with `PARAPET_TLS_REQUIRE_CLIENT_CERT`, callers must present one.",
    )
    tls_require_client_cert: bool = Field(
        False, description="Mutual TLS: refuse callers without a certificate from `PARAPET_TLS_CA_FILE`."
    )

    @field_validator("database_url")
    @classmethod
    def _database_url_is_psycopgs(cls, url: str | None) -> str | None:
        # The kit's engines are psycopg 3's (async at run time, sync for migrations, and their connect options are
        # libpq's): another driver failed only when the service started, with an import error or a driver's message.
        # A plain libpq URL (postgresql://, postgres://), as most tools print one, is read as psycopg 3's.
        if not url:
            return url
        for plain in ("postgresql://", "postgres://"):
            if url.startswith(plain):
                return "postgresql+psycopg://" + url.removeprefix(plain)
        if not url.startswith("postgresql+psycopg://"):
            raise ValueError(
                "the database URL must start with postgresql+psycopg:// (psycopg 3) or postgresql://"
            )
        return url

    @field_validator("nats_url")
    @classmethod
    def _nats_url_is_natss(cls, url: str | None) -> str | None:
        if not url:
            return url
        # Imported here: nats-py costs every `parapet` command about 70 ms to import, and only a NATS URL needs it.
        from nats.errors import Error as NatsError

        from parapet.kit.bus import check_nats_url

        try:
            return check_nats_url(url)
        except NatsError as error:
            raise ValueError(str(error).removeprefix("nats: ")) from None

    @model_validator(mode="after")
    def _tls_files_fit_together(self) -> ServiceSettings:
        self.tls()  # refuse impossible combinations when settings load, not at the first connection
        return self

    def tls(self) -> TlsFiles:
        """The certificate files as one checked object (raises TlsConfigError on impossible combinations)."""
        return TlsFiles(
            cert_file=self.tls_cert_file,
            key_file=self.tls_key_file,
            ca_file=self.tls_ca_file,
            require_client_cert=self.tls_require_client_cert,
        )

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """Credentials for the listening port: TLS or mTLS from the certificate files; None binds plaintext."""
        return self.tls().server_credentials()


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


class SettingsError(ValueError):
    """Invalid configuration, naming each bad environment variable and what is wrong with it."""


# A field named so holds a credential (an API key, a masking key, a password): its value is never shown.
_SECRET_NAME = re.compile(r"(^|_)(key|secret|password|passwd|pepper|token|credentials?)$")


def _holds_secret(settings_type: type[ServiceSettings], name: str) -> bool:
    info = settings_type.model_fields.get(name)
    if info is None:
        return True  # not a field of ours: nothing tells it is harmless
    secret_types = (SecretStr, SecretBytes)
    annotation = info.annotation
    typed_secret = annotation in secret_types or any(
        arg in secret_types for arg in typing.get_args(annotation)
    )
    return typed_secret or _SECRET_NAME.search(name) is not None


def _problem(settings_type: type[ServiceSettings], error: Any) -> str:
    """One line per refused value. The value is shown (a typo is found faster when one sees it) unless it may
    be a credential; a URL is shown without its password. A refusal of the settings as a whole (a validator
    of the model: TLS files that do not fit together) has no one variable, and pydantic hands it every input
    value, the database URL and API keys included: only its message, which names the variables, is shown."""
    loc = error["loc"]
    message = str(error["msg"]).removeprefix("Value error, ")
    if not loc:
        return message
    field = str(loc[0])
    variable = ENV_PREFIX + field.upper()
    path = ".".join(str(part) for part in loc)
    where = variable if path == field else f"{variable} ({path})"
    value = error.get("input")
    if _holds_secret(settings_type, field):
        return f"{where}: {message} (value not shown: it may be a secret)"
    shown = redact_url(value) if isinstance(value, str) else value
    return f"{where}: {message} (got {shown!r})"


def load_settings(settings_type: type[SettingsT], **overrides: Any) -> SettingsT:
    """Read settings from the environment; raise :class:`SettingsError` with readable messages, naming each
    bad variable and never showing a secret."""
    try:
        return settings_type(**overrides)
    except ValidationError as exc:
        problems = [_problem(settings_type, error) for error in exc.errors()]
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(problems)) from None


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "none"
    return getattr(annotation, "__name__", str(annotation))


def settings_markdown(settings_type: type[ServiceSettings], title: str | None = None) -> str:
    """A Markdown table of every field: environment variable, type, default and description."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| variable | type | default | description |", "|---|---|---|---|"]
    for name, info in settings_type.model_fields.items():
        default = "unset" if info.default is None else f"`{info.default}`"
        description = (info.description or "").replace("|", "\\|")
        lines.append(
            f"| `{ENV_PREFIX}{name.upper()}` | {_type_name(info.annotation)} | {default} | {description} |"
        )
    return "\n".join(lines) + "\n"
