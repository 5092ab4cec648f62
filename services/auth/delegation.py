"""IssueDelegatedToken: a fresh internal token for a principal that authenticated earlier, without its key.

Work that runs later than its request (the gateway's async jobs) cannot keep the caller's 5-minute token,
and must never store the caller's API key. Instead a platform service account holding
PERMISSION_TOKEN_DELEGATE names the principal by the ids auth itself issued (tenant, subject, API key id),
and auth re-reads that key now: a key revoked or expired since, a disabled user or tenant stop the work
(FAILED_PRECONDITION with Authenticate's reason), and roles, groups and scopes are those of now, never a
copy kept by the caller. The token says who asked for it in an RFC 8693 ``act`` claim.
"""

from __future__ import annotations

import logging
import time

from parapet.kit.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from parapet.kit.identity import Principal, TokenSigner
from services.auth.access import Access, check_tenant_id, key_refusal
from services.auth.authenticator import key_principal
from services.auth.issued import Issued
from services.auth.permissions import BY_NAME, PLATFORM_PERMISSIONS, Permission
from services.auth.store import AuthStore

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 255


class Delegator:
    def __init__(self, store: AuthStore, access: Access, signer: TokenSigner, platform_tenant: str) -> None:
        self._store = store
        self._access = access
        self._signer = signer
        self._platform_tenant = platform_tenant

    async def issue(self, caller: Principal, tenant_id: str, subject: str, api_key_id: str) -> Issued:
        await self._check_caller(caller)
        check_tenant_id(tenant_id)
        violations = [
            (name, f"required, at most {MAX_ID_LENGTH} characters")
            for name, value in (("subject", subject), ("api_key_id", api_key_id))
            if not value or len(value) > MAX_ID_LENGTH
        ]
        if violations:
            raise InvalidArgument("the principal is incomplete", field_violations=violations)
        record = await self._store.key_record_by_id(tenant_id, api_key_id)
        # A key that does not exist and a key of another user look the same: the caller learns nothing more.
        if record is None or record.user_id != subject:
            raise self._refused(
                caller, tenant_id, "API_KEY_INVALID", "the principal's API key does not exist"
            )
        now = time.time()
        refusal = key_refusal(record, now)
        if refusal is not None:
            raise self._refused(caller, tenant_id, *refusal)
        principal = await self._access.with_permissions(
            key_principal(tenant_id, record), record.policy_version
        )
        self._check_target(caller, principal)
        full = int(now) + int(self._signer.ttl_seconds)
        expires = full if record.expire_time is None else min(full, int(record.expire_time.timestamp()))
        token = self._signer.sign(
            principal,
            now=now,
            extra_claims={"exp": expires, "act": {"sub": caller.subject, "tnt": caller.tenant_id}},
        )
        log.info(
            "delegated token issued",
            extra={"for_tenant": tenant_id, "for_subject": subject, "api_key_id": api_key_id},
        )
        return Issued(token, expires, principal, record.policy_version)

    async def _check_caller(self, caller: Principal) -> None:
        # The delegator's own key re-read now: a token of a key revoked after a leak must not go on delegating.
        held, _ = await self._access.permissions_of(await self._access.current(caller))
        if caller.tenant_id != self._platform_tenant or Permission.PERMISSION_TOKEN_DELEGATE not in held:
            raise PermissionDenied(
                "this needs the token.delegate permission of a platform service account",
                reason="PERMISSION_MISSING",
                metadata={"permission": "token.delegate"},
            )

    @staticmethod
    def _check_target(caller: Principal, principal: Principal) -> None:
        """Refuse a principal holding platform permissions: a delegator holds token.delegate and nothing else,
        and a key id is no secret (it travels in every token its user sends), so delegating an operator
        would hand the delegator every tenant's administration, and another delegator's principal the same
        reach again. Jobs run for tenants' principals, which hold tenant permissions only."""
        platform = sorted(
            name for name in principal.permissions or () if BY_NAME.get(name) in PLATFORM_PERMISSIONS
        )
        if platform:
            log.warning(
                "delegation refused",
                extra={
                    "reason": "PRIVILEGE_ESCALATION",
                    "for_subject": principal.subject,
                    "caller": caller.subject,
                },
            )
            raise PermissionDenied(
                "a principal holding platform permissions cannot be delegated",
                reason="PRIVILEGE_ESCALATION",
                metadata={"permission": platform[0]},
            )

    @staticmethod
    def _refused(caller: Principal, tenant_id: str, reason: str, message: str) -> FailedPrecondition:
        log.warning(
            "delegation refused", extra={"reason": reason, "for_tenant": tenant_id, "caller": caller.subject}
        )
        return FailedPrecondition(message, reason=reason, metadata={"tenant_id": tenant_id})
