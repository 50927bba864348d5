"""Fleet-wide politeness per host: one request rate for all workers, and a shared pause after 429/503.

The rate is GCRA (the generic cell rate algorithm, as in ATM networks and redis-cell): Redis
keeps one "theoretical arrival time" per host; each request moves it on by one emission
interval. A request may be sent once the arrival time minus the burst allowance has come.
Here a request *reserves* its slot, so a caller gets the exact wait in one Redis call and then
sleeps it, with no retry loop: N workers together never exceed the rate. The pause a 429 or
503 asks for (``Retry-After``) is stored next to it and holds every worker back, in the same
call. Times are the Redis server's (``TIME``), so worker clocks need not agree.
"""

from __future__ import annotations

import math

import attrs

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import UsageError
from ._redis import RedisLink

__all__ = ["HostRateLimiter", "RateDecision"]

# KEYS: tat, pause. ARGV: interval ms, burst, max wait ms, cost. Times in ms (floats, returned as strings).
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local pause_until = tonumber(redis.call('GET', KEYS[2]) or '0')
local start = math.max(now, pause_until)
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), start)
local new_tat = tat + interval * tonumber(ARGV[4])
local allow_at = math.max(start, new_tat - interval * burst)
local wait = allow_at - now
if wait > tonumber(ARGV[3]) then
  return {0, tostring(wait), tostring(allow_at), tostring(now)}
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now + interval * burst) + 1)
return {1, tostring(wait), tostring(allow_at), tostring(now)}
"""

_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local untl = now + tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if untl > cur then
  redis.call('SET', KEYS[1], tostring(untl), 'PX', math.ceil(untl - now) + 1)
  return tostring(untl - now)
end
return tostring(cur - now)
"""

_PAUSED_FOR = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
return tostring(math.max(0, cur - now))
"""


@attrs.frozen
class RateDecision:
    """The answer to one reservation."""

    #: Whether a slot was reserved (``False``: the wait was longer than ``max_wait``; nothing reserved).
    reserved: bool
    #: Seconds to wait before sending (0 when it may go at once).
    wait: float
    #: Epoch seconds (Redis server clock) at which the request may go.
    allowed_at: float


class HostRateLimiter:
    """Requests per second per host, shared by every worker using the same Redis.

    Args:
        link: the coordinator's Redis connection.
        rate: requests per second allowed per host, fleet-wide.
        burst: requests that may go at once after a quiet spell (1: strictly spaced).
        max_wait: a reservation further out than this is not made (the caller backs off instead).
        clock: the clock :meth:`acquire` waits on.
    """

    def __init__(
        self, link: RedisLink, *, rate: float, burst: int = 1, max_wait: float = 60.0, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        if not (rate > 0 and math.isfinite(rate)) or burst < 1 or max_wait < 0:
            raise UsageError("a rate limit needs a positive rate, burst >= 1 and max_wait >= 0")
        self._link = link
        self.rate = rate
        self.burst = burst
        self.max_wait = max_wait
        self.clock = clock

    def _keys(self, host: str) -> list[str]:
        scope = f"host:{host}"
        return [self._link.key(scope, "tat"), self._link.key(scope, "pause")]

    async def reserve(self, host: str, cost: int = 1) -> RateDecision:
        """Reserve the next slot for ``host`` (``cost`` slots for a request that counts more)."""
        ok, wait, allow_at, _now = await self._link.script(
            _RESERVE,
            self._keys(host),
            [repr(1000.0 / self.rate), self.burst, repr(self.max_wait * 1000.0), cost],
        )
        return RateDecision(bool(ok), max(0.0, float(wait) / 1000), float(allow_at) / 1000)

    async def acquire(self, host: str, cost: int = 1) -> None:
        """Wait until a request to ``host`` may be sent (reserving its slot)."""
        while True:
            decision = await self.reserve(host, cost)
            if decision.reserved:
                if decision.wait > 0:
                    await self.clock.sleep(decision.wait)
                return
            # Backlogged beyond max_wait (e.g. a long pause): wait part of it and ask again.
            await self.clock.sleep(min(decision.wait, max(self.max_wait, 0.05)))

    async def pause(self, host: str, seconds: float) -> float:
        """Hold every worker back from ``host`` for ``seconds`` (a 429/503 ``Retry-After``).

        A shorter pause never cuts a longer one short. Returns the seconds the pause now lasts.
        """
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise UsageError("a pause needs a finite, non-negative number of seconds")
        remaining = await self._link.script(_PAUSE, [self._keys(host)[1]], [repr(seconds * 1000.0)])
        return max(0.0, float(remaining) / 1000)

    async def paused_for(self, host: str) -> float:
        """Seconds until ``host`` may be asked again (0 when not paused)."""
        return float(await self._link.script(_PAUSED_FOR, [self._keys(host)[1]], [])) / 1000
