"""``parapet bootstrap operator|gateway``: a platform account's first API key, straight from auth's database.

For deployments where auth's first start cannot hand the key over in a file (Kubernetes: read-only pods, and
no file of a pod is the operator's to read). It runs where auth runs, with auth's settings from the
environment (``kubectl exec deploy/auth -c server -- parapet bootstrap operator``): the database URL, the platform
tenant and the key that peppers API key hashes. It applies auth's migrations as a starting auth would,
then the same code as auth's first start (``services.auth.bootstrap``) creates the account and one key,
writes an audit record and prints the key on stdout, once; stderr says what was done, never the key.

An account that has an active key is refused (exit 5, nothing printed): further keys and routine rotation
go through the admin RPCs (``parapet keys create``/``revoke``), which need a credential and apply the
privilege rules. ``--replace`` revokes the account's active keys and issues one: the way back in when the
only platform key is lost, for someone who can already read auth's secrets.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from parapet.cli import failures
from parapet.cli.failures import CliError

if TYPE_CHECKING:
    from parapet.kit.database import Database
    from services.auth.apikeys import KeyHasher
    from services.auth.bootstrap import IssuedKey
    from services.auth.settings import AuthSettings
    from services.auth.signing import SigningKey

# The accounts of services.auth.bootstrap.ACCOUNTS, spelled out so that `parapet --help` imports no database
# code (tests/unit/cli/test_cli_bootstrap.py keeps the two equal).
ACCOUNT_NAMES = ("operator", "gateway")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "bootstrap",
        help="issue the first API key of a platform account (operator, gateway); run where auth runs",
        description="Create the platform account ACCOUNT if needed and issue its first API key, printed once "
        "on stdout. Reads auth's settings (PARAPET_DATABASE_URL, PARAPET_AUTH_SIGNING_KEY_FILE or "
        "PARAPET_AUTH_API_KEY_PEPPER_FILE, PARAPET_AUTH_PLATFORM_TENANT_ID) from the environment, e.g. "
        "`kubectl -n parapet exec deploy/auth -c server -- parapet bootstrap operator`. Exit 5 when the account "
        "already has an active key (nothing printed).",
    )
    parser.add_argument(
        "account",
        choices=ACCOUNT_NAMES,
        metavar="ACCOUNT",
        help="operator (role platform-admin) or gateway (role token-delegator, the job workers' key)",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="revoke the account's active keys and issue a new one (a lost key; rotation otherwise goes "
        "through `parapet keys create` and `keys revoke`)",
    )
    parser.set_defaults(func=failures.run, execute=execute)


async def execute(args: argparse.Namespace) -> int:
    from parapet.kit.database import Database
    from services.auth.bootstrap import ACCOUNTS

    settings = _settings()
    hasher = _hasher(settings)
    url = _database_url(settings)
    await _migrate(url)
    database = Database(url, "auth", pool_size=1, max_overflow=0)
    try:
        issued = await _issue(args, settings, hasher, database)
    finally:
        await database.close()
    account = ACCOUNTS[args.account]
    replaced = f"; revoked in its favour: {', '.join(issued.replaced)}" if issued.replaced else ""
    failures.say(
        f"parapet bootstrap: issued API key {issued.api_key_id} of the platform account {account.user_id} "
        f"(role {account.role}, tenant {settings.auth_platform_tenant_id}); it was printed on stdout, "
        f"once, and is stored nowhere else{replaced}"
    )
    return failures.EXIT_OK


def _settings() -> AuthSettings:
    from parapet.kit.config import SettingsError, load_settings
    from services.auth.settings import AuthSettings

    try:
        return load_settings(AuthSettings)
    except SettingsError as exc:
        raise CliError(" ".join(str(exc).split())) from None


def _database_url(settings: AuthSettings) -> str:
    if not settings.database_url:
        raise CliError("PARAPET_DATABASE_URL is not set: run this where auth runs (kubectl exec deploy/auth)")
    return settings.database_url


def _hasher(settings: AuthSettings) -> KeyHasher:
    """Auth's key hasher: a key hashed with any other pepper would never authenticate."""
    from services.auth.apikeys import KeyHasher
    from services.auth.signing import load_pepper

    if settings.auth_signing_key_file is None and settings.auth_api_key_pepper_file is None:
        raise CliError(
            "neither PARAPET_AUTH_SIGNING_KEY_FILE nor PARAPET_AUTH_API_KEY_PEPPER_FILE is set, so auth's "
            "pepper is unknown and a key issued here would never authenticate: run this where auth runs"
        )
    try:
        return KeyHasher(load_pepper(settings, _signing_key(settings)))
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read auth's signing key or pepper: {exc}") from None


def _signing_key(settings: AuthSettings) -> SigningKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from services.auth.signing import SigningKey, load_signing_key

    if settings.auth_signing_key_file is not None:
        return load_signing_key(settings)
    # Only the pepper file is set: load_pepper reads it and never derives from this key.
    return SigningKey(Ed25519PrivateKey.generate(), "unused")


async def _migrate(url: str) -> None:
    """Auth's schema at head, by the call a starting auth makes (a no-op where auth already runs)."""
    from parapet.cli.serve import load_app
    from parapet.kit.dependency import database_down
    from parapet.kit.migrations import migrate

    app = load_app("auth")
    assert app.migrations is not None
    try:
        await migrate(url, app.name, app.migrations)
    except Exception as exc:
        if database_down(exc):
            raise CliError(
                f"the database is unreachable: {_first_line(exc)}", failures.EXIT_UNREACHABLE
            ) from None
        raise CliError(f"cannot migrate auth's schema: {_first_line(exc)}", failures.EXIT_FAILED) from None


async def _issue(
    args: argparse.Namespace, settings: AuthSettings, hasher: KeyHasher, database: Database
) -> IssuedKey:
    """The new key, after its secret went to stdout; refusals as one line and their exit code."""
    from parapet.kit.errors import Unavailable
    from services.auth.bootstrap import ACCOUNTS, AccountDisabledError, AccountHasKeyError, issue_account_key
    from services.auth.store import AuthStore

    account = ACCOUNTS[args.account]
    printed: list[bool] = []

    def hand_over(secret: str) -> None:
        # Before auth's commit: a closed stdout (BrokenPipeError, exit 141) leaves no key stored.
        sys.stdout.write(secret + "\n")
        sys.stdout.flush()
        printed.append(True)

    try:
        issued = await issue_account_key(
            AuthStore(database),
            settings.auth_platform_tenant_id,
            hasher,
            account,
            hand_over,
            replace=args.replace,
        )
    except AccountHasKeyError as exc:
        raise CliError(
            f"the platform account {account.user_id} already has an active API key "
            f"({', '.join(exc.live_key_ids)}); nothing was issued. More keys: `parapet keys create --user "
            f"{account.user_id}` with a platform key; none left: `parapet bootstrap {account.user_id} --replace`",
            failures.EXIT_ALREADY_DONE,
        ) from None
    except AccountDisabledError as exc:
        raise CliError(str(exc), failures.EXIT_FAILED) from None
    except Unavailable:
        lost = (
            "; the key printed may not be stored: run this again (exit 5 then means it is)" if printed else ""
        )
        raise CliError(f"the database is unreachable{lost}", failures.EXIT_UNREACHABLE) from None
    return issued


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
