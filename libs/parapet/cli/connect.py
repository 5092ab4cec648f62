"""Where the people-facing commands connect and with which credential: one story for all of them.

Target: ``--address``, else ``PARAPET_<SERVICE>_ADDRESS``, else the local suite's port for that service
(``--base-port`` / ``PARAPET_BASE_PORT``, default 47100). TLS: the same ``PARAPET_TLS_*`` variables the
services read. Credential: ``--api-key``, else ``PARAPET_API_KEY``, else ``<home>/identity/demo.key`` (the
demo tenant of ``parapet up``), else ``<home>/identity/operator.key`` (the platform operator).

The gateway takes the API key itself. Every other service takes only internal tokens, so a session first
exchanges the key at auth's ``Authenticate`` (a public RPC, the same exchange the gateway makes) and sends
the short-lived token it gets; the token's principal also tells which tenant "my tenant" is.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from parapet.cli import inputs, registry
from parapet.cli.failures import EXIT_USAGE, CliError
from parapet.cli.layout import BOOTSTRAP_KEY_NAME, DEMO_KEY_NAME, HomeLayout, PortLayout
from parapet.cli.up import HOME_ENV, add_base_port_argument, resolve_base_port, resolve_home
from parapet.kit.api_key_format import KEY_LOOKS_LIKE, key_prefix

if TYPE_CHECKING:  # the kit and the stubs are imported when a command runs, not for `parapet --help`
    from parapet.auth.v1.auth_service_pb2 import AuthenticateResponse
    from parapet.auth.v1.auth_service_pb2_grpc import AuthServiceAsyncStub
    from parapet.kit.clients import ServiceClient

API_KEY_ENV = "PARAPET_API_KEY"
# The CLI checks a key against the one definition of its shape (parapet.kit.api_key_format, which auth parses
# by too) before any call: that refuses what gRPC cannot even send as metadata (non-ASCII, spaces, a multi-line
# PEM file: an INTERNAL "Invalid metadata" or a traceback otherwise) and the wrong file or another vendor's key.
# Calls of these commands are short; a stuck service must not hang a terminal forever.
CALL_TIMEOUT_SECONDS = 30.0
# Internal tokens live at most 5 minutes; a long command (audit tail -f) gets a new one this long before.
TOKEN_RENEW_SECONDS = 30.0

StubT = TypeVar("StubT")
Metadata = tuple[tuple[str, str], ...]


Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def command_with_actions(subparsers: Subparsers, name: str, summary: str, description: str) -> Subparsers:
    """A command made of actions (``parapet keys create``): its parser's sub-parsers, one per action."""
    parser = subparsers.add_parser(name, help=summary, description=description)
    return parser.add_subparsers(dest="action", required=True, metavar="ACTION")


def add_arguments(parser: argparse.ArgumentParser, service: str, *, json_flag: bool = True) -> None:
    """The connection flags every people-facing command shares; ``service`` is the one it talks to."""
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--address",
        default=None,
        metavar="HOST:PORT",
        help=f"the {service} service (default: $PARAPET_{service.upper()}_ADDRESS, else the local suite's)",
    )
    add_base_port_argument(group)
    group.add_argument(
        "--api-key",
        default=None,
        help=f"API key to act with (default: ${API_KEY_ENV}, else the home's {DEMO_KEY_NAME}, "
        f"else its {BOOTSTRAP_KEY_NAME})",
    )
    group.add_argument(
        "--home", type=Path, default=None, help=f"the suite's home (default: ${HOME_ENV}, else ./.parapet)"
    )
    if json_flag:
        parser.add_argument("--json", action="store_true", help="machine-readable JSON output")
    parser.set_defaults(service=service)


@dataclass(frozen=True)
class Credential:
    """An API key and where it came from (named in errors, never the key itself)."""

    api_key: str
    source: str


def read_key(path: Path) -> str | None:
    """The key stored in ``path``; None when there is none (a missing or empty file: try the next one)."""
    return inputs.read_text(path, "API key file", missing_ok=True).strip() or None


def check_key(credential: Credential) -> Credential:
    """``credential`` if its key can be a Parapet API key; else a CliError saying what one looks like and
    where this one came from (never the key: it may be a secret of something else)."""
    if key_prefix(credential.api_key) is None:
        raise CliError(
            f"the API key from {credential.source} is not a Parapet API key: one looks like {KEY_LOOKS_LIKE}"
        )
    return credential


