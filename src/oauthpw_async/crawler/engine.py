"""The crawl engine: concurrency, rate limits, retries, 401 handling, sinks, checkpoints."""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import anyio
import attrs
import orjson

from .._paths import dig
from ..errors import CrawlError, HTTPStatusError, UnauthorizedError
from ..grant import excerpt, parse_retry_after
from ..provider import TokenProvider
from ..transport import safe_url
from .checkpoint import Checkpoints
from .pagination import Page, PageRequest, Paginator, resolve
from .sinks import Sink

if TYPE_CHECKING:
    from .base import Crawler, Partition

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found, unused-ignore]


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


@attrs.frozen
class HttpPolicy:
    """Retries and timeouts for API requests.

    Connection errors, timeouts, 408 and 5xx are retried with full-jitter exponential
    backoff; 429 and 503 pause every task on that host for ``Retry-After`` (or the
    rate-limit reset headers). A 401 renews the token and retries once. Other 4xx fail.
    """

    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0
    #: Longest rate-limit pause honoured before giving up on a request.
    max_pause: float = 300.0
    #: Total time one request may take across its attempts.
    deadline: float = 600.0
    #: Per-attempt total timeout.
    timeout: float = 60.0


@attrs.define
class PartitionStats:
    """Progress of one partition."""

    pages: int = 0
    records: int = 0
    total: int | None = None
    done: bool = False


@attrs.define
class CrawlStats:
    """Counters for a progress display or a pipeline's metrics."""

    pages: int = 0
    records: int = 0
    requests: int = 0
    retries: int = 0
    unauthorized: int = 0
    rate_limit_pauses: int = 0
    cycles_stopped: int = 0
    partitions_total: int = 0
    partitions_done: int = 0
    started: float = attrs.field(factory=time.monotonic)
    partitions: dict[str, PartitionStats] = attrs.field(factory=dict)

    @property
    def expected_records(self) -> int | None:
        """Sum of known partition totals, when every partition reported one."""
        totals = [p.total for p in self.partitions.values()]
        if not totals or any(t is None for t in totals) or len(totals) < self.partitions_total:
            return None
        return sum(t for t in totals if t is not None)

    def eta_seconds(self) -> float | None:
        """Estimated seconds left, when totals are known."""
        expected = self.expected_records
        elapsed = time.monotonic() - self.started
        if not expected or not self.records or elapsed <= 0:
            return None
        return max(0.0, (expected - self.records) / (self.records / elapsed))


class _HostGovernor:
    """Per-host pause (shared by every task) and an optional request rate."""

    def __init__(self, rate: float | None) -> None:
        self.paused_until = 0.0
        self.interval = 1.0 / rate if rate else 0.0
        self.next_slot = 0.0

    async def wait(self) -> None:
        while self.paused_until and (delay := self.paused_until - time.monotonic()) > 0:
            await anyio.sleep(delay)
        if self.interval:
            now = time.monotonic()
            slot = max(now, self.next_slot)
            self.next_slot = slot + self.interval
            if slot > now:
                await anyio.sleep(slot - now)

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)


def rate_limit_delay(status: int, headers: Mapping[str, str], now_wall: float) -> float | None:
    """Seconds to wait, from an answer's rate-limit headers (``None`` when none is usable).

    Reads ``Retry-After`` (seconds or HTTP-date), ``X-RateLimit-Reset`` / ``X-Rate-Limit-Reset``
    (epoch seconds or ISO 8601) and ``RateLimit-Reset`` (delta seconds).
    """
    retry_after = parse_retry_after(headers.get("Retry-After"), now_wall)
    if retry_after is not None:
        return retry_after
    for name in ("X-RateLimit-Reset", "X-Rate-Limit-Reset"):
        value = headers.get(name)
        if value:
            try:
                reset = float(value)
                return max(0.0, (reset / 1000 if reset > 1e11 else reset) - now_wall)
            except ValueError:
                try:
                    return max(0.0, datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() - now_wall)
                except ValueError:
                    pass
    value = headers.get("RateLimit-Reset")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
    return None


@functools.lru_cache(maxsize=64)
def _origin(base: str) -> str:
    parts = urlsplit(base)
    return f"{parts.scheme}://{parts.netloc}"


def _resolve(base: str, target: str) -> str:
    """``target`` as an absolute URL: as is, on ``base``'s origin (``/path``), or joined to ``base``."""
    if target.startswith(("https://", "http://")):
        return target
    if target.startswith("/"):
        return _origin(base) + target
    return urljoin(base.rstrip("/") + "/", target)


