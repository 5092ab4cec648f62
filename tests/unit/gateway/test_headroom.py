"""Which callers' model calls may start before their budget hold is granted."""

from __future__ import annotations

import pytest

from parapet.kit.identity import Principal
from services.gateway.headroom import BudgetHeadroom

ALICE = Principal("t1", "alice", api_key_id="k1")


def test_an_unknown_caller_waits_for_its_hold() -> None:
    assert not BudgetHeadroom(10).clear(ALICE)


def test_a_clean_grant_clears_the_caller_and_a_warning_or_refusal_withdraws_it() -> None:
    headroom = BudgetHeadroom(10)
    headroom.granted(ALICE, warned=False)
    assert headroom.clear(ALICE)
    headroom.granted(ALICE, warned=True)
    assert not headroom.clear(ALICE)
    assert len(headroom) == 0


def test_a_refusal_or_a_policy_change_withholds_every_caller_of_the_tenant() -> None:
    # A tenant-wide budget or rate limit refuses all the tenant's callers alike.
    headroom = BudgetHeadroom(10)
    bob, other = Principal("t1", "bob"), Principal("t2", "alice")
    for caller in (ALICE, bob, other):
        headroom.granted(caller, warned=False)
    headroom.withhold_tenant("t1")
    assert not headroom.clear(ALICE) and not headroom.clear(bob)
    assert headroom.clear(other)
    headroom.withhold_tenant("unknown")  # withholding a tenant nobody of is remembered is fine
    headroom.forget()
    assert len(headroom) == 0


def test_the_same_subject_with_another_key_or_tenant_is_another_caller() -> None:
    # Budgets can apply per API key or per user: one caller's clean grant says nothing of another's.
    headroom = BudgetHeadroom(10)
    headroom.granted(ALICE, warned=False)
    assert not headroom.clear(Principal("t1", "alice", api_key_id="k2"))
    assert not headroom.clear(Principal("t2", "alice", api_key_id="k1"))
    assert not headroom.clear(Principal("t1", "bob", api_key_id="k1"))


def test_the_least_recently_granted_caller_is_forgotten_first() -> None:
    headroom = BudgetHeadroom(2)
    callers = [Principal("t", f"user-{i}") for i in range(3)]
    headroom.granted(callers[0], warned=False)
    headroom.granted(callers[1], warned=False)
    headroom.granted(callers[0], warned=False)  # confirmed again: now the most recent
    headroom.granted(callers[2], warned=False)
    assert len(headroom) == 2
    assert headroom.clear(callers[0]) and headroom.clear(callers[2])
    assert not headroom.clear(callers[1])
    headroom.withhold_tenant("t")  # the evicted caller is no longer counted as the tenant's
    assert len(headroom) == 0
    headroom.granted(callers[1], warned=False)
    assert headroom.clear(callers[1])


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        BudgetHeadroom(0)
