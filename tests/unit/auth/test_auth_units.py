"""Pure parts of the auth service: key material, hashing, throttling, caches, policy checks, token inspection."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from parapet.auth.v1 import permission_pb2 as perm
from parapet.auth.v1 import tenant_policy_pb2
from parapet.kit.errors import InvalidArgument, PermissionDenied, Unauthenticated
from parapet.kit.identity import MAX_TOKEN_BYTES, Principal, TokenSigner
from services.auth import apikeys, bounds, oidc, permissions, policy
from services.auth.cache import TenantKeyedCache
from services.auth.issued import Issued
from services.auth.throttle import FailureThrottle


def test_keys_are_random_parseable_and_hashed_with_the_pepper() -> None:
    prefix, key = apikeys.generate()
    other_prefix, other = apikeys.generate()
    assert prefix != other_prefix and key != other
    parsed = apikeys.parse(key)
    assert parsed is not None and parsed.prefix == prefix and parsed.full == key
    for bad in ("", "pk_", "hello", key + "x", key.replace("pk_", "sk_"), "pk_" + "a" * 200):
        assert apikeys.parse(bad) is None
    one, two = apikeys.KeyHasher(b"p" * 32), apikeys.KeyHasher(b"q" * 32)
    assert one.hash(key) != two.hash(key)  # the pepper matters
    assert apikeys.KeyHasher.matches(one.hash(key), one.hash(key))
    assert not apikeys.KeyHasher.matches(one.hash(key), one.hash(other))
    with pytest.raises(ValueError):
        apikeys.KeyHasher(b"short")


def test_throttle_counts_failures_per_key_in_a_window() -> None:
    throttle = FailureThrottle(3, window_seconds=0.2)
    for _ in range(2):
        throttle.record_failure("a")
    assert throttle.retry_after("a") is None
    throttle.record_failure("a")
    wait = throttle.retry_after("a")
    assert wait is not None and 0 < wait <= 0.2
    assert throttle.retry_after("b") is None
    time.sleep(0.25)
    assert throttle.retry_after("a") is None


def test_a_throttled_prefix_refuses_every_secret_but_its_keys_and_is_reported_once_a_window() -> None:
    throttle = FailureThrottle(2, window_seconds=0.3)
    stored, guess = b"s" * 32, b"g" * 32
    assert throttle.record_failure("p", stored_hash=stored) is False
    assert throttle.record_failure("p", stored_hash=stored) is True  # the limit reached: report it
    assert throttle.retry_after("p", presented_hash=guess) is not None
    assert throttle.retry_after("p") is not None
    assert throttle.retry_after("p", presented_hash=stored) is None  # the key itself
    assert throttle.record_failure("p", stored_hash=stored) is False  # reported already in this window
    # A prefix no key has (nothing stored) lets nothing through.
    for _ in range(2):
        throttle.record_failure("unknown")
    assert throttle.retry_after("unknown", presented_hash=guess) is not None
    time.sleep(0.35)
    assert throttle.retry_after("p", presented_hash=guess) is None
    throttle.record_failure("p", stored_hash=stored)
    assert throttle.record_failure("p", stored_hash=stored) is True  # a new episode is reported again


def test_a_throttled_prefix_remembers_why_its_key_may_not_act() -> None:
    # Answered from memory while throttled, so that clients holding a revoked key stop reading the database.
    throttle = FailureThrottle(2, window_seconds=60)
    stored, guess = b"s" * 32, b"g" * 32
    revoked = ("API_KEY_REVOKED", "the API key was revoked")
    throttle.record_failure("p", stored_hash=stored, refusal=revoked)
    assert throttle.refusal_of("p", stored) is None  # not throttled yet: the lookup reads the database
    throttle.record_failure("p", stored_hash=stored, refusal=revoked)
    assert throttle.refusal_of("p", stored) == revoked
    assert throttle.refusal_of("p", guess) is None  # another secret: refused as a guess, by retry_after
    # A valid key whose prefix was throttled by guesses has no refusal to remember: it goes on as usual.
    for _ in range(2):
        throttle.record_failure("q", stored_hash=stored)
    assert throttle.refusal_of("q", stored) is None


def test_a_prefix_s_failures_are_kept_in_a_slotted_record() -> None:
    # Up to 100k prefixes are tracked at once: a per-instance dict beside each deque is memory for nothing.
    throttle = FailureThrottle(2, window_seconds=60)
    throttle.record_failure("p", stored_hash=b"s" * 32)
    (recent,) = throttle._failures.values()
    assert not hasattr(recent, "__dict__")


def test_a_token_at_the_identity_bound_fits_the_kit_s_limit() -> None:
    # A user exactly at bounds.MAX_TOKEN_IDENTITY_BYTES (an emoji id, the most roles of the longest names,
    # CJK groups), in a delegated token whose every other claim is at its largest, is within the kit's limit.
    signer = TokenSigner(Ed25519PrivateKey.generate(), "k" * 43, issuer="i" * 64, audience="a" * 64)
    user_id = "\N{GRINNING FACE}" * 100
    roles = [f"r{i:02d}" + "r" * 60 for i in range(bounds.MAX_ROLES)]
    groups: list[str] = []
    while not bounds.token_violations(user_id, roles, [*groups, f"{len(groups):02d}財"], ["user.groups"]):
        groups.append(f"{len(groups):02d}財")
        while len(groups[-1]) < bounds.MAX_GROUP_LENGTH and not bounds.token_violations(
            user_id, roles, [*groups[:-1], groups[-1] + "財"], ["user.groups"]
        ):
            groups[-1] += "財"
    while not bounds.token_violations(user_id, roles, [*groups[:-1], groups[-1] + "x"], ["user.groups"]):
        groups[-1] += "x"
    claims = json.dumps([user_id, roles, groups], separators=(",", ":"))
    assert len(claims) - 4 == bounds.MAX_TOKEN_IDENTITY_BYTES  # exactly at the bound (less the outer list)
    names = tuple(sorted(permissions.BY_NAME))
    principal = Principal(
        tenant_id="t" * 63,
        subject=user_id,
        roles=tuple(roles),
        groups=tuple(groups),
        scopes=names,
        credential_type="api_key",
        api_key_id="6f1c2a9e-0b7d-4c1e-9a35-2d8e7f4b1c60",
        permissions=names,
    )
    token = signer.sign(
        principal, extra_claims={"exp": 9_999_999_999, "act": {"sub": "s" * 64, "tnt": "p" * 63}}
    )
    assert len(token) <= MAX_TOKEN_BYTES
    # A byte more is refused, on the largest of the fields the request sets.
    ((field, _),) = bounds.token_violations(user_id, roles, [*groups[:-1], groups[-1] + "x"], ["user.groups"])
    assert field == "user.groups"
    ((field, _),) = bounds.token_violations(user_id, [*roles, "r"], groups, ["user.user_id", "user.roles"])
    assert field == "user.user_id"


def test_cache_drops_a_tenant_and_refuses_stale_writes() -> None:
    cache: TenantKeyedCache[str] = TenantKeyedCache(size=2, ttl=60)
    generation = cache.generation("t1")
    cache.put(b"k1", "t1", "v1", generation=generation)
    cache.put(b"k2", "t2", "v2", generation=cache.generation("t2"))
    cache.invalidate_tenant("t1")
    assert cache.get(b"k1") is None and cache.get(b"k2") == "v2"
    cache.put(b"k1", "t1", "stale", generation=generation)  # read before the invalidation
    assert cache.get(b"k1") is None
    cache.put(b"k3", "t3", "v3", generation=0)
    cache.put(b"k4", "t3", "v4", generation=0)
    assert len(cache) == 2 and cache.get(b"k2") is None  # least recently used evicted
    cache.put(b"k5", "t5", "expiring", generation=0, expires=time.time() - 1)
    assert cache.get(b"k5") is None
    cache.clear()
    assert len(cache) == 0


def test_roles_grant_what_the_policy_says_and_nothing_else() -> None:
    tenant_policy = permissions.default_policy()
    tenant_policy.roles.add(role="reader", permissions=[perm.PERMISSION_DOCUMENTS_READ])
    assert permissions.granted(tenant_policy, ["reader", "ghost"]) == {perm.PERMISSION_DOCUMENTS_READ}
    assert perm.PERMISSION_PLATFORM_ADMIN not in permissions.granted(tenant_policy, ["admin"])
    platform = permissions.default_policy(platform=True)
    assert perm.PERMISSION_PLATFORM_ADMIN in permissions.granted(platform, ["platform-admin"])
    assert permissions.name(perm.PERMISSION_DOCUMENTS_READ) == "documents.read"


def test_edits_cannot_grant_more_than_the_author_holds() -> None:
    old = permissions.default_policy()
    new = tenant_policy_pb2.TenantPolicy()
    new.CopyFrom(old)
    new.roles.add(role="auditor", permissions=[perm.PERMISSION_AUDIT_READ])
    held = frozenset({perm.PERMISSION_ADMIN, perm.PERMISSION_CHAT})
    with pytest.raises(PermissionDenied) as raised:
        policy.check_grants(old, new, held, platform_tenant=False, is_platform=False)
    assert raised.value.reason == "PRIVILEGE_ESCALATION" and raised.value.metadata["role"] == "auditor"
    policy.check_grants(old, new, held, platform_tenant=False, is_platform=True)  # operators may
    new.roles.add(role="root", permissions=[perm.PERMISSION_PLATFORM_ADMIN])
    with pytest.raises(PermissionDenied):
        policy.check_grants(old, new, held, platform_tenant=False, is_platform=True)  # never in a tenant


def _edited(old: tenant_policy_pb2.TenantPolicy) -> tenant_policy_pb2.TenantPolicy:
    new = tenant_policy_pb2.TenantPolicy()
    new.CopyFrom(old)
    return new


def test_edits_cannot_take_from_or_reshape_a_role_the_author_does_not_fully_hold() -> None:
    old = permissions.default_policy()
    old.roles.add(role="helpdesk", permissions=[perm.PERMISSION_ADMIN, perm.PERMISSION_CHAT])
    old.roles.add(role="member", permissions=[perm.PERMISSION_CHAT])
    helpdesk = frozenset({perm.PERMISSION_ADMIN, perm.PERMISSION_CHAT})

    def refused(new: tenant_policy_pb2.TenantPolicy) -> tuple[str, str]:
        with pytest.raises(PermissionDenied) as raised:
            policy.check_grants(old, new, helpdesk, platform_tenant=False, is_platform=False)
        assert raised.value.reason == "PRIVILEGE_ESCALATION"
        return raised.value.metadata["role"], raised.value.metadata["permission"]

    cut = _edited(old)
    del cut.roles[0].permissions[:]
    cut.roles[0].permissions.append(perm.PERMISSION_CHAT)  # admin -> chat: demotes every admin
    assert refused(cut) == ("admin", "ingest")
    deleted = _edited(old)
    del deleted.roles[0]
    assert refused(deleted) == ("admin", "ingest")
    provider = _edited(old)
    provider.identity_providers.add(
        issuer="https://idp.example/", audiences=["p"], jwks_uri="https://idp.example/k"
    )
    assert refused(provider) == ("admin", "ingest")  # its tokens could claim role admin
    for allowed in (old, provider):
        policy.check_grants(old, allowed, helpdesk, platform_tenant=False, is_platform=True)  # operators may

    # What the author holds entirely stays theirs to change; reordering changes nothing.
    member = _edited(old)
    del member.roles[2].permissions[:]
    policy.check_grants(old, member, helpdesk, platform_tenant=False, is_platform=False)
    del member.roles[2]
    policy.check_grants(old, member, helpdesk, platform_tenant=False, is_platform=False)
    reordered = tenant_policy_pb2.TenantPolicy(roles=list(reversed(old.roles)))
    two = _edited(provider)
    two.identity_providers.add(
        issuer="https://other.example/", audiences=["p"], jwks_uri="https://other.example/k"
    )
    swapped = _edited(two)
    swapped.identity_providers[0].CopyFrom(two.identity_providers[1])
    swapped.identity_providers[1].CopyFrom(two.identity_providers[0])
    policy.check_grants(old, reordered, helpdesk, platform_tenant=False, is_platform=False)
    policy.check_grants(two, swapped, helpdesk, platform_tenant=False, is_platform=False)


def _ed25519_jwk(kid: str) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from jwt.algorithms import OKPAlgorithm

    jwk: dict[str, Any] = json.loads(OKPAlgorithm.to_jwk(ed25519.Ed25519PrivateKey.generate().public_key()))
    return jwk | {"kid": kid}


def test_a_jwks_document_is_an_object_with_a_list_whose_unusable_entries_are_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = _ed25519_jwk("k1")
    assert oidc.jwks_keys({"keys": [key]}) == [key] and oidc.jwks_keys({"keys": []}) == []
    # Not a JWKS document at all: ValueError, which a fetch counts as failed (the cached keys are kept).
    for bad in ([1, 2], [], None, "keys", {}, {"keys": None}, {"keys": {"kid": "k1"}}):
        with pytest.raises(ValueError):
            oidc.jwks_keys(bad)
    # Entries we cannot use are skipped, each with a warning (RFC 7517: ignore what one does not understand).
    odd: list[Any] = [
        1,
        None,
        "k1",
        {"kid": "k1"},  # no kty
        {"kty": "OKP", "kid": "k1"},  # no curve, no x
        {"kty": "OKP", "crv": "X25519", "x": key["x"]},  # a key-agreement curve
        {"kty": "oct", "k": "c2VjcmV0"},  # symmetric
        key | {"use": "enc"},  # not for signatures
        key | {"alg": ["EdDSA"]},  # a member of the wrong type
        key | {"alg": "ES256"},  # meant for another algorithm
    ]
    with caplog.at_level(logging.WARNING, logger="services.auth.oidc"):
        assert oidc.jwks_keys({"keys": [*odd, key]}, issuer="https://idp.example/") == [key]
    skipped = [r for r in caplog.records if r.getMessage() == "a JWKS entry was skipped"]
    assert [getattr(r, "index", None) for r in skipped] == list(range(len(odd)))
    assert oidc.read_jwks({"keys": odd}) == ([], [(i, oidc._unusable(e) or "") for i, e in enumerate(odd)])

    # Policy validation refuses only a document without one usable key (or no JWKS document at all).
    def jwks_violations(document: str) -> list[tuple[str, str]]:
        inline = tenant_policy_pb2.TenantPolicy()
        inline.identity_providers.add(issuer="https://idp.example/", audiences=["p"], jwks_json=document)
        return [v for v in policy.violations(inline) if v[0].endswith("jwks_json")]

    refused = [
        ("policy.identity_providers[0].jwks_json", "must be a JWKS document with at least one usable key")
    ]
    for document in (
        "not json",
        "[1]",
        '{"keys": {}}',
        '{"keys": []}',
        json.dumps({"keys": odd}),
        "[" * 100_000,
    ):
        assert jwks_violations(document) == refused, document[:20]
    assert jwks_violations(json.dumps({"keys": [*odd, key]})) == []


async def test_an_inline_jwks_without_a_usable_key_is_no_key_not_a_crash() -> None:
    for document in ('{"keys": [1]}', '{"keys": 1}', "not json"):  # stored before validation refused them
        provider = tenant_policy_pb2.OidcProvider(issuer="https://idp.example/", jwks_json=document)
        token = oidc.UnverifiedToken("t", "EdDSA", "k1", provider.issuer)
        with pytest.raises(Unauthenticated) as raised:
            await oidc.JwksCache().key(provider, token)
        assert raised.value.reason == "OIDC_SIGNATURE_INVALID"


def test_policy_validation_names_each_bad_field() -> None:
    bad = tenant_policy_pb2.TenantPolicy()
    bad.roles.add(role="a")
    bad.roles.add(role="a")
    bad.models.max_tokens_per_request = -1
    bad.rate_limits.add(requests_per_minute=-5)
    provider = bad.identity_providers.add(issuer="", jwks_json="not json")
    provider.max_clock_skew.seconds = 600
    hostile = bad.identity_providers.add(issuer="https://idp.example", jwks_json="not json")
    hostile.max_clock_skew.seconds = -(2**63)  # not a Duration at all: refused, not a crash
    bad.retention.body_retention_days = 2**31 - 1  # its expiry dates would overflow
    with pytest.raises(InvalidArgument) as raised:
        policy.validate(bad)
    fields = {field for field, _ in policy.violations(bad)}
    assert raised.value.reason == "POLICY_INVALID"
    assert {
        "policy.roles[1].role",
        "policy.models.max_tokens_per_request",
        "policy.rate_limits[0].scope",
        "policy.rate_limits[0]",
        "policy.identity_providers[0].issuer",
        "policy.identity_providers[0].audiences",
        "policy.identity_providers[0].jwks_json",
        "policy.identity_providers[0].max_clock_skew",
        "policy.identity_providers[1].max_clock_skew",
        "policy.retention.body_retention_days",
    } <= fields
    policy.validate(permissions.default_policy())


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("garbage", "OIDC_TOKEN_INVALID"),
        (jwt.encode({"iss": "https://i/"}, "", algorithm="none"), "OIDC_ALGORITHM_REJECTED"),
        (jwt.encode({"iss": "https://i/"}, "k" * 32, algorithm="HS256"), "OIDC_ALGORITHM_REJECTED"),
        (jwt.encode({"iss": "https://i/"}, "k" * 64, algorithm="HS512"), "OIDC_ALGORITHM_REJECTED"),
    ],
)
def test_inspection_refuses_before_any_lookup(token: str, reason: str) -> None:
    with pytest.raises(Unauthenticated) as raised:
        oidc.inspect(token)
    assert raised.value.reason == reason


@pytest.mark.parametrize(
    ("aud", "audiences"),
    [
        ("app", ("app",)),
        (["a", "b", "a"], ("a", "b")),
        (["a", 5, None, "", "b\x00", ["c"]], ("a",)),  # only strings a routing row could hold
        (None, ()),
        ({"a": 1}, ()),
        (7, ()),
    ],
)
def test_inspection_reads_the_audiences_that_route_the_token(aud: Any, audiences: tuple[str, ...]) -> None:
    claims: dict[str, Any] = {"iss": "https://i/"} if aud is None else {"iss": "https://i/", "aud": aud}
    token = jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA")
    assert oidc.inspect(token).audiences == audiences


@pytest.mark.parametrize(
    ("azp", "authorized_party"),
    [("app", "app"), (None, ""), ("", ""), ("app\x00", ""), (["app"], ""), (7, ""), ({"app": 1}, "")],
)
def test_inspection_reads_the_authorized_party_a_routing_row_could_hold(
    azp: Any, authorized_party: str
) -> None:
    claims: dict[str, Any] = {"iss": "https://i/", "aud": ["account", "app"]}
    if azp is not None:
        claims["azp"] = azp
    token = jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA")
    assert oidc.inspect(token).authorized_party == authorized_party


def test_claim_mapping_accepts_lists_and_space_separated_strings() -> None:
    claims = {"roles": ["a", "b"], "groups": "x y", "bad": {"k": 1}}
    assert oidc.claim_strings(claims, "roles") == ("a", "b")
    assert oidc.claim_strings(claims, "groups") == ("x", "y")
    assert oidc.claim_strings(claims, "bad") == () and oidc.claim_strings(claims, "") == ()
    assert Principal("t", "s").to_proto().tenant_id == "t"


@pytest.mark.parametrize(
    ("claims", "withheld"),
    [
        ({"_claim_names": {"groups": "src1"}}, ("groups",)),  # Entra's overage: groups at Graph
        ({"_claim_names": {"groups": "src1", "roles": "src1"}}, ("roles", "groups")),
        ({"hasgroups": True}, ("groups",)),  # Entra's implicit flow
        ({"hasgroups": True, "groups": ["g"]}, ()),  # the claim is there: nothing withheld
        ({"_claim_names": {"groups": "src1"}, "groups": []}, ()),
        ({"_claim_names": {"photos": "src1"}}, ()),  # a claim the provider does not map
        ({"_claim_names": ["groups"]}, ()),  # no claim names at all
        ({"hasgroups": "true"}, ()),
    ],
)
def test_claims_a_provider_withheld_are_those_it_maps_and_points_elsewhere_for(
    claims: dict[str, Any], withheld: tuple[str, ...]
) -> None:
    assert oidc.withheld_claims(claims, ("roles", "groups")) == withheld


def test_an_issued_token_builds_its_response_once() -> None:
    principal = Principal("t", "svc", ("admin",), ("finance",), credential_type="api_key", api_key_id="k1")
    issued = Issued("token-1", 1_900_000_000.0, principal, 7)
    response = issued.authenticate_response
    assert response is issued.authenticate_response  # shared by every warm call for this token
    assert (response.token, response.expire_time.seconds, response.policy_version) == (
        "token-1",
        1_900_000_000,
        7,
    )
    assert Principal.from_proto(response.principal) == principal
    renewed = Issued("token-2", 1_900_000_150.0, principal, 7)
    assert renewed.authenticate_response is not response and renewed.authenticate_response.token == "token-2"
    delegated = issued.delegated_response()
    assert (delegated.token, delegated.principal) == ("token-1", response.principal)


def test_a_tenant_id_is_matched_whole() -> None:
    """`re.match` with `$` let "acme\\n" through: a tenant id no NATS subject or internal token could carry."""
    from parapet.kit.errors import InvalidArgument
    from services.auth.access import check_tenant_id

    assert check_tenant_id("acme-2") == "acme-2"
    for bad in ("acme\n", "Acme", "2acme", "", "a" * 64, "acme.corp"):
        with pytest.raises(InvalidArgument):
            check_tenant_id(bad)
