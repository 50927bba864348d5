"""A clock that moves only when told to, for tests of time-dependent behaviour."""

from __future__ import annotations

import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator

import anyio

__all__ = ["FakeClock"]


class FakeClock:
    """Implements :class:`oauthpw_async.clock.Clock`; :meth:`advance` moves time and wakes sleepers.

    Works on asyncio and trio (it uses anyio events).
    """

    def __init__(self, start: float = 1000.0, wall_offset: float = 1_700_000_000.0) -> None:
        self.now = start
        self._wall_offset = wall_offset
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        """The fake monotonic time."""
        return self.now

    def wall(self) -> float:
        """The fake epoch time (moves with :attr:`now`)."""
        return self._wall_offset + self.now

    async def sleep(self, seconds: float) -> None:
        """Wait until :meth:`advance` has moved time ``seconds`` ahead."""
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._seq), event))
        await event.wait()

    @property
    def sleepers(self) -> int:
        """How many sleeps are pending."""
        return sum(1 for _, _, e in self._sleepers if not e.is_set())

    def next_deadline(self) -> float | None:
        """When the earliest pending sleep ends."""
        return self._sleepers[0][0] if self._sleepers else None

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleep that is due (they run at the next checkpoint)."""
        self.now += seconds
        while self._sleepers and self._sleepers[0][0] <= self.now:
            heapq.heappop(self._sleepers)[2].set()

    @contextlib.asynccontextmanager
    async def autojump(self, poll: float = 0.001) -> AsyncIterator[FakeClock]:
        """While open, jump to the next pending sleep as soon as one is pending.

        For tests that do real I/O (a local server) but must not wait in real time for
        rate limits and backoffs: every wait on this clock ends at once, in deadline order,
        and :attr:`now` says how much time the code under test believed passed.
        """
        async with anyio.create_task_group() as tg:

            async def jump() -> None:
                while True:
                    await anyio.sleep(poll)
                    due = self.next_deadline()
                    if due is not None:
                        self.advance(max(0.0, due - self.now))

            tg.start_soon(jump)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()
