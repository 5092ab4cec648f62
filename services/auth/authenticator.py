"""Authenticate: an API key or OIDC JWT to a Principal and a signed internal token, cached when warm.

Warm path (a credential seen within the cache TTL and not invalidated since): one HMAC-SHA256, one dict
lookup, and the internal token issued for it earlier, re-signed only once half its lifetime has passed.
Cold path: route the credential to its tenant, read key/user/tenant in one tenant-scoped query, check. An OIDC
subject is recorded (``oidc_subjects``) only when first seen or when its asserted roles change, never by a
sign-in refused for its claims.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NoReturn

from parapet.kit import metrics
from parapet.kit.errors import FailedPrecondition, QuotaExceeded, Unauthenticated
from parapet.kit.identity import MAX_TOKEN_BYTES, Principal, TokenSigner
from services.auth import apikeys, oidc, oidc_claims
from services.auth.access import Access, Actor, key_refusal, oidc_refusal
from services.auth.apikeys import KEY_PREFIX
from services.auth.cache import IdentityEntry, TenantKeyedCache
from services.auth.issued import Issued
from services.auth.store import AuthStore, KeyRecord, OidcRoute, OidcSubject
from services.auth.throttle import FailureThrottle

log = logging.getLogger(__name__)

LAST_USE_RESOLUTION_SECONDS = 60.0
AUTHENTICATE_METHOD = "/parapet.auth.v1.AuthService/Authenticate"
# The actor of an audit record about failed authentications: nobody proved who they are.
UNAUTHENTICATED_ACTOR = "unauthenticated"


def _invalid() -> Unauthenticated:
    # An unknown prefix and a wrong secret look the same to the caller.
    return Unauthenticated("the API key is not valid", reason="API_KEY_INVALID")


class _KeyRefused(Exception):
    """A failed API key lookup, with what the prefix throttle and its report need: the key's tenant and record
    when the prefix names one (its stored hash lets the right secret through a throttled prefix)."""

    def __init__(
        self,
        error: Unauthenticated,
        tenant_id: str | None = None,
        record: KeyRecord | None = None,
    ) -> None:
        super().__init__(error.reason)
        self.error = error
        self.tenant_id = tenant_id
        self.record = record

    @property
    def stored_hash(self) -> bytes | None:
        return None if self.record is None else self.record.secret_hash

    @property
    def standing(self) -> tuple[str, str] | None:
        """Why the prefix's key itself may not act (``key_refusal``), whichever secret was presented."""
        return None if self.record is None else key_refusal(self.record, time.time())


def key_principal(tenant_id: str, record: KeyRecord) -> Principal:
    """Who a valid key acts as: its user's roles and groups, narrowed by the key's scopes."""
    return Principal(
        tenant_id=tenant_id,
        subject=record.user_id,
        roles=record.roles,
        groups=record.groups,
        scopes=record.scopes,
        credential_type="api_key",
        api_key_id=record.api_key_id,
    )


