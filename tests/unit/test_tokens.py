"""Tokens: hashed at rest, short-lived, single use, bound to one console."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.access.tokens import Grant, MemoryTokenStore, Tokens, digest_of
from broker.errors import (
    TOKEN_EXPIRED,
    TOKEN_INVALID,
    TOKEN_MISSING,
    TOKEN_REVOKED,
    TOKEN_USED,
    BrokerError,
    Failure,
)
from broker.model import ConsoleRef
from unit_support import FakeClock

REF = ConsoleRef("c7a5fdbd-edaf-9455-926a-d65c16db1809", 1)
OTHER = ConsoleRef("3e0d3b4a-1b0f-4c61-9d3b-7a8d6f1f0e55", 0)


@pytest.fixture
def store() -> MemoryTokenStore:
    return MemoryTokenStore()


@pytest.fixture
def tokens(store: MemoryTokenStore, clock: FakeClock) -> Tokens:
    return Tokens(store, clock=clock)


def refusal(tokens: Tokens, token: str | None) -> Failure:
    with pytest.raises(BrokerError) as caught:
        tokens.redeem(token)
    return caught.value.failure


# -- minting --------------------------------------------------------------------------


def test_token_has_at_least_128_bits_as_43_urlsafe_characters(tokens: Tokens) -> None:
    token = tokens.mint(REF, "vm").token
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    assert len(token) * 6 >= 128


def test_two_tokens_are_distinct(tokens: Tokens) -> None:
    assert len({tokens.mint(REF, "vm").token for _ in range(50)}) == 50


def test_store_holds_only_the_sha256_digest(tokens: Tokens, store: MemoryTokenStore) -> None:
    token = tokens.mint(REF, "vm").token
    assert list(store._grants) == [hashlib.sha256(token.encode()).hexdigest()]
    assert digest_of(token) in store._grants
    assert token not in repr(store._grants)
    assert token not in repr(store.__dict__)
    assert all(token not in repr(grant) for grant in store._grants.values())


def test_grant_carries_the_console_and_name_it_was_minted_for(tokens: Tokens, clock: FakeClock) -> None:
    minted = tokens.mint(REF, "vm")
    assert minted.grant == Grant(console=REF, name="vm", expires_at=clock.now + 60)
    assert tokens.redeem(minted.token) == minted.grant


def test_default_ttl_is_60_seconds(tokens: Tokens, clock: FakeClock) -> None:
    assert tokens.mint(REF, "vm").grant.expires_at == clock.now + 60


@pytest.mark.parametrize("ttl", [1, 30, 2.5, 600])
def test_custom_ttl(tokens: Tokens, clock: FakeClock, ttl: float) -> None:
    assert tokens.mint(REF, "vm", ttl).grant.expires_at == clock.now + ttl


def test_configured_default_and_max_ttl(store: MemoryTokenStore, clock: FakeClock) -> None:
    tokens = Tokens(store, default_ttl=5, max_ttl=10, clock=clock)
    assert tokens.mint(REF, "vm").grant.expires_at == clock.now + 5
    assert tokens.mint(REF, "vm", 10).grant.expires_at == clock.now + 10
    with pytest.raises(ValueError):
        tokens.mint(REF, "vm", 11)


@pytest.mark.parametrize(
    "ttl", [600.001, 3600, float("inf"), 0, 0.0, 0.001, 0.999, -1, -0.5, float("nan"), True, False, "60", b"60", [60]]
)
def test_bad_ttl_is_a_value_error(tokens: Tokens, store: MemoryTokenStore, ttl: object) -> None:
    with pytest.raises(ValueError, match="ttl"):
        tokens.mint(REF, "vm", ttl)  # type: ignore[arg-type]
    assert len(store) == 0


def test_check_ttl_returns_the_default_for_none(tokens: Tokens) -> None:
    assert tokens.check_ttl(None) == 60.0
    assert tokens.check_ttl(7) == 7.0


# -- redeeming ------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token(tokens: Tokens, token: str | None) -> None:
    assert refusal(tokens, token) is TOKEN_MISSING


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "x" * 42,
        "x" * 44,
        "x" * 42 + "=",
        "x" * 42 + "/",
        "x" * 42 + " ",
        " " + "x" * 42,
        "x" * 43 + "\n",
        "é" * 43,
    ],
)
def test_wrong_shape_is_invalid(tokens: Tokens, token: str) -> None:
    assert refusal(tokens, token) is TOKEN_INVALID


def test_unknown_well_formed_token_is_invalid(tokens: Tokens) -> None:
    tokens.mint(REF, "vm")
    assert refusal(tokens, "A" * 43) is TOKEN_INVALID


def test_first_redeem_wins_second_is_used(tokens: Tokens) -> None:
    token = tokens.mint(REF, "vm").token
    tokens.redeem(token)
    assert refusal(tokens, token) is TOKEN_USED
    assert refusal(tokens, token) is TOKEN_USED


def test_redeem_just_before_expiry_works(tokens: Tokens, clock: FakeClock) -> None:
    token = tokens.mint(REF, "vm").token
    clock.advance(59.999)
    assert tokens.redeem(token).console == REF


def test_redeem_after_expiry_is_expired(tokens: Tokens, clock: FakeClock) -> None:
    token = tokens.mint(REF, "vm").token
    clock.advance(61)
    assert refusal(tokens, token) is TOKEN_EXPIRED


def test_redeem_exactly_at_expiry_is_expired(tokens: Tokens, clock: FakeClock) -> None:
    minted = tokens.mint(REF, "vm", 30)
    clock.now = minted.grant.expires_at
    assert refusal(tokens, minted.token) is TOKEN_EXPIRED


def test_expired_token_stays_expired(tokens: Tokens, clock: FakeClock) -> None:
    token = tokens.mint(REF, "vm").token
    clock.advance(61)
    assert refusal(tokens, token) is TOKEN_EXPIRED
    assert refusal(tokens, token) is TOKEN_EXPIRED


def test_each_token_opens_only_its_own_console(tokens: Tokens) -> None:
    first = tokens.mint(REF, "vm")
    second = tokens.mint(OTHER, "other")
    assert tokens.redeem(second.token).console == OTHER
    assert tokens.redeem(first.token).console == REF


# -- revoking -------------------------------------------------------------------------


def test_revoke_spends_unused_tokens_of_that_domain_only(tokens: Tokens) -> None:
    a = tokens.mint(REF, "vm").token
    b = tokens.mint(ConsoleRef(REF.uuid, 0), "vm").token
    other = tokens.mint(OTHER, "other").token
    assert tokens.revoke(REF.uuid) == 2
    # The store docs say "mark used and revoked"; redeem reports the more specific reason.
    assert refusal(tokens, a) is TOKEN_REVOKED
    assert refusal(tokens, b) is TOKEN_REVOKED
    assert tokens.redeem(other).console == OTHER


def test_revoke_leaves_already_used_tokens_reporting_used(tokens: Tokens) -> None:
    token = tokens.mint(REF, "vm").token
    tokens.redeem(token)
    assert tokens.revoke(REF.uuid) == 0
    assert refusal(tokens, token) is TOKEN_USED


def test_revoked_tokens_stay_revoked(tokens: Tokens) -> None:
    token = tokens.mint(REF, "vm").token
    tokens.revoke(REF.uuid)
    refusal(tokens, token)
    assert refusal(tokens, token) is TOKEN_REVOKED


def test_revoke_of_unknown_domain_changes_nothing(tokens: Tokens) -> None:
    token = tokens.mint(REF, "vm").token
    assert tokens.revoke("00000000-0000-0000-0000-000000000000") == 0
    assert tokens.redeem(token).console == REF


# -- forgetting old records -----------------------------------------------------------


def test_purge_forgets_records_older_than_remember_for(store: MemoryTokenStore, clock: FakeClock) -> None:
    tokens = Tokens(store, remember_for=100, clock=clock)
    old = tokens.mint(REF, "vm", 60).token  # expires at +60, forgettable after +160
    clock.advance(161)
    tokens.mint(REF, "vm")  # purging piggybacks on minting
    assert len(store) == 1
    assert refusal(tokens, old) is TOKEN_INVALID


def test_recently_expired_records_are_remembered(store: MemoryTokenStore, clock: FakeClock) -> None:
    tokens = Tokens(store, remember_for=100, clock=clock)
    old = tokens.mint(REF, "vm", 60).token
    clock.advance(159)
    tokens.mint(REF, "vm")
    assert len(store) == 2
    assert refusal(tokens, old) is TOKEN_EXPIRED


def test_purge_runs_at_most_every_ten_seconds(store: MemoryTokenStore, clock: FakeClock) -> None:
    tokens = Tokens(store, remember_for=0, clock=clock)
    clock.advance(10)
    tokens.mint(REF, "vm", 1)  # purges (nothing to forget), remembers the time
    clock.advance(5)
    tokens.mint(REF, "vm")  # the first has expired, but no purge yet
    assert len(store) == 2
    clock.advance(5)
    tokens.mint(REF, "vm")
    assert len(store) == 2  # the first one is gone, the third is new


def test_memory_store_purge_keeps_records_expiring_at_the_cutoff() -> None:
    store = MemoryTokenStore()
    store.add("a", Grant(REF, "vm", expires_at=100))
    store.add("b", Grant(REF, "vm", expires_at=99))
    store.purge(100)
    assert store.get("a") is not None and store.get("b") is None


def test_memory_store_claim_returns_the_grant_as_it_was() -> None:
    store = MemoryTokenStore()
    store.add("d", Grant(REF, "vm", expires_at=100))
    assert store.claim("d") == Grant(REF, "vm", expires_at=100, used=False)
    assert store.claim("d") == Grant(REF, "vm", expires_at=100, used=True)
    assert store.claim("unknown") is None


# -- anything else --------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.from_regex(r"[A-Za-z0-9_-]{43}", fullmatch=True)))
def test_any_string_only_ever_raises_broker_error(token: str) -> None:
    tokens = Tokens(MemoryTokenStore(), clock=FakeClock())
    tokens.mint(REF, "vm")
    with pytest.raises(BrokerError) as caught:
        tokens.redeem(token)
    assert caught.value.failure in (TOKEN_MISSING, TOKEN_INVALID)


def test_rate_limiter_allows_a_burst_then_the_rate() -> None:
    from broker.access.limits import RateLimiter

    clock = FakeClock()
    limiter = RateLimiter(rate_per_minute=60, burst=3, clock=clock)
    assert [limiter.allow("k") for _ in range(3)] == [0, 0, 0]
    wait = limiter.allow("k")
    assert 0 < wait <= 1.0
    assert limiter.allow("other") == 0, "keys have their own buckets"
    clock.advance(1.0)
    assert limiter.allow("k") == 0
