"""Time as the provider sees it: a monotonic clock, a wall clock and a sleep.

The provider and the retry loop take a :class:`Clock`, so tests drive time by hand
(:class:`oauthpw_async.testing.FakeClock`) instead of waiting for it.
"""

from __future__ import annotations

import time
from typing import Protocol

import anyio

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


class Clock(Protocol):
    """The three things about time the library needs."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    def wall(self) -> float:
        """Epoch seconds (for Retry-After dates and expiry shown to people)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds`` on this clock."""
        ...


class SystemClock:
    """The real clocks and :func:`anyio.sleep`."""

    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)

    async def sleep(self, seconds: float) -> None:
        """Sleep with anyio, so it works on asyncio and trio."""
        await anyio.sleep(max(0.0, seconds))


SYSTEM_CLOCK = SystemClock()
