"""A fleet-wide lease: at most one process renews a credential's token at a time.

``SET key value NX PX ttl`` with a fencing number from ``INCR`` (one Lua call), renewed while
the holder works, released only by its holder (Lua compare-and-delete). A holder that dies
loses the lease when it expires; the fencing value lets Redis refuse anything a holder does
after its lease ran out (:meth:`SharedTokenState.claim_refresh` checks it).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator

import anyio

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import UsageError
from ..retry import RetryPolicy, attempts
from ._redis import RedisLink
from ._tasks import in_background
from .errors import CoordinatorRefused, CoordinatorUnavailable

__all__ = ["ACQUIRE_POLL", "Lease", "LeaseHandle"]

ACQUIRE_POLL = RetryPolicy(max_attempts=1_000_000, base_delay=0.01, max_delay=0.25, jitter=0.0)
"""How :meth:`Lease.acquire` polls a held lease: a growing step, bounded by its ``wait``."""

_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, redis.call('PTTL', KEYS[1])} end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. fence, 'PX', ARGV[2])
return {1, fence}
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaseHandle:
    """One acquisition of a :class:`Lease`: its fencing number and whether it still holds."""

    __slots__ = ("clock", "fence", "lost", "valid_until", "value")

    def __init__(self, value: str, fence: int, valid_until: float, clock: Clock = SYSTEM_CLOCK) -> None:
        #: What Redis stores under the lease key while this handle holds it (``owner:fence``).
        self.value = value
        #: Grows with every acquisition of this lease (while Redis keeps its data).
        self.fence = fence
        #: Set once a renewal found the lease gone or taken over.
        self.lost = False
        #: Local monotonic time (``clock.monotonic()``) until which the lease surely holds.
        self.valid_until = valid_until
        #: The clock :attr:`valid_until` is on.
        self.clock = clock

    @property
    def valid(self) -> bool:
        """Whether this handle still surely holds the lease (by the last confirmed renewal)."""
        return not self.lost and self.clock.monotonic() < self.valid_until

    def __repr__(self) -> str:
        return f"LeaseHandle(fence={self.fence}, valid={self.valid})"


class Lease:
    """A named lease in Redis.

    Args:
        link: the coordinator's Redis connection.
        scope: what the lease protects (e.g. ``cred:<credential key>``).
        ttl: seconds a holder keeps it without renewing; renewals happen every ``ttl / 3``.
            Choose it longer than a token request may stall, so that a live holder is never
            overtaken by a successor.
        clock: the clock its waits, renewals and validity are on.
    """

    def __init__(
        self, link: RedisLink, scope: str, *, ttl: float = 15.0, name: str = "lease", clock: Clock = SYSTEM_CLOCK
    ) -> None:
        if ttl <= 0.03:
            raise UsageError("a lease ttl must be longer than 30 ms")
        self._link = link
        self.ttl = ttl
        self.key = link.key(scope, name)
        self._fence_key = link.key(scope, name + ":fence")
        self._owner = f"{os.getpid()}-{secrets.token_hex(6)}"
        self.clock = clock

    async def try_acquire(self) -> tuple[LeaseHandle | None, float]:
        """Take the lease if it is free: ``(handle, 0)``, else ``(None, seconds it still holds)``."""
        sent = self.clock.monotonic()
        ok, value = await self._link.script(_ACQUIRE, [self.key, self._fence_key], [self._owner, self._ttl_ms])
        if ok:
            fence = int(value)
            return LeaseHandle(f"{self._owner}:{fence}", fence, sent + self.ttl, self.clock), 0.0
        return None, max(0.0, int(value) / 1000)

    async def acquire(self, *, wait: float) -> LeaseHandle | None:
        """Take the lease, waiting up to ``wait`` seconds for its holder to release it or expire."""
        tries = attempts(ACQUIRE_POLL, self.clock, deadline=wait)
        async for _ in tries:
            handle, remaining = await self.try_acquire()
            if handle is not None:
                return handle
            # Poll with a growing step, never past the holder's expiry nor our deadline.
            tries.cap(max(remaining, 0.005))
        return None

    async def renew(self, handle: LeaseHandle) -> bool:
        """Extend the lease by ``ttl`` if ``handle`` still holds it."""
        sent = self.clock.monotonic()
        ok = await self._link.script(_RENEW, [self.key], [handle.value, self._ttl_ms])
        if ok:
            handle.valid_until = sent + self.ttl
        else:
            handle.lost = True
        return bool(ok)

    async def release(self, handle: LeaseHandle) -> bool:
        """Give the lease up, only if ``handle`` still holds it (a successor's lease is never deleted)."""
        handle.lost = True
        return bool(await self._link.script(_RELEASE, [self.key], [handle.value]))

    @contextlib.asynccontextmanager
    async def keep(self, handle: LeaseHandle) -> AsyncIterator[LeaseHandle]:
        """Renew ``handle`` every ``ttl / 3`` while the body runs, then release it.

        The body is not cancelled when the lease is lost: a token request already sent cannot be
        unsent. Fenced writes (:meth:`SharedTokenState.claim_refresh`, the compare-and-set
        publish) are what keep a late holder harmless; check ``handle.valid`` before starting
        anything new.
        """
        try:
            async with in_background(lambda: self._renew_loop(handle)):
                yield handle
        finally:
            if not handle.lost:  # a lost lease is someone else's, or lapses by itself: no wait for a stalled Redis
                with (
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(self._link.command_timeout),
                    contextlib.suppress(CoordinatorUnavailable, CoordinatorRefused),
                ):
                    await self.release(handle)

    async def _renew_loop(self, handle: LeaseHandle) -> None:
        while not handle.lost:
            await self.clock.sleep(self.ttl / 3)
            try:
                await self.renew(handle)
            except (CoordinatorUnavailable, CoordinatorRefused):  # the request in flight goes on regardless
                if self.clock.monotonic() >= handle.valid_until:
                    handle.lost = True

    @property
    def _ttl_ms(self) -> int:
        return max(1, round(self.ttl * 1000))
