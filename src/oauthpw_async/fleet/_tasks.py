"""A background task for the length of a ``with`` body, without wrapping the body's errors."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import anyio

__all__ = ["in_background"]


@contextlib.asynccontextmanager
async def in_background(fn: Callable[[], Coroutine[Any, Any, None]]) -> AsyncIterator[None]:
    """Run ``fn()`` while the body runs, then cancel it.

    An exception from the body propagates as itself (a task group alone would wrap it in an
    ExceptionGroup, and ``except ClaimLost`` around the body would miss it).
    """
    error: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(fn)
        try:
            yield
        except Exception as exc:
            error = exc
        finally:
            tg.cancel_scope.cancel()
    if error is not None:
        raise error
