"""The crawl engine: partitions, pages, read-ahead, completeness, de-duplication, sinks, checkpoints.

Every API request goes through :class:`oauthpw_async.pipeline.RequestPipeline` (origins,
redirects, retries, rate limits, 401 renewal, the token); this module decodes pages and keeps
positions. Time comes from the provider's clock.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import attrs
import orjson

from .._api import Governor, HostGovernor, Origins, RequestStats, resolve_url
from .._httputil import safe_url
from .._paths import MISSING, Path, dig, lookup
from ..clock import Clock
from ..errors import CrawlError, HTTPStatusError, UsageError
from ..headers import checked_headers
from ..pipeline import Answer, RequestPipeline
from ..redact import is_credential_parameter, without_credentials
from ..retry import RetryPolicy
from ..sources import TokenSource
from .checkpoint import Checkpoints, PositionStore, fingerprint
from .incremental import CursorStore, IncrementalSync, RunKeys, SyncStats, key_digest
from .pagination import Page, PageRequest, Paginator, resolve
from .scheduling import AllAtOnce, PartitionScheduler
from .sinks import Sink

if TYPE_CHECKING:
    from .base import Crawler, Partition

__all__ = ["API_RETRY", "CrawlEngine", "CrawlStats", "PartitionStats", "announced_total"]


#: Follow-up workers a page starts even when every request slot is taken.
_WORKERS_MIN = 16


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real error in a task group's exception group (cancellations are echoes)."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    real = [e for e in leaves if not isinstance(e, anyio.get_cancelled_exc_class())]
    return (real or leaves)[0]


log = logging.getLogger("oauthpw_async.crawler")


API_RETRY = RetryPolicy(max_attempts=6, base_delay=0.5, max_delay=30.0, max_wait=300.0, deadline=600.0)
"""The default retries of one API request: 6 attempts, backoff up to 30 s, server waits up to 5 min."""


@attrs.define
class PartitionStats:
    """Progress of one partition.

    ``done`` means the walk ended; ``complete`` means it also got everything: a partition
    that stopped on its page budget or a cycle, fell short of an announced total, or never
    found its records is done but incomplete, and :attr:`problems` says why.
    """

    pages: int = 0
    records: int = 0
    total: int | None = None
    done: bool = False
    #: Why this partition may be missing records (empty when nothing is known to be missing).
    problems: list[str] = attrs.field(factory=list)
    #: Times the partition was read again from its start because its saved position expired.
    restarts: int = 0
    #: Records the partition had written before such a restart (they are read again).
    reemitted_from: int = 0
    #: Records not written because their primary key was already written.
    duplicates: int = 0
    #: Incremental sync: mode, cursor before and after, re-deliveries dropped (incremental crawlers only).
    sync: SyncStats | None = None

    @property
    def complete(self) -> bool:
        """Finished with nothing known to be missing."""
        return self.done and not self.problems


@attrs.define
class CrawlStats(RequestStats):
    """Counters for a progress display or a pipeline's metrics."""

    pages: int = 0
    records: int = 0
    cycles_stopped: int = 0
    partitions_total: int = 0
    partitions_done: int = 0
    started: float = attrs.field(factory=time.monotonic)
    partitions: dict[str, PartitionStats] = attrs.field(factory=dict)

    @property
    def complete(self) -> bool:
        """Every partition finished and none is known to be missing records."""
        return self.partitions_done == self.partitions_total and all(p.complete for p in self.partitions.values())

    @property
    def incomplete(self) -> dict[str, list[str]]:
        """The partitions known to be missing records, with the reasons."""
        return {name: list(p.problems) for name, p in self.partitions.items() if p.problems}

    @property
    def expected_records(self) -> int | None:
        """Sum of known partition totals, when every partition reported one."""
        totals = [p.total for p in self.partitions.values()]
        if not totals or any(t is None for t in totals) or len(totals) < self.partitions_total:
            return None
        return sum(t for t in totals if t is not None)

    def eta_seconds(self, now: float | None = None) -> float | None:
        """Estimated seconds left, when totals are known (``now`` on the clock of :attr:`started`)."""
        expected = self.expected_records
        elapsed = (time.monotonic() if now is None else now) - self.started
        if not expected or not self.records or elapsed <= 0:
            return None
        return max(0.0, (expected - self.records) / (self.records / elapsed))


