"""The class a new data source subclasses."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import aiohttp
import anyio
import attrs

from .._paths import Path, dig
from ..clock import Clock
from ..errors import PageShapeError
from ..retry import RetryPolicy
from ..sources import TokenSource
from .checkpoint import Checkpoints
from .engine import CrawlEngine, CrawlStats
from .pagination import Page, PageRequest, Paginator
from .sinks import Sink

__all__ = ["Crawler", "Partition"]


@attrs.frozen
class Partition:
    """An independent stream of pages (a table, a project...), checkpointed on its own."""

    name: str
    params: Mapping[str, str] = attrs.field(factory=dict)
    path: str | None = None
    #: Request headers for this partition only (added to the crawler's :attr:`Crawler.headers`).
    headers: Mapping[str, str] = attrs.field(factory=dict)


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

    #: API root; request paths are resolved under it (``/api/x`` keeps the root's own path).
    base_url: str | None = None
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
    #: Headers sent on every API request (``Accept``, an API version...); never ``Authorization``.
    headers: ClassVar[Mapping[str, str]] = {}
    #: Origins besides the base URL's that may receive the token (``https://files.example.com``).
    allowed_origins: ClassVar[Sequence[str]] = ()
    #: A link or redirect to any other origin: ``"fail"`` the partition (default) or follow it
    #: ``"follow_without_token"``. The token never goes there either way.
    foreign_origins: ClassVar[Literal["fail", "follow_without_token"]] = "fail"

    #: A record field (dotted path) that identifies a record. When set, a record whose key was
    #: already written in this run, or is already in the sink when a partition is read again
    #: from its start, is not written twice.
    primary_key: ClassVar[Path | None] = None

    def __init__(self, *, base_url: str | None = None) -> None:
        if base_url is not None:
            self.base_url = base_url

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
            raise PageShapeError(
                f"{type(self).__name__}: records_path {self.records_path!r} is not a list on {page.url}"
            )
        return records

    def position_expired(self, status: int, data: Any) -> bool:
        """Whether an error answer to a saved position means "that position expired".

        Return ``True`` for answers such as Salesforce's 400 ``INVALID_QUERY_LOCATOR`` or an
        expired scroll id: the engine then reads the partition again from its start, with a
        warning and a count of re-emitted records (not written twice with a :attr:`primary_key`),
        instead of failing every resume. ``data`` is the decoded JSON body (or ``None``).
        Default: never.
        """
        return False

    def detail(self, record: Any) -> str | None:
        """A URL to fetch for this record (a follow-up), or ``None``. Default: none."""
        return None

    def merge_detail(self, record: Any, detail: Any) -> Any:
        """Combine a record with its fetched detail. Default: ``{**record, "detail": detail}``."""
        return {**record, "detail": detail}

    # --- running -----------------------------------------------------------------------------------

    async def crawl(
        self,
        tokens: TokenSource,
        sink: Sink,
        *,
        session: aiohttp.ClientSession | None = None,
        concurrency: int = 16,
        rate: float | None = None,
        state: str | os.PathLike[str] | Checkpoints | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
        clock: Clock | None = None,
        on_progress: Callable[[CrawlStats], None] | None = None,
    ) -> CrawlStats:
        """Crawl into ``sink``; with ``state``, resume from and checkpoint to that file.

        Args:
            tokens: the shared token source.
            sink: where records go.
            session: an aiohttp session to share (one is made and closed otherwise).
            concurrency: API requests in flight at once.
            rate: requests per second per host.
            state: checkpoint file: resume from it, save positions to it (locked while the crawl
                runs); a :class:`~oauthpw_async.crawler.Checkpoints` for its restart options.
            retry: retries of one API request (default :data:`~oauthpw_async.crawler.engine.API_RETRY`).
            timeout: seconds one attempt may take.
            clock: time source; the provider's clock by default.
            on_progress: called with the counters after every page.
        """
        engine = CrawlEngine(
            self,
            tokens,
            session=session,
            concurrency=concurrency,
            rate=rate,
            state=state,
            retry=retry,
            timeout=timeout,
            clock=clock,
            on_progress=on_progress,
        )
        return await engine.run(sink)

    async def records(self, tokens: TokenSource, **options: Any) -> AsyncIterator[Any]:
        """Yield records as they arrive (back-pressure: the crawl waits for the consumer).

        Accepts the keyword options of :meth:`crawl`. However the consumer leaves the loop
        (``break``, an exception, cancellation, ``aclose()``), the crawl stops and is awaited;
        positions are checkpointed only past records the consumer has taken.
        """
        # Unbounded, but each write waits until its records are consumed: at most one page
        # per partition is queued. The end marker can therefore always be put without waiting.
        queue: asyncio.Queue[tuple[Sequence[Any], asyncio.Event] | None] = asyncio.Queue()

        class _QueueSink:
            async def write(self, records: Sequence[Any], partition: str) -> None:
                if not records:
                    return
                done = asyncio.Event()
                queue.put_nowait((records, done))
                await done.wait()  # consumed before the checkpoint moves past them

            async def flush(self) -> None:
                return None

        task = asyncio.ensure_future(self.crawl(tokens, _QueueSink(), **options))
        task.add_done_callback(lambda _: queue.put_nowait(None))
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
                # Shielded: an anyio cancel scope re-delivers its cancellation at every await,
                # which would return here before the crawl has stopped.
                with anyio.CancelScope(shield=True):
                    await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # retrieved: a failure after the consumer left is not logged as lost