class Authenticator:
    def __init__(
        self,
        store: AuthStore,
        signer: TokenSigner,
        hasher: apikeys.KeyHasher,
        cache: TenantKeyedCache[IdentityEntry],
        access: Access,
        *,
        prefix_throttle: FailureThrottle,
        client_throttle: FailureThrottle,
        jwks: oidc.JwksCache,
    ) -> None:
        self._store = store
        self._signer = signer
        self._hasher = hasher
        self.cache = cache
        self._access = access  # the tenant policy, to write what each caller may do into its token
        self._prefix_throttle = prefix_throttle
        self._client_throttle = client_throttle
        self._jwks = jwks
        # OIDC sign-ins refused for their claims' size, per (tenant, issuer, subject): the audit record is
        # written once a window while a client retries (each retry is refused and logged all the same).
        self._oversized_reported = FailureThrottle(1, client_throttle.window_seconds)
        self._background: set[asyncio.Task[None]] = set()

    # -- the shared frame: throttling, caching, token issuing --------------------------------------------

    @staticmethod
    def _throttled(kind: str, wait: float) -> QuotaExceeded:
        return QuotaExceeded(
            "too many failed authentications; retry later",
            reason="AUTHENTICATION_THROTTLED",
            violations=[(kind, "failed authentications")],
            retry_after=wait,
        )

    def _check_client(self, client_key: str) -> None:
        wait = self._client_throttle.retry_after(client_key)
        if wait is not None:
            raise self._throttled("client", wait)

    def _failed(self, client_key: str, error: Unauthenticated, prefix_key: str = "") -> Unauthenticated:
        self._client_throttle.record_failure(client_key)
        keys = [client_key, prefix_key] if prefix_key else [client_key]
        log.warning("authentication failed", extra={"reason": error.reason, "throttle_keys": keys})
        return error

    def _issue(self, entry: IdentityEntry) -> Issued:
        now = time.time()
        # Reuse the token issued for this credential while at least half its lifetime remains: signing is
        # most of Authenticate's CPU, and a token is a bearer credential either way.
        # A token never outlives its credential; one already ending with the credential is not re-signed.
        full = int(now) + int(self._signer.ttl_seconds)
        cap = full if entry.credential_expires is None else min(full, int(entry.credential_expires))
        issued = entry.issued
        if issued is None or (issued.expires - now < self._signer.ttl_seconds / 2 and issued.expires < cap):
            token = self._signer.sign(
                entry.principal, now=now, extra_claims={"exp": cap} if cap < full else None
            )
            issued = entry.issued = Issued(token, cap, entry.principal, entry.policy_version)
        return issued

    async def authenticate(self, *, api_key: str = "", oidc_token: str = "", client: str) -> Issued:
        if api_key:
            return await self._api_key(api_key, client)
        if oidc_token:
            return await self._oidc(oidc_token, client)
        raise Unauthenticated("no credential was given", reason="CREDENTIAL_MISSING")

    # -- API keys ------------------------------------------------------------------------------------------

    async def _api_key(self, key: str, client: str) -> Issued:
        client_key = f"client:{client}"
        self._check_client(client_key)
        if len(key) > apikeys.MAX_KEY_LENGTH:
            raise self._failed(
                client_key, Unauthenticated("the API key is too large", reason="CREDENTIAL_TOO_LARGE")
            )
        parsed = apikeys.parse(key)
        if parsed is None:
            raise self._failed(
                client_key, Unauthenticated("the API key is malformed", reason="API_KEY_INVALID")
            )
        prefix_key = f"api_key:{parsed.prefix}"
        digest = self._hasher.hash(parsed.full)
        # A throttled prefix refuses every secret but its own key's, before any database read. Each such
        # refusal is a failed guess of the client's: counted, or one client could guess on without limit.
        wait = self._prefix_throttle.retry_after(prefix_key, presented_hash=digest)
        if wait is not None:
            self._client_throttle.record_failure(client_key)
            raise self._throttled("api_key", wait)
        entry = self.cache.get(digest)
        metrics.record_cache_lookup("auth_identity", entry is not None)
        if entry is None:
            # The key's own secret at its throttled prefix, the key refused (revoked, say): answered from
            # memory, so that a fleet still configured with it does not read the database at every call.
            known = self._prefix_throttle.refusal_of(prefix_key, digest)
            if known is not None:
                raise self._failed(client_key, Unauthenticated(known[1], reason=known[0]), prefix_key)
            try:
                entry = await self._load_key(parsed, digest)
            except _KeyRefused as refused:
                if self._prefix_throttle.record_failure(
                    prefix_key, stored_hash=refused.stored_hash, refusal=refused.standing
                ):
                    await self._report_throttled(parsed.prefix, client, refused)
                raise self._failed(client_key, refused.error, prefix_key) from None
        self._maybe_touch(entry)
        return self._issue(entry)

    async def _load_key(self, parsed: apikeys.ParsedKey, digest: bytes) -> IdentityEntry:
        tenant_id = await self._store.tenant_for_prefix(parsed.prefix)
        if tenant_id is None:
            raise _KeyRefused(_invalid())
        generation = self.cache.generation(tenant_id)
        record = await self._store.key_record(tenant_id, parsed.prefix)
        if record is None:
            raise _KeyRefused(_invalid())
        standing = key_refusal(record, time.time())
        if not apikeys.KeyHasher.matches(record.secret_hash, digest):
            raise _KeyRefused(_invalid(), tenant_id, record)
        if standing is not None:
            raise _KeyRefused(Unauthenticated(standing[1], reason=standing[0]), tenant_id, record)
        principal = await self._access.with_permissions(
            key_principal(tenant_id, record), record.policy_version
        )
        last_use = record.last_use_time.timestamp() if record.last_use_time else 0.0
        expires = record.expire_time.timestamp() if record.expire_time else None
        entry = IdentityEntry(principal, record.policy_version, expires, last_use_written=last_use)
        self.cache.put(digest, tenant_id, entry, generation=generation, expires=expires)
        return entry

    async def _report_throttled(self, prefix: str, client: str, refused: _KeyRefused) -> None:
        """Tell the operator and the key's tenant that a key's prefix has reached its failure limit: someone
        holds the prefix and not the secret (guessing it, or a client configured with a broken copy of the
        key). Logged, and recorded in the key's tenant's audit trail (an unknown prefix has no tenant) at most
        once a window per prefix and replica while the failures go on."""
        key_id = refused.record.api_key_id if refused.record is not None else ""
        log.warning(
            "an API key prefix is throttled after repeated failed authentications",
            extra={
                "prefix": KEY_PREFIX + prefix,
                "tenant_id": refused.tenant_id or "",
                "api_key_id": key_id,
                "client": client,
            },
        )
        if refused.tenant_id is None or refused.record is None:
            return
        try:
            await self._access.refused(
                Actor(
                    Principal(tenant_id=refused.tenant_id, subject=UNAUTHENTICATED_ACTOR), frozenset(), False
                ),
                AUTHENTICATE_METHOD,
                key_id,
                self._throttled("api_key", 0.0),
                attributes={
                    "prefix": KEY_PREFIX + prefix,
                    "user_id": refused.record.user_id,
                    "client": client,
                    "last_reason": refused.error.reason,
                },
            )
        except Exception:
            # The refusal stands either way; a lost record must not turn it into INTERNAL.
            log.warning("recording a throttled API key prefix failed", exc_info=True)

    def _maybe_touch(self, entry: IdentityEntry) -> None:
        """Record the key's last use, to within a minute, off the request path."""
        now = time.time()
        if now - entry.last_use_written < LAST_USE_RESOLUTION_SECONDS:
            return
        entry.last_use_written = now
        task = asyncio.create_task(self._touch(entry.principal))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _touch(self, principal: Principal) -> None:
        try:
            await self._store.touch_key(principal.tenant_id, principal.api_key_id)
        except Exception:
            log.warning("recording an API key's last use failed", exc_info=True)

    # -- OIDC tokens ---------------------------------------------------------------------------------------

    async def _oidc(self, token: str, client: str) -> Issued:
        client_key = f"client:{client}"
        self._check_client(client_key)
        if len(token) > oidc.MAX_TOKEN_BYTES:
            raise self._failed(
                client_key, Unauthenticated("the OIDC token is too large", reason="CREDENTIAL_TOO_LARGE")
            )
        digest = apikeys.token_digest(token)
        entry = self.cache.get(digest)
        metrics.record_cache_lookup("auth_identity", entry is not None)
        if entry is not None:
            return self._issue(entry)
        # Failures count per client only, never per issuer: anyone can name a tenant's issuer (it is in every
        # token its provider issues) in a token no key of it signed, so a per-issuer count let ten such calls
        # a minute, from anywhere, lock the whole tenant out of sign-in. A signed token has no secret that
        # repeated tries could guess, unlike an API key's.
        try:
            entry = await self._load_oidc(oidc.inspect(token), digest)
        except Unauthenticated as error:
            raise self._failed(client_key, error) from None
        return self._issue(entry)

    async def _oidc_tenant(self, token: oidc.UnverifiedToken) -> str:
        """The one tenant whose provider holds the token's issuer and one of its audiences. Tenants may share an
        issuer (Google, a multi-tenant Entra app): each names its own OAuth client ids as audiences, and the
        pair tells them apart. No refusal names a tenant."""
        route = await self._store.oidc_route(token.issuer, token.audiences, token.authorized_party)
        if len(route.tenants) > 1:
            return self._disambiguated(token, route)
        if route.tenants:
            return route.tenants[0]
        if route.issuer_known:
            raise Unauthenticated("the OIDC token is for another audience", reason="OIDC_AUDIENCE_MISMATCH")
        raise Unauthenticated("the OIDC token's issuer is not trusted", reason="OIDC_ISSUER_UNKNOWN")

    @staticmethod
    def _disambiguated(token: oidc.UnverifiedToken, route: OidcRoute) -> str:
        """The tenant of a token whose audiences name several: the one holding its ``azp``, the client it was
        issued to (OIDC Core 2, and 3.1.3.7 points 4-5: a token of several audiences names its client there),
        when that tenant is one of those its audiences name. Providers put a generic audience in every token
        (Keycloak ``account``, Auth0 ``https://<domain>/userinfo``), so a tenant listing one would otherwise cut
        off every other tenant of the issuer. Without such an ``azp`` the token goes to none: any choice is a
        guess that may sign a user into the wrong tenant. Logged either way with every tenant named (never to
        the caller), so the operator can find the tenant whose audience collides; the claims are unverified yet,
        so the log says what a token claimed, not what a provider issued."""
        chosen = route.authorized_party_tenant
        routed = chosen if chosen in route.tenants else None
        log.warning(
            "an OIDC token's audiences belong to more than one tenant",
            extra={"issuer": token.issuer, "tenants": list(route.tenants), "routed_to": routed or ""},
        )
        if routed is None:
            raise Unauthenticated(
                "the OIDC token's audiences belong to more than one tenant", reason="OIDC_AUDIENCE_AMBIGUOUS"
            )
        return routed

    async def _load_oidc(self, token: oidc.UnverifiedToken, digest: bytes) -> IdentityEntry:
        tenant_id = await self._oidc_tenant(token)
        generation = self.cache.generation(tenant_id)
        view = await self._store.tenant_view(tenant_id)
        provider = (
            next((p for p in view.policy.identity_providers if p.issuer == token.issuer), None)
            if view
            else None
        )
        if view is None or provider is None:
            raise Unauthenticated("the OIDC token's issuer is not trusted", reason="OIDC_ISSUER_UNKNOWN")
        claims = oidc.verify(token, provider, await self._jwks.key(provider, token))
        if float(claims["exp"]) <= time.time():
            # Accepted within the provider's clock skew, but the internal token may not outlive it (its exp
            # caps ours): it would be issued already expired, refused by every service. Say so instead.
            raise Unauthenticated("the OIDC token has expired", reason="OIDC_TOKEN_EXPIRED")
        subject_value = claims.get(provider.subject_claim or "sub")
        if not oidc.storable(subject_value, 255):
            raise Unauthenticated("the OIDC token names no subject", reason="OIDC_TOKEN_INVALID")
        found = await self._store.oidc_subject(tenant_id, subject_value, token.issuer)
        asserted = tuple(sorted(set(oidc.claim_strings(claims, provider.roles_claim))))
        withheld = oidc.withheld_claims(claims, (provider.roles_claim, provider.groups_claim))
        standing = oidc_refusal(found)  # the tenant's state and the user row's, as Access.current reads them
        if standing is not None:
            # A disabled user's rank is recorded all the same (the admin checks read it, row or no row); not
            # when its provider withheld the roles, which say nothing then.
            if standing[0] == "USER_DISABLED" and provider.roles_claim not in withheld:
                await self._record_roles(tenant_id, subject_value, token.issuer, found, asserted, claims)
            raise Unauthenticated(standing[1], reason=standing[0])
        # Of the asserted roles only the policy's travel (the others grant nothing); the groups all do, or the
        # sign-in is refused: a group left out would change what the user may read (``oidc_claims``).
        roles = set(found.roles) | oidc_claims.defined_roles(asserted, view.policy)
        groups = set(found.groups) | set(oidc.claim_strings(claims, provider.groups_claim))
        # The claims' refusals come before anything is recorded: a withheld roles claim reads as no roles,
        # and recording that demoted the user's still-valid tokens at once (Access.current).
        if withheld:
            part = "groups" if withheld[0] == provider.groups_claim else "roles"
            refusal = oidc_claims.withheld(withheld[0], part)
            await self._refuse_claims(tenant_id, subject_value, token.issuer, refusal, roles, groups)
        jti = claims.get("jti")
        principal = await self._access.with_permissions(
            Principal(
                tenant_id=tenant_id,
                subject=subject_value,
                roles=tuple(sorted(roles)),
                groups=tuple(sorted(groups)),
                credential_type="oidc_token",
                external_token_id=jti if oidc.storable(jti, 255) else "",
                issuer=token.issuer,
            ),
            view.policy.version,
        )
        entry = IdentityEntry(principal, view.policy.version, float(claims["exp"]))
        # Signed here (the token ``_issue`` then hands out; a re-signed one is as long) and refused, not
        # handed out, over the kit's limit: every service would refuse it, and nothing would say why.
        size = len(self._issue(entry).token)
        if size > MAX_TOKEN_BYTES:
            refusal = oidc_claims.too_large(size, principal)
            await self._refuse_claims(tenant_id, subject_value, token.issuer, refusal, roles, groups)
        await self._record_roles(tenant_id, subject_value, token.issuer, found, asserted, claims)
        self.cache.put(digest, tenant_id, entry, generation=generation, expires=entry.credential_expires)
        return entry

    async def _record_roles(
        self,
        tenant_id: str,
        subject: str,
        issuer: str,
        found: OidcSubject,
        asserted: tuple[str, ...],
        claims: Mapping[str, Any],
    ) -> None:
        """Record what the provider says this subject holds, for the admin checks: a lesser admin may not act on
        (create, disable, mint a key for) a subject holding more, row or no row. Written when the subject is
        first seen or its roles change, never on a warm call."""
        if found.recorded_roles != asserted:
            await self._store.record_oidc_subject(tenant_id, subject, issuer, asserted, _issued_at(claims))

    async def _refuse_claims(
        self,
        tenant_id: str,
        subject: str,
        issuer: str,
        refusal: FailedPrecondition,
        roles: set[str],
        groups: set[str],
    ) -> NoReturn:
        """Refuse a verified sign-in for what its provider asserts (``oidc_claims``): logged at every try and
        recorded in the tenant's trail at most once a window per subject and replica, so that its admins
        learn why a user cannot sign in. The record names the user, never its groups (they may be what made it
        too large, and a record over NATS's message limit would hold up the trail). Not a failed guess: the
        token is the provider's own, so it does not count against the client's throttle."""
        attributes = {
            "issuer": issuer,
            **refusal.metadata,
            "roles": str(len(roles)),
            "groups": str(len(groups)),
        }
        log.warning(
            "an OIDC sign-in was refused: its provider asserts more than a token can carry",
            extra={"reason": refusal.reason, "tenant_id": tenant_id, "subject": subject, **attributes},
        )
        if self._oversized_reported.record_failure(f"{tenant_id}\0{issuer}\0{subject}"):
            actor = Principal(
                tenant_id=tenant_id, subject=subject, credential_type="oidc_token", issuer=issuer
            )
            try:
                await self._access.refused(
                    Actor(actor, frozenset(), False),
                    AUTHENTICATE_METHOD,
                    subject,
                    refusal,
                    attributes=attributes,
                )
            except Exception:
                # The refusal stands either way; a lost record must not turn it into INTERNAL.
                log.warning("recording a refused OIDC sign-in failed", exc_info=True)
        raise refusal


def _issued_at(claims: Mapping[str, Any]) -> datetime | None:
    """The token's ``iat`` as a time, or None when it has none (or none a calendar holds)."""
    iat = claims.get("iat")
    if isinstance(iat, bool) or not isinstance(iat, int | float):
        return None
    try:
        return datetime.fromtimestamp(iat, UTC)
    except (OverflowError, OSError, ValueError):
        return None
