"""A crawl task whose pages one consumer takes in turn: back-pressure, and a stop however the consumer leaves.

Shared by :meth:`Crawler.records <oauthpw_async.crawler.Crawler.records>` and the integrations
that pull pages (dlt, Singer, Airbyte): each has a sink that puts a page on a queue with an
event and waits for the event; :func:`handed_over` is the consumer's side.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any, TypeVar

import anyio

__all__ = ["handed_over"]

T = TypeVar("T")


async def handed_over(
    queue: asyncio.Queue[tuple[T, asyncio.Event] | None], task: asyncio.Future[Any]
) -> AsyncGenerator[T, None]:
    """Yield each page ``task`` puts on ``queue``; its writer is released when the next one is asked for.

    Iterate it at once (it adds the end marker, ``None``, when the task is done) and inside
    ``contextlib.aclosing`` when it is wrapped in another generator. After the last page the
    task's error is raised. However the consumer leaves (``break``, an exception,
    cancellation), the task is cancelled and awaited; a failure it ends with then is retrieved
    (not logged as never retrieved), and not raised.
    """
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        while (item := await queue.get()) is not None:
            page, taken = item
            yield page
            taken.set()  # consumed before the checkpoint moves past it
        await task  # re-raises the crawl's error
    finally:
        if not task.done():
            task.cancel()
            # Shielded: an anyio cancel scope re-delivers its cancellation at every await,
            # which would return here before the crawl has stopped.
            with anyio.CancelScope(shield=True):
                await asyncio.wait([task])
        if not task.cancelled():
            with contextlib.suppress(BaseException):
                task.exception()  # retrieved: a failure after the consumer left is not logged as lost
