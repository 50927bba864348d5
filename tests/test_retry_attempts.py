"""``retry.attempts``: bounded in count and in time, its waits within the policy, all on the given clock."""

from __future__ import annotations

import math
import random

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oauthpw_async.errors import UsageError
from oauthpw_async.exchange import TOKEN_RETRY
from oauthpw_async.retry import DEFAULT_RETRY, RetryPolicy, attempts
from oauthpw_async.session import SESSION_RETRY
from oauthpw_async.testing import FakeClock


class JumpClock(FakeClock):
    """A fake clock whose every sleep moves it at once (and is remembered)."""

    def __init__(self) -> None:
        super().__init__()
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(max(0.0, seconds))
        await anyio.lowlevel.checkpoint()


def _run(
    policy: RetryPolicy, deadline: float | None, work: list[float], seed: int
) -> tuple[JumpClock, list[int], list[float], bool]:
    """Fail every attempt, each taking the next ``work`` seconds of fake time; what happened."""
    clock = JumpClock()
    numbers: list[int] = []
    starts: list[float] = []

    async def main() -> bool:
        tries = attempts(policy, clock, deadline=deadline, rng=random.Random(seed))
        async for n in tries:
            numbers.append(n)
            starts.append(clock.now)
            clock.advance(work[n % len(work)])
        return tries.exhausted

    exhausted = anyio.run(main)
    return clock, numbers, starts, exhausted


policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 30),
    base_delay=st.floats(0.0, 5.0),
    max_delay=st.floats(0.0, 60.0),
    jitter=st.floats(0.0, 1.0),
    deadline=st.floats(0.0, 300.0),
)


@settings(max_examples=200, deadline=None)
@given(
    policy=policies,
    deadline=st.none() | st.floats(0.0, 300.0),
    work=st.lists(st.floats(0.0, 20.0), min_size=1, max_size=5),
    seed=st.integers(0, 2**32 - 1),
)
def test_attempts_are_bounded_in_count_and_time_and_wait_within_the_policy(
    policy: RetryPolicy, deadline: float | None, work: list[float], seed: int
) -> None:
    clock, numbers, starts, exhausted = _run(policy, deadline, work, seed)
    limit = policy.deadline if deadline is None else deadline
    assert exhausted
    assert numbers == list(range(len(numbers)))  # 0, 1, 2, ...
    assert 1 <= len(numbers) <= policy.max_attempts  # always one, never more than the policy allows
    first = starts[0]
    for start in starts[1:]:
        assert start - first <= limit + 1e-9  # no attempt begins after the deadline
    # It stopped because the count ran out, or the deadline passed.
    assert len(numbers) == policy.max_attempts or clock.now - first >= limit - 1e-9
    assert len(clock.slept) == len(numbers) - 1  # one wait between two attempts, none after the last
    for n, waited in enumerate(clock.slept):
        ceiling = min(policy.max_delay, policy.base_delay * 2.0**n)
        left = limit - (starts[n] + work[n % len(work)] - first)
        assert 0.0 <= waited <= ceiling + 1e-9
        # The jittered backoff, or cut short to the time left before the deadline.
        floor = ceiling * (1.0 - min(policy.jitter, 1.0))
        assert waited >= floor - 1e-9 or math.isclose(waited, left, abs_tol=1e-9)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cap=st.floats(0.0, 1.0))
def test_a_cap_shortens_only_the_next_wait(seed: int, cap: float) -> None:
    policy = RetryPolicy(max_attempts=4, base_delay=2.0, max_delay=2.0, jitter=0.0, deadline=100.0)
    clock = JumpClock()

    async def main() -> None:
        tries = attempts(policy, clock, rng=random.Random(seed))
        async for n in tries:
            if n == 0:
                tries.cap(cap)

    anyio.run(main)
    assert clock.slept == [cap, 2.0, 2.0]


def test_a_deadline_must_be_a_finite_number() -> None:
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(UsageError):
            attempts(DEFAULT_RETRY, FakeClock(), deadline=bad)


def test_the_token_and_session_defaults_are_the_one_default_policy() -> None:
    assert TOKEN_RETRY is DEFAULT_RETRY and SESSION_RETRY is DEFAULT_RETRY
    assert RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=15.0, max_wait=120.0, deadline=180.0) == DEFAULT_RETRY


@given(st.integers(1, 10), st.integers(1, 20))
def test_at_most_only_ever_lowers_the_attempts(allowed: int, asked: int) -> None:
    policy = RetryPolicy(max_attempts=allowed, base_delay=0.25, deadline=30.0)
    fewer = policy.at_most(asked)
    assert fewer.max_attempts == min(allowed, asked)
    assert (fewer is policy) == (asked >= allowed)  # no copy when nothing changes
    assert (fewer.base_delay, fewer.deadline) == (0.25, 30.0)  # the rest of the rule stays
