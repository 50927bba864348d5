"""The one retry primitive: how long to wait before the next attempt, and when to give up.

Token requests, the provider's renewal backoff, the crawler's API requests and a coordinator's
waits for its shared store all use :class:`RetryPolicy`; none of them has a backoff formula of its own.
The policy only does arithmetic. Loops that honour a server's hint count with
:class:`Retrying` and sleep on their own :class:`~oauthpw_async.clock.Clock`; loops that only
back off iterate :func:`attempts`, which sleeps on the clock it is given.
"""

from __future__ import annotations

import math
import random

import attrs

from .clock import SYSTEM_CLOCK, Clock
from .errors import UsageError

__all__ = ["DEFAULT_RETRY", "Attempts", "RetryPolicy", "Retrying", "attempts"]


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise UsageError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


@attrs.frozen
class RetryPolicy:
    """Bounded retries with jittered exponential backoff, honouring a server's hint.

    The wait before retry ``n`` (0-based) is drawn from
    ``[ceiling * (1 - jitter), ceiling]`` with ``ceiling = min(max_delay, base_delay * 2**n)``:
    ``jitter=1`` is "full jitter", which spreads many clients best. When the server said how
    long to wait (``Retry-After``, a rate-limit reset header) that wait is used instead, plus
    a little jitter; a hint longer than ``max_wait`` is not waited for at all.
    """

    #: Total attempts, the first included.
    max_attempts: int = attrs.field(default=4)
    #: First backoff ceiling, doubled after each attempt.
    base_delay: float = attrs.field(default=0.5, validator=_positive)
    #: Largest backoff ceiling.
    max_delay: float = attrs.field(default=15.0, validator=_positive)
    #: Fraction of the ceiling that is random (1.0: uniform in ``[0, ceiling]``).
    jitter: float = attrs.field(default=1.0, validator=_positive)
    #: A server-requested wait longer than this is not slept through: the caller gives up.
    max_wait: float = attrs.field(default=120.0, validator=_positive)
    #: Total time, from the first failure, that retrying may take.
    deadline: float = attrs.field(default=180.0, validator=_positive)

    @max_attempts.validator
    def _check_attempts(self, attribute: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UsageError(f"max_attempts must be a whole number >= 1, got {value!r}")

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """The jittered wait before retry number ``attempt`` (0-based), without a server hint."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(attempt, 64))
        return ceiling * (1.0 - min(self.jitter, 1.0) * rng.random())

    def delay(self, attempt: int, rng: random.Random, hint: float | None = None) -> float:
        """The wait before retry ``attempt``: the server's ``hint`` (plus jitter) or the backoff."""
        if hint is None:
            return self.backoff(attempt, rng)
        return hint + rng.uniform(0.0, min(self.base_delay, 1.0))

    def at_most(self, attempts: int) -> RetryPolicy:
        """The same policy with no more than ``attempts`` attempts (itself if it allows no more already)."""
        return self if attempts >= self.max_attempts else attrs.evolve(self, max_attempts=attempts)

    def start(self, now: float, rng: random.Random | None = None) -> Retrying:
        """Begin counting the retries of one operation whose first failure is at ``now``."""
        return Retrying(self, now, rng or random.Random())


class Retrying:
    """The retries of one operation under a :class:`RetryPolicy`.

    Call :meth:`next_delay` after each failure: it returns how long to wait before the next
    attempt, or ``None`` when the policy says stop (:attr:`stop_reason` then says why, for
    the error message).
    """

    __slots__ = ("attempts", "policy", "rng", "started", "stop_reason")

    def __init__(self, policy: RetryPolicy, now: float, rng: random.Random) -> None:
        self.policy = policy
        self.started = now
        self.rng = rng
        #: Failed attempts so far.
        self.attempts = 0
        self.stop_reason = ""

    def next_delay(self, now: float, hint: float | None = None) -> float | None:
        """Record a failure at ``now``; the wait before the next attempt, or ``None`` to stop."""
        p = self.policy
        self.attempts += 1
        if self.attempts >= p.max_attempts:
            self.stop_reason = f"gave up after {self.attempts} attempts"
            return None
        if hint is not None and hint > p.max_wait:
            self.stop_reason = f"the server asked to wait {hint:.0f}s, longer than max_wait ({p.max_wait:g}s)"
            return None
        delay = p.delay(self.attempts - 1, self.rng, hint)
        if now - self.started + delay > p.deadline:
            self.stop_reason = (
                f"gave up after {self.attempts} attempts: the retry deadline ({p.deadline:g}s) would pass"
            )
            return None
        return delay


DEFAULT_RETRY = RetryPolicy()
"""The default retries of one request (a token request, an API request of a session)."""


class Attempts:
    """The attempts of one operation: ``async for n in attempts(policy, clock): ...``.

    Yields ``0, 1, 2, ...``; the caller returns (or ``break`` s) on success and goes round the
    loop on a failure. Between two attempts it sleeps ``policy.backoff(n)`` on the clock, capped
    by :meth:`cap` (e.g. "never past the holder's expiry") and by the time left before the
    deadline. It yields at most ``policy.max_attempts`` times and none once the deadline
    (seconds from the first attempt; default ``policy.deadline``) has passed, but always at least
    once. :attr:`exhausted` then tells the caller to raise its last error.
    """

    __slots__ = ("_cap", "_deadline", "_next", "clock", "exhausted", "policy", "rng", "started")

    def __init__(self, policy: RetryPolicy, clock: Clock, deadline: float | None, rng: random.Random | None) -> None:
        if deadline is not None and not (math.isfinite(deadline) and deadline >= 0):
            raise UsageError(f"deadline must be a finite number >= 0, got {deadline!r}")
        self.policy = policy
        self.clock = clock
        self.rng = rng or random.Random()
        self._deadline = policy.deadline if deadline is None else deadline
        self._next = 0
        self._cap: float | None = None
        #: Monotonic time of the first attempt (``None`` before it).
        self.started: float | None = None
        #: Set when the iteration ended because the count or the deadline ran out.
        self.exhausted = False

    def cap(self, seconds: float) -> None:
        """Wait at most ``seconds`` before the next attempt (only that one)."""
        self._cap = max(0.0, seconds)

    def __aiter__(self) -> Attempts:
        return self

    async def __anext__(self) -> int:
        n = self._next
        if n == 0:
            self.started = self.clock.monotonic()
        else:
            assert self.started is not None
            left = self._deadline - (self.clock.monotonic() - self.started)
            if n >= self.policy.max_attempts or left <= 0:
                self.exhausted = True
                raise StopAsyncIteration
            delay = self.policy.backoff(n - 1, self.rng)
            if self._cap is not None:
                delay = min(delay, self._cap)
                self._cap = None
            await self.clock.sleep(min(delay, left))
        self._next = n + 1
        return n


def attempts(
    policy: RetryPolicy,
    clock: Clock = SYSTEM_CLOCK,
    *,
    deadline: float | None = None,
    rng: random.Random | None = None,
) -> Attempts:
    """The attempts of one operation under ``policy``, sleeping on ``clock`` between them (:class:`Attempts`)."""
    return Attempts(policy, clock, deadline, rng)
