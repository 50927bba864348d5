"""The provider's failure and pause gate (oauthpw_async.gate): what failed renewals teach it."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from oauthpw_async.errors import (
    CredentialsLockedOut,
    InvalidCredentials,
    OAuthPWError,
    RefreshTokenRejected,
    TokenEndpointRateLimited,
    TokenRequestsPaused,
    TransientTokenError,
)
from oauthpw_async.fleet.errors import COORDINATOR_RETRY, CoordinatorRefused, CoordinatorUnavailable
from oauthpw_async.gate import Gate
from oauthpw_async.lifecycle import NEVER
from oauthpw_async.provider import RENEWAL_BACKOFF
from oauthpw_async.testing import FakeClock


def gate() -> Gate:
    return Gate(RENEWAL_BACKOFF)


def test_a_rejected_login_holds_until_the_renewers_recheck() -> None:
    g = gate()
    g.failed(InvalidCredentials("no", status=400), 10.0, random.Random(1), recheck=5.0, valid_for=None)
    assert g.holds(14.9, renewing=False)
    assert isinstance(g.error(), CredentialsLockedOut)
    assert g.holds(15.0, renewing=True)  # never forgotten while a renewal is in flight
    assert not g.holds(15.0, renewing=False)
    g.failed(InvalidCredentials("no", status=400), 20.0, random.Random(1), recheck=math.inf, valid_for=None)
    assert g.holds(1e12, renewing=False)  # a local renewer: only a reset ends it
    g.reset(other_account=False)
    assert not g.holds(20.0, renewing=False)


def test_a_rejected_refresh_token_is_an_ordinary_failure() -> None:
    g = gate()
    g.failed(RefreshTokenRejected("no", status=400), 0.0, random.Random(1), recheck=5.0, valid_for=None)
    assert g.fatal is None and g.failures == 1 and g.retry_not_before > 0


def test_errors_carry_their_own_retry_meaning() -> None:
    g = gate()
    for _ in range(20):  # the backoff grows to a minute; Redis is asked again within seconds
        g.failed(CoordinatorUnavailable("down", where="127.0.0.1:1"), 0.0, random.Random(1), recheck=5, valid_for=None)
        assert g.retry_not_before <= COORDINATOR_RETRY
    assert g.fatal is None
    g.failed(CoordinatorRefused("no", code="NOPERM", where="x"), 0.0, random.Random(1), recheck=5.0, valid_for=None)
    assert g.holds(0.0, renewing=False) and 0 < g.fatal_recheck_at < math.inf  # latched, asked again later


def test_the_servers_window_outlives_a_token_and_a_reset_but_not_another_account() -> None:
    g, clock = gate(), FakeClock()
    limited = TransientTokenError("slow down", status=429, retry_after=300.0)
    g.failed(limited, 0.0, random.Random(1), recheck=5.0, valid_for=None)
    assert g.rate_limited_until == 300.0 and g.retry_not_before >= 300.0
    assert isinstance(g.paused(0.0, max_wait=120.0, clock=clock), TokenEndpointRateLimited)
    assert g.paused(0.0, max_wait=400.0, clock=clock) is None
    g.opened()
    assert (g.failures, g.retry_not_before, g.rate_limited_until) == (0, NEVER, 300.0)
    assert g.delay(0.0) == 300.0
    g.reset(other_account=False)
    assert g.retry_not_before == 300.0
    g.reset(other_account=True)
    assert g.rate_limited_until == g.retry_not_before == NEVER


def test_a_pause_is_no_backoff_step() -> None:
    g = gate()
    paused = TokenRequestsPaused("budget", retry_at=0.0, retry_after=50.0)
    g.failed(paused, 0.0, random.Random(1), recheck=5.0, valid_for=1.0)
    assert g.failures == 0 and g.retry_not_before == 50.0


FAILURES = st.sampled_from(["transient", "limited", "paused", "redis", "refused", "rejected"])


def make(kind: str) -> OAuthPWError:
    return {
        "transient": TransientTokenError("x", status=503),
        "limited": TransientTokenError("x", status=429, retry_after=30.0),
        "paused": TokenRequestsPaused("x", retry_at=0.0, retry_after=20.0),
        "redis": CoordinatorUnavailable("x", where="h"),
        "refused": CoordinatorRefused("x", code="NOPERM", where="h"),
        "rejected": InvalidCredentials("x", status=400),
    }[kind]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(FAILURES, st.floats(0, 100), st.one_of(st.none(), st.floats(0.001, 100))), max_size=30))
def test_no_attempt_is_ever_allowed_inside_the_servers_window(steps: list[tuple[str, float, float | None]]) -> None:
    g, now, rng = gate(), 0.0, random.Random(0)
    for kind, later, valid_for in steps:
        now += later
        before = g.failures
        g.failed(make(kind), now, rng, recheck=5.0, valid_for=valid_for)
        assert g.retry_not_before >= g.rate_limited_until
        assert g.delay(now) >= g.rate_limited_until - now
        assert g.failures in (before, before + 1)
        if g.fatal is not None:
            assert isinstance(g.error(), OAuthPWError) and g.error() is not g.fatal