def find_credential(
    explicit: str | None, env: Mapping[str, str], home: HomeLayout, *, operator: bool = False
) -> Credential:
    """The API key to act with; ``operator`` skips the demo key (platform commands need the operator)."""
    if explicit:
        return check_key(Credential(explicit, "--api-key"))
    if env.get(API_KEY_ENV):
        return check_key(Credential(env[API_KEY_ENV], f"${API_KEY_ENV}"))
    files = [home.operator_key_file]
    if not operator:
        files.insert(0, home.demo_key_file)
    for path in files:
        key = read_key(path)
        if key is not None:
            return check_key(Credential(key, str(path)))
    raise CliError(
        f"no API key: pass --api-key, set ${API_KEY_ENV}, or start the suite with `parapet up` "
        f"(it writes {' or '.join(str(p) for p in files)})",
        EXIT_USAGE,
    )


def service_address(name: str, explicit: str | None, env: Mapping[str, str], ports: PortLayout) -> str:
    if explicit:
        return explicit
    spec = registry.get(name)
    return env.get(spec.address_env) or ports.service_address(spec)


class Session:
    """Connections of one command: typed clients to any service, and the caller's internal token.

    ``async with Session.from_args(args) as session`` closes every channel it opened.
    """

    def __init__(
        self,
        credential: Credential,
        *,
        ports: PortLayout,
        env: Mapping[str, str],
        address: str | None = None,
        service: str = "gateway",
    ) -> None:
        from parapet.kit.config import ServiceSettings, SettingsError, load_settings

        self.credential = credential
        self.ports = ports
        self.env = env
        self._explicit = {service: address} if address else {}
        try:
            # Only the TLS fields matter here; the rest of the service settings are ignored.
            self.settings = load_settings(ServiceSettings)
        except (SettingsError, ValueError) as exc:
            raise CliError(str(exc)) from None
        self._clients: list[ServiceClient[Any]] = []
        self._login: AuthenticateResponse | None = None
        self._auth: ServiceClient[AuthServiceAsyncStub] | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, operator: bool = False) -> Session:
        env = dict(os.environ)
        try:
            ports = PortLayout(resolve_base_port(args.base_port, env))
        except ValueError as exc:
            raise CliError(str(exc)) from None
        home = HomeLayout(resolve_home(args.home, env))
        credential = find_credential(args.api_key, env, home, operator=operator)
        return cls(credential, ports=ports, env=env, address=args.address, service=args.service)

    def address(self, service: str) -> str:
        return service_address(service, self._explicit.get(service), self.env, self.ports)

    def client(
        self, factory: Callable[..., ServiceClient[StubT]], service: str, *, streaming: bool = False
    ) -> ServiceClient[StubT]:
        """``factory`` (one of ``parapet.clients``) connected to ``service``; closed with the session.

        ``streaming`` drops the default call timeout, for streams that last as long as a person wants.
        """
        timeout = None if streaming else CALL_TIMEOUT_SECONDS
        try:
            client = factory(self.address(service), self.settings, default_timeout=timeout)
        except OSError as exc:  # the channel reads the PARAPET_TLS_* files when it is made
            raise CliError(f"cannot read the TLS file {exc.filename}: {exc.strerror or exc}") from None
        self._clients.append(client)
        return client

    async def login(self) -> AuthenticateResponse:
        """The AuthenticateResponse for the credential (token, principal), renewed shortly before expiry."""
        if self._login is None or self._login.expire_time.seconds - time.time() < TOKEN_RENEW_SECONDS:
            from parapet import clients
            from parapet.auth.v1 import auth_service_pb2

            if self._auth is None:
                self._auth = self.client(clients.auth, "auth")
            self._login = await self._auth.stub.Authenticate(
                auth_service_pb2.AuthenticateRequest(api_key=self.credential.api_key)
            )
        return self._login

    async def token_metadata(self) -> Metadata:
        """Call metadata for internal services: the internal token of the credential."""
        login = await self.login()
        return (("authorization", f"Bearer {login.token}"),)

    def key_metadata(self) -> Metadata:
        """Call metadata for the gateway, which authenticates the API key itself."""
        return (("authorization", f"Bearer {self.credential.api_key}"),)

    async def tenant(self, explicit: str | None = None) -> str:
        """``explicit``, else the tenant of the credential."""
        if explicit:
            return explicit
        login = await self.login()
        return str(login.principal.tenant_id)

    async def close(self) -> None:
        for client in self._clients:
            await client.close()
        self._clients.clear()

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


ItemT = TypeVar("ItemT")


async def every_page(fetch: Callable[[str], Awaitable[tuple[Sequence[ItemT], str]]]) -> list[ItemT]:
    """All items of a paged list RPC: ``fetch(page_token)`` returns (items, next_page_token)."""
    items: list[ItemT] = []
    token = ""
    while True:
        page, token = await fetch(token)
        items.extend(page)
        if not token:
            return items
