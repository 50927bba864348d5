"""The class a new data source subclasses."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal

import aiohttp
import attrs

from .._handoff import handed_over
from .._paths import Path, dig
from ..clock import Clock
from ..errors import PageShapeError, UsageError
from ..headers import checked_headers
from ..retry import RetryPolicy
from ..sources import TokenSource
from .checkpoint import Checkpoints
from .engine import CrawlEngine, CrawlStats
from .incremental import parse_timestamp
from .pagination import Page, PageRequest, Paginator
from .sinks import Sink

__all__ = ["Crawler", "Partition"]


@attrs.frozen
class Partition:
    """An independent stream of pages (a table, a project...), checkpointed on its own."""

    name: str
    params: Mapping[str, str] = attrs.field(factory=dict)
    path: str | None = None
    #: Request headers for this partition only (added to the crawler's :attr:`Crawler.headers`);
    #: checked by RFC 9110 when the partition is made (a :class:`UsageError` names the bad one).
    headers: Mapping[str, str] = attrs.field(factory=dict)

    @headers.validator
    def _check_headers(self, attribute: attrs.Attribute[Mapping[str, str]], value: Mapping[str, str]) -> None:
        checked_headers(value, where=f"Partition({self.name!r}) headers")


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
    #: Headers never sent to a foreign origin. Only content-negotiation and caching headers
    #: (:data:`~oauthpw_async.headers.FORWARDABLE_HEADERS`) ever go there; name one of those here
    #: to hold it back too (a ``User-Agent`` that identifies the tenant, say).
    sensitive_headers: ClassVar[Sequence[str]] = ()

    #: A record field (dotted path) that identifies a record. When set, a record whose key was
    #: already written in this run, or is already in the sink when a partition is read again
    #: from its start, is not written twice.
    primary_key: ClassVar[Path | None] = None
    #: The records' JSON Schema (draft 7, an object), for the Singer and Airbyte protocols;
    #: ``None``: inferred from the records (``oauthpw-async schema`` prints one to pin here).
    json_schema: ClassVar[Mapping[str, Any] | None] = None

    # --- incremental sync (oauthpw_async.crawler.incremental; README "Incremental sync") ---------
    #: The record field (dotted path) holding its last update time, in any format the source uses
    #: (see :func:`~oauthpw_async.crawler.incremental.parse_timestamp`). Declaring it, with
    #: :meth:`changed_since`, makes crawls incremental: each run reads what changed since the last.
    updated_field: ClassVar[Path | None] = None
    #: How far before the saved cursor each run asks from: covers commits that land late, clock
    #: skew between the source's nodes and coarse filters. Re-read records are dropped when a
    #: :attr:`primary_key` is declared.
    lookback: ClassVar[timedelta] = timedelta(minutes=5)
    #: The coarsest unit the source's filter accepts (Jira JQL: ``timedelta(minutes=1)``); the
    #: ``since`` given to :meth:`changed_since` is floored to it.
    filter_precision: ClassVar[timedelta] = timedelta(seconds=1)
    #: Allowance for the client's clock, used only when an answer has no ``Date`` header.
    clock_skew: ClassVar[timedelta] = timedelta(minutes=5)
    #: A partition that finished complete commits the server's time at its start (its first
    #: answer's ``Date``) as its cursor, not the newest record's time: what was stamped before is
    #: read, and a bulk update is not read again by every run. ``False`` for a source whose
    #: ``Date`` comes from another clock than its records' update times (off by more than
    #: :attr:`lookback`).
    cursor_at_server_time: ClassVar[bool] = True
    #: Where a server-side delta token is (Graph ``"@odata.deltaLink"``, Zendesk ``"after_cursor"``):
    #: the last one seen is the next run's start.
    delta_path: ClassVar[Path | None] = None
    #: The query parameter the token goes back in (Zendesk ``"cursor"``); ``None``: the token is
    #: the URL the next run starts at (Graph).
    delta_param: ClassVar[str | None] = None
    #: Where a record says it was deleted (Graph ``"@removed"``): present and not null/false
    #: means deleted. Deleted records reach the sink as tombstones (see :meth:`is_deleted`).
    deleted_path: ClassVar[Path | None] = None
    #: Primary keys remembered per partition to drop the lookback's re-deliveries across runs.
    max_recent_keys: ClassVar[int] = 50_000
    #: The listing and the :meth:`changed_since` answers are ordered by update time, oldest first
    #: (``ORDER BY updated``), and every record has one. Offset-like paging then seeks from the
    #: last update time delivered instead of counting rows, so deletions during a crawl skip nothing.
    ordered_by_updated: ClassVar[bool] = False

    @property
    def is_incremental(self) -> bool:
        """Whether crawls read only what changed since the last run."""
        return self.updated_field is not None or self.delta_path is not None

    def changed_since(self, partition: Partition, since: datetime) -> Mapping[str, str]:
        """Query parameters asking for records updated at or after ``since`` (aware, UTC).

        Use ``>=`` and format ``since`` by truncating (``strftime``), never by rounding up. E.g.
        ServiceNow ``{"sysparm_query": f"sys_updated_on>={since:%Y-%m-%d %H:%M:%S}^ORDERBYsys_updated_on"}``,
        Zendesk ``{"start_time": str(int(since.timestamp()))}``. The parameters replace same-named ones.
        """
        raise UsageError(f"{type(self).__name__} declares updated_field: override changed_since(partition, since)")

    def parse_updated(self, record: Any) -> datetime | None:
        """A record's update time (UTC), from :attr:`updated_field`; override for unusual formats."""
        if self.updated_field is None:
            return None
        return parse_timestamp(dig(record, self.updated_field))

    def is_deleted(self, record: Any) -> bool:
        """Whether a record is a deletion (default: :attr:`deleted_path` is present and truthy).

        Override for e.g. Zendesk ``record["status"] == "deleted"``. The sink receives
        ``{"_deleted": True, "_key": <primary key or None>, "record": record}`` instead.
        """
        return self.deleted_path is not None and bool(dig(record, self.deleted_path))

    def delta_request(self, partition: Partition, request: PageRequest, token: str) -> PageRequest:
        """The first request of a run that continues from a delta token.

        Default: the token as the URL (``delta_param`` is ``None``) or in ``delta_param``.
        """
        if self.delta_param is None:
            return PageRequest(token)
        return request.with_params(**{self.delta_param: token})

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
        full_refresh: bool = False,
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
            full_refresh: an incremental crawler ignores its saved cursors and reads everything.
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
            full_refresh=full_refresh,
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
        async with contextlib.aclosing(handed_over(queue, task)) as pages:
            async for records in pages:
                for record in records:
                    yield record
