"""A fake clock that records its sleeps, and a wait on other tasks that lets no time pass (fleet tests)."""

from __future__ import annotations

from collections.abc import Callable

import anyio.lowlevel

from oauthpw_async.testing import FakeClock

__all__ = ["RecordingClock", "until"]


class RecordingClock(FakeClock):
    """A fake clock that remembers every sleep asked of it."""

    def __init__(self) -> None:
        super().__init__()
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await super().sleep(seconds)


async def until(condition: Callable[[], object]) -> None:
    """Let other tasks (and Redis replies) run until ``condition()`` holds; no time passes on any clock."""
    for _ in range(200_000):
        if condition():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("the condition never held")