#: Response headers and top-level body fields that announce a partition's record count.
TOTAL_HEADERS = ("X-Total-Count", "X-Total")
TOTAL_FIELDS = ("@odata.count", "totalSize", "total_count", "totalCount", "total")


def _count(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def announced_total(data: Any, headers: Mapping[str, str], total_path: Path | None) -> int | None:
    """The record count a page announces: ``total_path``, else a total-count header or a well-known field."""
    if total_path is not None:
        return _count(dig(data, total_path))
    for name in TOTAL_HEADERS:
        value = headers.get(name) or headers.get(name.lower())
        if value is not None and (n := _count(value)) is not None:
            return n
    if isinstance(data, Mapping):
        for name in TOTAL_FIELDS:
            if (n := _count(data.get(name))) is not None:
                return n
    return None


def _next_link_lookalike(data: Any) -> str:
    """A field of the page (top level or one below) named like a next link and holding a string, or ``""``.

    A one-page partition whose strategy treats a missing link as the end is still reported when the
    page holds such a field: the strategy's path is then probably wrong.
    """
    if not isinstance(data, dict):
        return ""
    for key, value in data.items():
        if isinstance(value, dict):
            for inner, v in value.items():
                if isinstance(inner, str) and "next" in inner.lower() and isinstance(v, str) and v:
                    return f"{key}.{inner}"
        elif isinstance(key, str) and "next" in key.lower() and isinstance(value, str) and value:
            return key
    return ""


class _Completeness:
    """What one partition's pages showed about whether it got everything."""

    __slots__ = (
        "_crawler",
        "_ended",
        "_locator",
        "_locator_seen",
        "_lookalike",
        "_missing_is_end",
        "_pages",
        "_records_seen",
        "_stop",
        "_total",
    )

    def __init__(self, crawler: Crawler, paginator: Paginator) -> None:
        self._crawler = crawler
        self._locator: Path | None = getattr(paginator, "locator_path", None)
        self._ended = getattr(paginator, "end_signalled", None)
        self._pages = 0
        self._records_seen = crawler.records_path is None
        self._locator_seen = False
        self._total: int | None = None
        self._stop = ""
        self._missing_is_end: bool = getattr(paginator, "missing_is_end", False)
        self._lookalike = ""

    def saw(self, page: Page) -> None:
        self._pages += 1
        data = page.data
        if self._pages == 1 and self._missing_is_end and self._locator is not None:
            self._lookalike = _next_link_lookalike(data)
        if not self._records_seen and lookup(data, self._crawler.records_path) is not MISSING:
            self._records_seen = True
        if (
            self._locator is not None
            and not self._locator_seen
            and (lookup(data, self._locator) is not MISSING or (self._ended is not None and self._ended(page)))
        ):
            self._locator_seen = True
        total = announced_total(data, page.headers, self._crawler.total_path)
        if total is not None and (self._total is None or total > self._total):
            self._total = total

    @property
    def total(self) -> int | None:
        """The largest record count announced so far."""
        return self._total

    def stopped(self, reason: str) -> None:
        self._stop = reason

    def problems(self, committed: int) -> list[str]:
        if not self._pages and not self._stop:
            return []
        out = [self._stop] if self._stop else []
        crawler = self._crawler
        if not self._records_seen:
            out.append(f"records_path {crawler.records_path!r} was on none of the {self._pages} page(s)")
        if crawler.total_path is not None and self._total is None:
            out.append(f"total_path {crawler.total_path!r} was on none of the {self._pages} page(s)")
        if self._total is not None and committed < self._total:
            out.append(f"{committed} of {self._total} announced records were read")
        if self._locator is not None and not self._locator_seen and self._pages == 1 and committed:
            if not self._missing_is_end:
                out.append(
                    f"the next-page locator {self._locator!r} was never on a page, so only the first page was "
                    "read; if the source has one page only, tell the strategy how it signals the end "
                    "(has_more_path, done_path, or missing_is_end=True)"
                )
            elif self._lookalike:
                out.append(
                    f"the next-page locator {self._locator!r} was not on the page, but {self._lookalike!r} holds "
                    "what looks like a next link, so only the first page may have been read: check the "
                    "strategy's path"
                )
        return out


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


@attrs.define(slots=True, eq=False)
class _Walk:
    """One partition's walk in progress: where it is, what it read, what is planned or in flight."""

    partition: Partition
    ps: PartitionStats
    watch: _Completeness
    #: Pages read (the index of the next one) and records read, as checkpointed.
    index: int
    committed: int
    restarted: bool
    plan: Callable[[Page, list[Any]], Any] | None
    jumped: Callable[[PageRequest, int], list[PageRequest]] | None
    asked: Callable[[PageRequest], tuple[int, int]] | None
    #: Records read before this run resumed the partition.
    resumed_from: int = attrs.field(default=attrs.Factory(lambda self: self.committed, takes_self=True))
    seen: set[str] = attrs.Factory(set)
    planned: collections.deque[PageRequest] | None = None  # known pages not started yet
    empties: list[PageRequest] = attrs.Factory(list)
    gaps: collections.deque[PageRequest] = attrs.Factory(collections.deque)
    inflight: collections.deque[tuple[PageRequest, asyncio.Future[tuple[Page, list[Any]]]]] = attrs.Factory(
        collections.deque
    )


class _PositionExpired(Exception):
    """A resumed position was refused as expired (internal: the partition restarts)."""

    def __init__(self, error: HTTPStatusError) -> None:
        self.error = error


def _position_store(crawler: Crawler, state: str | os.PathLike[str] | PositionStore | None) -> PositionStore:
    """Where the crawl keeps its positions: a state file (in memory without one), or the store given."""
    store = Checkpoints(state) if state is None or isinstance(state, (str, os.PathLike)) else state
    if crawler.is_incremental and not isinstance(store, CursorStore):
        raise UsageError(
            f"{type(crawler).__name__} is incremental: its cursors need a store that keeps them beside the "
            f"positions ({type(store).__name__} does not); use a state file or a store that keeps cursors"
        )
    return store


def _scheduler_of(store: PositionStore) -> PartitionScheduler:
    """The store itself when it also schedules the partitions (it shares them out), else all at once."""
    return store if isinstance(store, PartitionScheduler) else AllAtOnce(store)


class CrawlEngine:
    """Runs one :class:`Crawler` with a shared token source and aiohttp session.

    Embeddable: no event loop of its own, no global state. Several engines may share a
    provider and a session; cancelling the caller stops the crawl cleanly (positions
    already checkpointed are kept).

    By default positions go to a state file, every unfinished partition is walked at once and
    each host has a governor of its own. ``state`` may instead be a :class:`PositionStore` that
    keeps positions elsewhere than a state file, ``scheduler`` a :class:`PartitionScheduler` that
    decides which partitions this process walks, and when (by default the store itself, when it
    is one), and ``governors`` a factory of per-host governors (one shared between processes, say).
    """

    def __init__(
        self,
        crawler: Crawler,
        tokens: TokenSource,
        *,
        session: aiohttp.ClientSession | None = None,
        concurrency: int = 16,
        rate: float | None = None,
        state: str | os.PathLike[str] | Checkpoints | PositionStore | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
        clock: Clock | None = None,
        on_progress: Callable[[CrawlStats], None] | None = None,
        full_refresh: bool = False,
        governors: Callable[[str], Governor] | None = None,
        scheduler: PartitionScheduler | None = None,
    ) -> None:
        if concurrency < 1:
            raise UsageError("concurrency must be at least 1")
        self.crawler = crawler
        self.tokens = tokens
        self._clock: Clock = clock or tokens.clock
        self.stats = CrawlStats(started=self._clock.monotonic())
        self._session = session
        self._concurrency = concurrency
        self._rate = rate
        # Where positions are kept (a state file by default), which partitions are walked when (every
        # unfinished one at once by default), and who governs a host (one governor per host by default).
        self._checkpoints = _position_store(crawler, state)
        self._scheduler = scheduler or _scheduler_of(self._checkpoints)
        self._governors = governors
        self._retry = retry or API_RETRY
        self._on_progress = on_progress
        self._slots = anyio.Semaphore(concurrency, fast_acquire=True)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._paginator: Paginator = resolve(crawler.pagination)
        self._pipeline: RequestPipeline | None = None  # made once the base URL (and so the origins) is known
        # The last tokens sent: a saved position never holds one (an API may echo it into next links).
        self._sent_token: object = None
        self._token_values: tuple[str, ...] = ()
        self._headers = {
            "Accept": "application/json",
            **checked_headers(crawler.headers, where=f"{type(crawler).__name__}.headers"),
        }
        # Primary keys written in this run (digests), when the crawler declares a primary key.
        self._keys: set[bytes] | RunKeys | None = set() if crawler.primary_key is not None else None
        self._keys_loaded = False
        # Incremental sync: cursors, since-filters, re-delivery and move detection (one key store).
        self._sync: IncrementalSync | None = None
        if crawler.is_incremental and isinstance(self._checkpoints, CursorStore):
            self._start_sync(self._checkpoints, full_refresh)

    def _start_sync(self, cursors: CursorStore, full_refresh: bool) -> None:
        """Incremental sync over ``cursors``: its key store, its strategy, and the runs it settles."""
        self._sync = IncrementalSync(self.crawler, cursors, self._clock, full_refresh=full_refresh)
        self._keys = self._sync.keys
        self._paginator = self._sync.paginator(self._paginator)
        settle_with = getattr(cursors, "settle_with", None)
        if settle_with is not None:  # a store that hands partitions over commits a run its walker did not
            settle_with(self._sync.settle)

    # --- running -----------------------------------------------------------------------------------

    async def run(self, sink: Sink) -> CrawlStats:
        """Crawl every partition into ``sink``; returns the final counters."""
        own = self._session is None
        state_open = False
        session = self._session or aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._concurrency, limit_per_host=self._concurrency)
        )
        try:
            base = await self._base_url()
            self._pipeline = self._new_pipeline(base)
            partitions = self._partitions()
            names = [p.name for p in partitions]
            # Locks the state file and refuses one that belongs to another crawl.
            await self._checkpoints.open(fingerprint(self.crawler, self._paginator, names, sink))
            state_open = True
            await self._count_partitions(partitions)
            try:
                await self._scheduler.walk_partitions(partitions, lambda p: self._walk(session, base, p, sink))
            except BaseExceptionGroup as group:
                # One partition failed and the others were cancelled: raise the failure itself.
                raise _first_error(group) from None
            self._count_finished_elsewhere(partitions)
            await sink.flush()
        finally:
            if state_open:  # a refused open must not release the lock of the crawl that holds it
                self._checkpoints.close()
            if self._pipeline is not None:
                await self._pipeline.aclose()
            if own:
                await session.close()
        self._progress()
        return self.stats

    def _new_pipeline(self, base: str) -> RequestPipeline:
        """The path every API request of this crawl takes, with ``base`` as its first allowed origin."""
        return RequestPipeline(
            self.tokens,
            origins=Origins([base, *self.crawler.allowed_origins]),
            foreign_origins=self.crawler.foreign_origins,
            slots=self._slots,
            retry=self._retry,
            timeout=self._timeout,
            clock=self._clock,
            governor=self._new_governor,
            stats=self.stats,
            fix_hint="set foreign_origins = 'follow_without_token' on the crawler",
            sensitive_headers=self.crawler.sensitive_headers,
        )

    def _partitions(self) -> list[Partition]:
        """The crawler's partitions, whose names must be unique (they key the positions)."""
        partitions = list(self.crawler.partitions())
        names = {p.name for p in partitions}
        if len(names) != len(partitions):
            raise UsageError("partition names must be unique: they key the checkpoints")
        return partitions

    async def _count_partitions(self, partitions: Sequence[Partition]) -> None:
        """Counters for every partition, those the store says finished counted done; incremental runs prepared."""
        self.stats.partitions_total = len(partitions)
        if self._sync is not None:
            await self._sync.prepare([p.name for p in partitions])  # a finished incremental run makes this a new run
        for p in partitions:
            ps = PartitionStats(pages=self._checkpoints.pages(p.name))
            self.stats.partitions[p.name] = ps
            if self._checkpoints.is_done(p.name):
                ps.done = True
                ps.problems = self._checkpoints.problems(p.name)
                self.stats.partitions_done += 1

    def _count_finished_elsewhere(self, partitions: Sequence[Partition]) -> None:
        """Count done the partitions the store says finished while this process did not walk them."""
        for p in partitions:  # (a scheduler may have left them to another process)
            ps = self.stats.partitions[p.name]
            if not ps.done and self._checkpoints.is_done(p.name):
                ps.done, ps.problems = True, self._checkpoints.problems(p.name)
                self.stats.partitions_done += 1

    def _progress(self) -> None:
        if self._on_progress is not None:
            self._on_progress(self.stats)

    async def _base_url(self) -> str:
        crawler = self.crawler
        if crawler.base_url_from_token:
            token = await self.tokens.get()
            base = dig(token.extra, crawler.base_url_from_token)
            if not isinstance(base, str) or not base.startswith(("https://", "http://")):
                raise CrawlError(
                    f"the token response has no usable {crawler.base_url_from_token!r} for the API base URL"
                )
            return base
        if not crawler.base_url:
            raise UsageError(
                f"{type(crawler).__name__} has no base_url: set it on the class, pass base_url=..., "
                "or set base_url_from_token"
            )
        return crawler.base_url

    async def _walk(self, session: aiohttp.ClientSession, base: str, partition: Partition, sink: Sink) -> None:
        ps = self.stats.partitions[partition.name]
        ps.pages = self._checkpoints.pages(partition.name)  # the store may hold another process's progress
        headers = {**self._headers, **partition.headers} if partition.headers else self._headers
        start = self._paginator.start(self.crawler.first_request(partition))
        if self._sync is not None:
            start = self._sync.start(partition, start, ps)  # the since-filter or the delta token
        request = _with_credentials_of(start, self._checkpoints.resume_from(partition.name)) or start
        if self._sync is not None:
            request = self._sync.resume(partition, request)  # a position inside a tie group restarts it
        committed = self._checkpoints.records(partition.name)  # records in the sink, all runs
        try:
            await self._pages(session, base, headers, partition, sink, request, committed)
        except _PositionExpired as expired:
            # The saved position (a query locator, a scroll id) expired while the crawl was
            # stopped: read the partition again from its start, as the crawler allows.
            log.warning(
                "partition %s: the saved position was refused as expired (%s); restarting it from its start",
                partition.name,
                expired.error,
            )
            ps.restarts += 1
            ps.reemitted_from = committed
            if self._sync is not None:
                # The sink's keys carry no version: a changed record would be taken for one already
                # written. Incremental sync compares versions, with this run's keys and the last run's.
                self._sync.restart(partition.name)
            elif self._keys is not None and not self._keys_loaded:
                await self._load_sink_keys(sink)
            try:
                await self._pages(session, base, headers, partition, sink, start, 0, restarted=True)
            except _PositionExpired as again:  # expired again within one run: nothing more to try
                raise again.error from None

    async def _pages(
        self,
        session: aiohttp.ClientSession,
        base: str,
        headers: Mapping[str, str],
        partition: Partition,
        sink: Sink,
        request: PageRequest | None,
        committed: int,
        *,
        restarted: bool = False,
    ) -> None:
        """Walk a partition's pages from ``request``: emit, flush, then checkpoint each in order."""
        walk = self._new_walk(partition, committed, restarted)
        read = functools.partial(self._read_page, session, base, headers)
        ps = walk.ps
        try:
            while request is not None and self._may_read(walk, request):
                if walk.inflight and walk.inflight[0][0] is request:
                    page, records = await walk.inflight.popleft()[1]
                else:
                    page, records = await read(request, walk.index, ps)
                walk.watch.saw(page)
                ps.total = walk.watch.total
                if self._sync is not None:  # tombstones; drops re-deliveries (this run's and earlier runs')
                    fresh = self._sync.page(partition.name, page, records, ps)
                else:
                    fresh = self._unseen(records, ps) if self._keys is not None else records
                await sink.write(fresh, partition.name)
                nxt = self._next_request(walk, read, request, page, records)
                walk.index += 1
                walk.committed += len(records)  # read: duplicates dropped by primary key are in the sink already
                await sink.flush()  # records are durable before the position moves past them
                await self._checkpoints.save(partition.name, self._at_rest(nxt), walk.index, records=walk.committed)
                ps.pages, ps.records = walk.index, ps.records + len(fresh)
                self.stats.pages += 1
                self.stats.records += len(fresh)
                self._progress()
                request = nxt
        finally:
            for _, unread in walk.inflight:
                unread.cancel()
            if walk.inflight:
                await asyncio.gather(*(f for _, f in walk.inflight), return_exceptions=True)
        await self._end_walk(walk, request)

    def _new_walk(self, partition: Partition, committed: int, restarted: bool) -> _Walk:
        crawler, paginator, sync = self.crawler, self._paginator, self._sync
        ps = self.stats.partitions[partition.name]
        seeking = sync is not None and sync.seeking(partition.name)
        return _Walk(
            partition=partition,
            ps=ps,
            watch=_Completeness(crawler, paginator),
            index=0 if restarted else ps.pages,
            committed=committed,
            restarted=restarted,
            plan=getattr(paginator, "plan", None) if crawler.parallel_pages > 1 and not seeking else None,
            jumped=getattr(paginator, "jumped", None),
            asked=getattr(paginator, "asked", None),
        )

    def _may_read(self, walk: _Walk, request: PageRequest) -> bool:
        """Whether ``request`` is read: not a page read already (a loop), not past the page budget."""
        key = request.key()
        if key in walk.seen:
            self.stats.cycles_stopped += 1
            walk.watch.stopped(f"stopped at a page already read ({safe_url(request.url)}): the links form a loop")
            return False
        walk.seen.add(key)
        if walk.index >= self.crawler.max_pages:
            walk.watch.stopped(f"stopped on the page budget (max_pages = {self.crawler.max_pages})")
            return False
        return True

    def _next_request(
        self,
        walk: _Walk,
        read: Callable[[PageRequest, int, PartitionStats], Any],
        request: PageRequest,
        page: Page,
        records: list[Any],
    ) -> PageRequest | None:
        """The page read after ``page``: a gap found, a planned page (read ahead), or the strategy's next."""
        crawler, paginator, sync = self.crawler, self._paginator, self._sync
        if walk.planned is None and walk.plan is not None:
            known = walk.plan(page, records)
            walk.planned = collections.deque(known) if known is not None else None
        if walk.jumped is not None and walk.asked is not None and walk.watch.total is not None:
            # Offsets stepped over empty pages by the size asked, and the ranges found jumped once
            # the server's real (capped) step shows: read before going on.
            found = self._jumped(walk.jumped, walk.asked, walk.empties, request, records, walk.watch.total)
            if found:
                if not walk.planned and not walk.inflight and (cont := paginator.next(page, records)) is not None:
                    found.append(cont)  # then on from this page
                walk.gaps.extend(found)
        if walk.gaps:
            return walk.gaps.popleft()
        if walk.planned:
            # Totals are known: keep up to parallel_pages pages in flight, emit them in order.
            # Only while request slots are free: when the crawl already fills them, pages read
            # ahead would just queue for slots (and cost CPU) without reading anything sooner.
            while walk.planned and len(walk.inflight) < crawler.parallel_pages - 1 and self._slots.value > 0:
                ahead = walk.planned.popleft()
                future = asyncio.ensure_future(read(ahead, walk.index + 1 + len(walk.inflight), walk.ps))
                walk.inflight.append((ahead, future))
            return walk.inflight[0][0] if walk.inflight else walk.planned.popleft()  # read next, in order
        if walk.inflight:
            return walk.inflight[0][0]
        # Sequential, or past the planned pages: ask the strategy, so records added during the
        # crawl (a grown total) are still read.
        nxt = paginator.next(page, records)
        if sync is not None:
            # seeks by update time when it can
            name = walk.partition.name
            nxt = sync.next_request(walk.partition, nxt, announced_total(page.data, page.headers, crawler.total_path))
            if sync.rewound(name):
                walk.seen.clear()  # a group read again on purpose (a bounded number of times), not a loop
        return nxt

    async def _end_walk(self, walk: _Walk, request: PageRequest | None) -> None:
        """Say whether the partition is complete, save where it ended, and move its cursor."""
        sync, ps, name = self._sync, walk.ps, walk.partition.name
        counted = walk.committed
        if sync is not None and (distinct := sync.distinct(name)) is not None:
            # Distinct keys, not rows read: a record read twice (moved, or re-read where a seek
            # overlaps) must not make up for one never read.
            counted = (0 if walk.restarted else walk.resumed_from) + distinct
        problems = walk.watch.problems(counted)
        if sync is not None:
            problems += sync.problems(name)
        if walk.restarted:
            log.warning(
                "partition %s was read again from its start: %d records re-emitted, %d dropped as already written",
                name,
                min(ps.records, ps.reemitted_from),
                ps.duplicates,
            )
        if request is not None or problems:
            await self._checkpoints.save(name, None, walk.index, records=walk.committed, problems=problems)
        if problems:
            log.warning("partition %s is incomplete: %s", name, "; ".join(problems))
        if sync is not None:
            await sync.finish(name, problems, ps)  # the cursor moves only now
        ps.problems = problems
        ps.done = True
        self.stats.partitions_done += 1
        self._progress()

    @staticmethod
    def _jumped(
        jumped: Callable[[PageRequest, int], list[PageRequest]],
        asked: Callable[[PageRequest], tuple[int, int]],
        empties: list[PageRequest],
        request: PageRequest,
        records: Sequence[Any],
        total: int,
    ) -> list[PageRequest]:
        """Requests for rows an earlier step over an empty page jumped, once this page shows the real step."""
        offset, limit = asked(request)
        if not records:
            empties.append(request)
            return []
        if len(records) >= limit:
            empties.clear()  # the server serves what is asked: the steps over empty pages were right
            return []
        if offset + len(records) >= total or not empties:
            return []  # the last page: no smaller step is known
        found = [r for empty in empties for r in jumped(empty, len(records))]
        empties.clear()
        return found

    def _unseen(self, records: list[Any], ps: PartitionStats) -> list[Any]:
        """``records`` less those whose primary key was already written (by this run or the sink)."""
        assert self._keys is not None
        key_path = self.crawler.primary_key
        keys = self._keys
        out = []
        for record in records:
            key = key_digest(dig(record, key_path))
            if key in keys:
                ps.duplicates += 1
                continue
            keys.add(key)
            out.append(record)
        return out

    async def _load_sink_keys(self, sink: Sink) -> None:
        """Learn the primary keys already in the sink (before re-reading a partition from its start)."""
        self._keys_loaded = True
        existing = getattr(sink, "existing_keys", None)
        if existing is None or self._keys is None:
            log.warning("the sink cannot list what it holds: records re-read from the start may be written twice")
            return
        path = self.crawler.primary_key
        assert path is not None
        keys = await existing(path)
        self._keys.update(key_digest(k) for k in keys)

    async def _read_page(
        self,
        session: aiohttp.ClientSession,
        base: str,
        headers: Mapping[str, str],
        request: PageRequest,
        index: int,
        ps: PartitionStats,
    ) -> tuple[Page, list[Any]]:
        """Fetch one page, parse its records and run their follow-ups."""
        assert self._pipeline is not None
        try:
            answer = await self._pipeline.send(
                session, "GET", resolve_url(base, request.url), headers=headers, params=list(request.params) or None
            )
            status, resp_headers, data, final_url = self._decoded(answer)
        except HTTPStatusError as exc:
            if index and self.crawler.position_expired(exc.status, exc.data):
                raise _PositionExpired(exc) from None
            raise
        page = Page(request=request, url=str(final_url), status=status, headers=resp_headers, data=data, index=index)
        records = list(self.crawler.parse(page))
        return page, await self._follow_ups(session, base, headers, records)

    async def _follow_ups(
        self, session: aiohttp.ClientSession, base: str, headers: Mapping[str, str], records: list[Any]
    ) -> list[Any]:
        """Each record with its detail merged in: the details fetched by a few workers, in any order."""
        detail = self.crawler.detail
        todo = [(i, t) for i, r in enumerate(records) if (t := detail(r))]
        if not todo:
            return records
        out = list(records)
        assert self._pipeline is not None
        send, decoded, merge, slots = self._pipeline.send, self._decoded, self.crawler.merge_detail, self._slots
        todo.reverse()  # popped from the end: in record order
        tasks: list[asyncio.Future[None]] = []
        failed: list[BaseException] = []

        async def worker() -> None:
            try:
                while todo:
                    i, target = todo.pop()
                    answer = await send(session, "GET", resolve_url(base, target), headers=headers)
                    out[i] = merge(records[i], decoded(answer)[2])
                    if len(todo) > len(tasks) and slots.value > 0:  # slots came free: one worker more
                        tasks.append(asyncio.ensure_future(worker()))
            except Exception as exc:  # the page failed: its other fetches stop at once
                failed.append(exc)
                todo.clear()
                me = asyncio.current_task()
                for task in tasks:
                    if task is not me:
                        task.cancel()
                raise

        # As many workers as there are free slots (at least a few): a fetch more would only queue
        # for a slot, and each queued task costs a future and a wake-up of its own.
        tasks.extend(asyncio.ensure_future(worker()) for _ in range(min(len(todo), max(_WORKERS_MIN, slots.value))))
        try:
            done = 0
            while done < len(tasks):  # workers started meanwhile are awaited too
                await tasks[done]
                done += 1
        except BaseException:  # on a failure (or cancellation) the page's other fetches stop too
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            current = asyncio.current_task()
            if failed and not (current is not None and current.cancelling()):
                raise failed[0] from None  # the failure, not the cancellation of a fetch it stopped
            raise
        return out

    def _at_rest(self, request: PageRequest | None) -> PageRequest | None:
        """``request`` as a position may be saved: without credential parameters or a token sent."""
        if request is None:
            return None
        url, params = without_credentials(request.url, request.params, self._token_values)
        return request if url is request.url and params == request.params else PageRequest(url, params)

    # --- one request -------------------------------------------------------------------------------

    def _new_governor(self, host: str) -> Governor:
        return self._governors(host) if self._governors is not None else HostGovernor(self._rate, self._clock)

    def _decoded(self, answer: Answer) -> tuple[int, Mapping[str, str], Any, Any]:
        """One API GET's answer from the pipeline: status, headers, the decoded body, the final URL (a URL object)."""
        if answer.token is not self._sent_token and answer.token is not None:
            self._sent_token = answer.token
            self._token_values = (*self._token_values[-2:], answer.token.access_token.reveal())
        body = answer.body
        if answer.status >= 300:
            raise answer.error("request failed", data=_json(body))
        try:
            return answer.status, answer.headers, orjson.loads(body), answer.url
        except orjson.JSONDecodeError:
            if not body.strip():  # an empty answer (204, or 200 with no body) holds no records
                return answer.status, answer.headers, None, answer.url
            raise answer.error("the API answered with something that is not JSON") from None


def _with_credentials_of(start: PageRequest, resumed: PageRequest | None) -> PageRequest | None:
    """A resumed position with the credential parameters the crawler itself sends (never saved) put back."""
    if resumed is None:
        return None
    have = {k for k, _ in resumed.params}
    missing = tuple((k, v) for k, v in start.params if is_credential_parameter(k) and k not in have)
    return PageRequest(resumed.url, (*resumed.params, *missing)) if missing else resumed
