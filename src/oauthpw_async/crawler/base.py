"""The class a new data source subclasses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import aiohttp
import attrs

from .._paths import Path, dig
from ..provider import TokenProvider
from .engine import CrawlEngine, CrawlStats, HttpPolicy
from .pagination import Page, PageRequest, Paginator
from .sinks import Sink


@attrs.frozen
class Partition:
    """An independent stream of pages (a table, a project...), checkpointed on its own."""

    name: str
    params: Mapping[str, str] = attrs.field(factory=dict)
    path: str | None = None


class Crawler:
    """Subclass this for a new data source; class attributes usually say it all.

    For example::

        class Incidents(Crawler):
            base_url = "https://acme.service-now.com"
            path = "/api/now/table/incident"
            params = {"sysparm_limit": "100"}
            records_path = "result"
            pagination = "link_header"

    Override :meth:`partitions` for many streams, :meth:`detail` for one follow-up fetch
    per record, and :meth:`parse` when records need more than a path.
    """

    #: API root; relative page URLs are joined to it.
    base_url: ClassVar[str | None] = None
    #: Take the API root from this token response field instead (Salesforce ``instance_url``).
    base_url_from_token: ClassVar[str | None] = None
    #: Path of the first page (per partition unless the partition sets its own).
    path: ClassVar[str] = ""
    #: Query parameters of the first page.
    params: ClassVar[Mapping[str, str]] = {}
    #: Where the records are in the body (dotted path); ``None``: the body is the list.
    records_path: ClassVar[Path | None] = None
    #: Where a partition's total record count is, for progress estimates.
    total_path: ClassVar[Path | None] = None
    #: A strategy from :mod:`oauthpw_async.crawler.pagination`, or its short name.
    pagination: ClassVar[Paginator | str] = "next_url"
    #: Page budget per partition (a safety net against endless pagination).
    max_pages: ClassVar[int] = 1_000_000
    #: Pages of one partition fetched at once when the strategy knows them all up front
    #: (offset or page number with a total); they are still emitted and checkpointed in order.
    parallel_pages: ClassVar[int] = 4

    def partitions(self) -> Iterable[Partition]:
        """The independent streams to crawl; one by default."""
        return [Partition("default")]

    def first_request(self, partition: Partition) -> PageRequest:
        """The first page of a partition (before the paginator adds its parameters)."""
        params = {**self.params, **partition.params}
        return PageRequest(partition.path or self.path, tuple(params.items()))

    def parse(self, page: Page) -> Sequence[Any]:
        """The records on a page."""
        records = dig(page.data, self.records_path)
        if records is None:
            return []
        if not isinstance(records, list):
            raise TypeError(f"{type(self).__name__}: records_path {self.records_path!r} is not a list on {page.url}")
        return records

    def detail(self, record: Any) -> str | None:
        """A URL to fetch for this record (a follow-up), or ``None``. Default: none."""
        return None

    def merge_detail(self, record: Any, detail: Any) -> Any:
        """Combine a record with its fetched detail. Default: ``{**record, "detail": detail}``."""
        return {**record, "detail": detail}

    # --- running -----------------------------------------------------------------------------------

    async def crawl(
        self,
        tokens: TokenProvider,
        sink: Sink,
        *,
        session: aiohttp.ClientSession | None = None,
        concurrency: int = 16,
        rate: float | None = None,
        state: str | None = None,
        policy: HttpPolicy | None = None,
        on_progress: Callable[[CrawlStats], None] | None = None,
    ) -> CrawlStats:
        """Crawl into ``sink``; with ``state``, resume from and checkpoint to that file."""
        engine = CrawlEngine(
            self,
            tokens,
            session=session,
            concurrency=concurrency,
            rate=rate,
            state=state,
            policy=policy,
            on_progress=on_progress,
        )
        return await engine.run(sink)

    async def records(self, tokens: TokenProvider, **options: Any) -> AsyncIterator[Any]:
        """Yield records as they arrive (back-pressure: the crawl waits for the consumer).

        Accepts the keyword options of :meth:`crawl`. Breaking out of the loop stops the crawl.
        """
        queue: asyncio.Queue[tuple[Sequence[Any], asyncio.Event] | None] = asyncio.Queue(maxsize=1)

        class _QueueSink:
            async def write(self, records: Sequence[Any], partition: str) -> None:
                done = asyncio.Event()
                await queue.put((records, done))
                await done.wait()  # consumed before the checkpoint moves past them

            async def flush(self) -> None:
                return None

        async def produce() -> None:
            try:
                await self.crawl(tokens, _QueueSink(), **options)
            finally:
                await queue.put(None)

        task = asyncio.ensure_future(produce())
        try:
            while (item := await queue.get()) is not None:
                records, done = item
                for record in records:
                    yield record
                done.set()
            await task  # re-raise a crawl error
        finally:
            if not task.done():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
