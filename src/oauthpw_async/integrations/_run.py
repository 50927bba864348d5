"""One crawl as a stream of pages, for integrations that pull records (dlt, Singer, Airbyte).

The integrations own neither the token's lifecycle nor the event loop they run on (dlt runs an
async resource on a loop of its own), so the connection is given as something that *makes* a
token source, opened inside the crawl's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs

from .._handoff import handed_over
from .._paths import path_keys
from ..config import PasswordGrantConfig
from ..crawler import Crawler, CrawlStats
from ..errors import CrawlError, UsageError
from ..provider import TokenProvider
from ..sources import TokenSource, load_token_source

__all__ = [
    "Connection",
    "IncompleteCrawlError",
    "PageBatch",
    "key_column",
    "open_tokens",
    "pages",
    "stream_name",
]

#: What a connection may be given as: a loaded config, a connection file or mapping (the same
#: fields as ``check --config``), or a callable that returns an unopened token source.
Connection = (
    PasswordGrantConfig
    | Mapping[str, Any]
    | str
    | os.PathLike[str]
    | Callable[[], AbstractAsyncContextManager[TokenSource]]
)


class IncompleteCrawlError(CrawlError):
    """A crawl finished with records known to be missing; nothing of it should land as if complete.

    The message names each short partition and why (a page budget, a cycle, fewer records than
    announced). Fix the cause, or pass ``allow_incomplete=True`` to accept what was read.
    """

    def __init__(self, problems: Mapping[str, Sequence[str]]) -> None:
        self.problems = {name: list(reasons) for name, reasons in problems.items()}
        said = "; ".join(f"{name}: {', '.join(reasons) or 'not finished'}" for name, reasons in self.problems.items())
        super().__init__(f"the crawl finished incomplete ({said}); fix the cause or pass allow_incomplete=True")


def open_tokens(connection: Connection) -> AbstractAsyncContextManager[TokenSource]:
    """The unopened token source of ``connection``, to use in ``async with``."""
    if isinstance(connection, PasswordGrantConfig):
        return TokenProvider(connection)
    if isinstance(connection, (str, os.PathLike, Mapping)):
        return load_token_source(connection)
    if callable(connection):
        return connection()
    raise UsageError(
        "connection must be a PasswordGrantConfig, a connection file path or mapping, "
        f"or a callable returning a token source, not {type(connection).__name__}"
    )


def stream_name(crawler: Crawler) -> str:
    """The stream (and table) of a crawler's records: its class name in snake case (``ticket_export``)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", type(crawler).__name__).lower()


def key_column(crawler: Crawler) -> str | None:
    """The column a record's primary key lands in (``None`` without a key).

    Nested objects are flattened the way tabular targets flatten them: ``fields.id`` -> ``fields__id``.
    """
    if crawler.primary_key is None:
        return None
    parts = path_keys(crawler.primary_key)
    if not parts or any(not p or p.isdigit() for p in parts):
        raise UsageError(
            f"{type(crawler).__name__}.primary_key {crawler.primary_key!r} must name a field of the record "
            "(a list index cannot be a table's key)"
        )
    return "__".join(parts)


@attrs.frozen
class PageBatch:
    """One page's records as the sink received them, in order (tombstones included)."""

    partition: str
    records: Sequence[Any]


class _PageQueue:
    """A sink that hands each page to the consumer and returns once it was taken (back-pressure)."""

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.queue: asyncio.Queue[tuple[PageBatch, asyncio.Event] | None] = asyncio.Queue()

    async def write(self, records: Sequence[Any], partition: str) -> None:
        if not records:
            return
        taken = asyncio.Event()
        self.queue.put_nowait((PageBatch(partition, records), taken))
        await taken.wait()  # consumed before the checkpoint moves past them

    async def flush(self) -> None:
        return None


async def pages(
    crawler: Crawler,
    connection: Connection,
    *,
    identity: str,
    state: str | os.PathLike[str] | None,
    stats_out: list[CrawlStats],
    allow_incomplete: bool = False,
    **crawl_options: Any,
) -> AsyncIterator[PageBatch]:
    """Crawl, yielding each page's records; the final :class:`CrawlStats` is appended to ``stats_out``.

    ``identity`` names the destination in the state file (positions belong to an output). Raises
    :class:`IncompleteCrawlError` after the last page when the crawl is known to be short, unless
    ``allow_incomplete``. However the consumer leaves, the crawl stops and is awaited.
    """
    sink = _PageQueue(identity)

    async def run() -> CrawlStats:
        async with open_tokens(connection) as tokens:
            return await crawler.crawl(tokens, sink, state=state, **crawl_options)

    task = asyncio.ensure_future(run())
    async with contextlib.aclosing(handed_over(sink.queue, task)) as batches:
        async for batch in batches:
            yield batch
    stats = task.result()  # complete: handed_over raised the crawl's error otherwise
    stats_out.append(stats)
    if not stats.complete and not allow_incomplete:
        problems = stats.incomplete or {n: [] for n, p in stats.partitions.items() if not p.complete}
        raise IncompleteCrawlError(problems)