class CrawlEngine:
    """Runs one :class:`Crawler` with a shared :class:`TokenProvider` and aiohttp session.

    Embeddable: no event loop of its own, no global state. Several engines may share a
    provider and a session; cancelling the caller stops the crawl cleanly (positions
    already checkpointed are kept).
    """

    def __init__(
        self,
        crawler: Crawler,
        tokens: TokenProvider,
        *,
        session: aiohttp.ClientSession | None = None,
        concurrency: int = 16,
        rate: float | None = None,
        state: str | None = None,
        policy: HttpPolicy | None = None,
        on_progress: Callable[[CrawlStats], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.crawler = crawler
        self.tokens = tokens
        self.stats = CrawlStats()
        self._session = session
        self._concurrency = concurrency
        self._rate = rate
        self._checkpoints = Checkpoints(state)
        self._policy = policy or HttpPolicy()
        self._on_progress = on_progress
        # aiohttp ties the engine to asyncio, so asyncio's own primitives are used on the hot path.
        self._slots = asyncio.Semaphore(concurrency)
        self._timeout = aiohttp.ClientTimeout(total=self._policy.timeout)
        self._hosts: dict[str, _HostGovernor] = {}
        self._paginator: Paginator = resolve(crawler.pagination)
        self._rng = random.Random()

    # --- running -----------------------------------------------------------------------------------

    async def run(self, sink: Sink) -> CrawlStats:
        """Crawl every partition into ``sink``; returns the final counters."""
        own = self._session is None
        session = self._session or aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._concurrency, limit_per_host=self._concurrency)
        )
        try:
            partitions = list(self.crawler.partitions())
            names = [p.name for p in partitions]
            if len(set(names)) != len(names):
                raise CrawlError("partition names must be unique: they key the checkpoints")
            self.stats.partitions_total = len(partitions)
            for p in partitions:
                ps = PartitionStats(pages=self._checkpoints.pages(p.name))
                self.stats.partitions[p.name] = ps
                if self._checkpoints.is_done(p.name):
                    ps.done = True
                    self.stats.partitions_done += 1
            try:
                async with anyio.create_task_group() as tg:
                    for p in partitions:
                        if not self._checkpoints.is_done(p.name):
                            tg.start_soon(self._walk, session, p, sink)
            except BaseExceptionGroup as group:
                # One partition failed and the others were cancelled: raise the failure itself.
                raise _first_error(group) from None
            await sink.flush()
        finally:
            if own:
                await session.close()
        self._progress()
        return self.stats

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
            raise CrawlError(f"{type(crawler).__name__} sets neither base_url nor base_url_from_token")
        return crawler.base_url

    async def _walk(self, session: aiohttp.ClientSession, partition: Partition, sink: Sink) -> None:
        ps = self.stats.partitions[partition.name]
        base = await self._base_url()
        request = self._checkpoints.resume_from(partition.name)
        if request is None:
            request = self._paginator.start(self.crawler.first_request(partition))
        seen: set[str] = set()
        index = ps.pages
        max_pages = self.crawler.max_pages
        plan = getattr(self._paginator, "plan", None) if self.crawler.parallel_pages > 1 else None
        planned: collections.deque[PageRequest] | None = None  # known pages not started yet
        inflight: collections.deque[tuple[PageRequest, asyncio.Future[tuple[Page, list[Any]]]]] = collections.deque()
        try:
            while request is not None:
                key = request.key()
                if key in seen:
                    self.stats.cycles_stopped += 1
                    log.warning(
                        "partition %s: page %s was already read; stopping to avoid a loop",
                        partition.name,
                        safe_url(request.url),
                    )
                    break
                seen.add(key)
                if index >= max_pages:
                    log.warning("partition %s: page budget of %d reached; stopping", partition.name, max_pages)
                    break
                if inflight and inflight[0][0] is request:
                    page, records = await inflight.popleft()[1]
                else:
                    page, records = await self._read_page(session, base, request, index, ps)
                await sink.write(records, partition.name)
                if planned is None and plan is not None:
                    known = plan(page, records)
                    planned = collections.deque(known) if known is not None else None
                if planned is not None:
                    # Totals are known: keep up to parallel_pages pages in flight, emit them in order.
                    while planned and len(inflight) < self.crawler.parallel_pages - 1:
                        ahead = planned.popleft()
                        future = asyncio.ensure_future(
                            self._read_page(session, base, ahead, index + 1 + len(inflight), ps)
                        )
                        inflight.append((ahead, future))
                    nxt = inflight[0][0] if inflight else (planned[0] if planned else None)
                else:
                    nxt = self._paginator.next(page, records)
                index += 1
                await sink.flush()  # records are durable before the position moves past them
                await self._checkpoints.save(partition.name, nxt, index)
                ps.pages, ps.records = index, ps.records + len(records)
                self.stats.pages += 1
                self.stats.records += len(records)
                self._progress()
                request = nxt
        finally:
            for _, unread in inflight:
                unread.cancel()
            if inflight:
                await asyncio.gather(*(f for _, f in inflight), return_exceptions=True)
        if request is not None:  # stopped early (a loop or the page budget): nothing more to resume
            await self._checkpoints.save(partition.name, None, index)
        ps.done = True
        self.stats.partitions_done += 1
        self._progress()

    async def _read_page(
        self, session: aiohttp.ClientSession, base: str, request: PageRequest, index: int, ps: PartitionStats
    ) -> tuple[Page, list[Any]]:
        """Fetch one page, parse its records and run their follow-ups."""
        status, headers, data, final_url = await self._request(session, _resolve(base, request.url), request.params)
        page = Page(request=request, url=str(final_url), status=status, headers=headers, data=data, index=index)
        records = list(self.crawler.parse(page))
        if ps.total is None and self.crawler.total_path is not None:
            total = dig(data, self.crawler.total_path)
            if isinstance(total, int) and not isinstance(total, bool):
                ps.total = total
        return page, await self._follow_ups(session, base, records)

    async def _follow_ups(self, session: aiohttp.ClientSession, base: str, records: list[Any]) -> list[Any]:
        targets = [self.crawler.detail(r) for r in records]
        if not any(targets):
            return records
        out = list(records)

        async def fetch(i: int, target: str) -> None:
            _, _, data, _ = await self._request(session, _resolve(base, target), ())
            out[i] = self.crawler.merge_detail(records[i], data)

        tasks = [asyncio.ensure_future(fetch(i, t)) for i, t in enumerate(targets) if t]
        try:
            await asyncio.gather(*tasks)
        except BaseException:  # on a failure (or cancellation) the page's other fetches stop too
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return out

    # --- one request -------------------------------------------------------------------------------

    def _governor(self, url: str) -> _HostGovernor:
        host = url.split("/", 3)[2] if "://" in url else urlsplit(url).netloc
        gov = self._hosts.get(host)
        if gov is None:
            gov = self._hosts[host] = _HostGovernor(self._rate)
        return gov

    async def _request(
        self, session: aiohttp.ClientSession, url: str, params: Sequence[tuple[str, str]]
    ) -> tuple[int, Mapping[str, str], Any, object]:
        policy = self._policy
        gov = self._governor(url)
        started = 0.0  # set at the first failure: the happy path reads no extra clock
        attempt = 0
        renewed = False
        timeout = self._timeout
        query = list(params) or None
        while True:
            await gov.wait()
            problem: str
            async with self._slots:
                # The header is taken only now that the request has its slot, so no request
                # queues while holding a token that may expire meanwhile.
                token = await self.tokens.get()
                self.stats.requests += 1
                try:
                    async with session.get(
                        url,
                        params=query,
                        timeout=timeout,
                        allow_redirects=True,
                        headers={"Authorization": token.authorization, "Accept": "application/json"},
                    ) as resp:
                        status = resp.status
                        headers = resp.headers
                        body = await resp.read()
                        final_url = resp.url
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    status, headers, body, final_url = 0, {}, b"", url  # type: ignore[assignment]
                    problem = type(exc).__name__
            if status == 401:
                self.stats.unauthorized += 1
                if renewed:
                    raise UnauthorizedError(
                        "refused twice, the second time with a renewed token",
                        status=401,
                        url=safe_url(url),
                        excerpt=excerpt(body),
                    )
                renewed = True
                self.tokens.invalidate(token)
                continue
            if 200 <= status < 300:
                try:
                    return status, headers, orjson.loads(body) if body.strip() else None, final_url
                except orjson.JSONDecodeError:
                    raise HTTPStatusError(
                        "the API answered with something that is not JSON",
                        status=status,
                        url=safe_url(url),
                        excerpt=excerpt(body),
                    ) from None
            if status in (429, 503) or (status == 403 and headers.get("X-RateLimit-Remaining") == "0"):
                delay = rate_limit_delay(status, headers, time.time())
                if delay is None:
                    delay = self._backoff(attempt)
                if delay > policy.max_pause:
                    raise HTTPStatusError(
                        f"rate limited for {delay:.0f}s, longer than max_pause",
                        status=status,
                        url=safe_url(url),
                        excerpt=excerpt(body),
                    )
                gov.pause(delay)
                self.stats.rate_limit_pauses += 1
                problem = f"HTTP {status}, pausing {delay:.2f}s"
                delay = 0.0
            elif status == 0 or status == 408 or status >= 500:
                if status:
                    problem = f"HTTP {status}"
                delay = self._backoff(attempt)
            else:
                raise HTTPStatusError("request failed", status=status, url=safe_url(url), excerpt=excerpt(body))
            attempt += 1
            if attempt == 1:
                started = time.monotonic()
            if attempt >= policy.max_attempts or time.monotonic() - started + delay > policy.deadline:
                raise HTTPStatusError(
                    f"gave up after {attempt} attempts ({problem})",
                    status=status,
                    url=safe_url(url),
                    excerpt=excerpt(body),
                )
            self.stats.retries += 1
            log.info("retrying %s in %.2fs: %s", safe_url(url), delay, problem)
            if delay:
                await anyio.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        p = self._policy
        return self._rng.uniform(0, min(p.max_delay, p.base_delay * 2**attempt))
