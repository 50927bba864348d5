"""One crawl run by a fleet of worker processes: partitions, positions and politeness in Redis.

Every worker runs the same crawler against its own sink. :class:`FleetCheckpoints` is the
engine's position store (:class:`~oauthpw_async.crawler.checkpoint.PositionStore`) *and* its partition
scheduler (:class:`~oauthpw_async.crawler.scheduling.PartitionScheduler`): the worker enqueues the crawler's
partitions (idempotently), claims a few at a time from the crawl's
:class:`~oauthpw_async.fleet.PartitionQueue`, walks each from the position the fleet last
committed, checkpoints every page (fenced: a worker that lost its claim has its write refused
and stops that partition), marks it done (or failed, with its completeness problems), and
claims the next, until the queue is drained and no partition is running anywhere. A dead or
stalled worker's partitions are taken over after the idle timeout from their last checkpoint,
so only pages in flight at the death are written twice.

An incremental crawler is also a :class:`~oauthpw_async.crawler.incremental.CursorStore` user:
each partition's run in flight is sealed into its position, and its next cursor is committed with
its last position in one fenced write once it finished complete (an incomplete one keeps its
cursor). The crawl runs in rounds: a worker that finds every partition of the last round done or
failed begins the next (:meth:`PartitionQueue.next_round`), unless it belongs to that round by name.

A partition the API refuses for good (a 404, retries run out) is marked failed with the error,
once, and the worker goes on: the crawl finishes incomplete, and
:meth:`FleetCrawl.requeue_failed` queues it again once fixed. A worker that stops (its own error,
a cancellation) claims nothing more and gives back every claim it holds, started or not.

:class:`SharedHostGovernor` plugs the fleet-wide rate limit and the shared 429/503 pause
(:class:`~oauthpw_async.fleet.HostRateLimiter`) into the engine's per-host governor.

:class:`FleetCrawl` puts the two together::

    fleet = Coordinator.for_config(config, url, token_key=key)
    async with fleet, TokenProvider(config, coordinator=fleet) as tokens:
        stats = await FleetCrawl(fleet, "incidents").run(Incidents(), tokens, JsonLinesSink("w1.jsonl"))
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import orjson

from .._api import HostGovernor
from .._httputil import scrub
from ..clock import SYSTEM_CLOCK, Clock
from ..crawler.checkpoint import PositionStore
from ..crawler.pagination import PageRequest
from ..errors import (
    CrawlError,
    ForeignOriginError,
    HTTPStatusError,
    OAuthPWError,
    PageShapeError,
    StateMismatch,
    UnauthorizedError,
    UsageError,
)
from ..retry import RetryPolicy, attempts
from ._redis import RedisLink, as_text
from ._tasks import in_background
from .cipher import TokenCipher
from .errors import ClaimLost, CoordinatorUnavailable, FleetError, damaged
from .partitions import Claim, FleetStatus, PartitionQueue, PartitionStatus
from .ratelimit import HostRateLimiter

if TYPE_CHECKING:
    import aiohttp

    from ..crawler.base import Crawler, Partition
    from ..crawler.engine import CrawlStats
    from ..crawler.sinks import Sink
    from ..sources import TokenSource
    from .coordinator import Coordinator

__all__ = ["REDIS_WAIT", "CrawlStateLost", "FleetCheckpoints", "FleetCrawl", "SharedHostGovernor", "default_consumer"]

log = logging.getLogger("oauthpw_async.fleet")

T = TypeVar("T")

REDIS_WAIT = RetryPolicy(max_attempts=1_000_000, base_delay=0.1, max_delay=2.0, jitter=0.0)
"""How a worker waits for Redis to answer again: 0.1 s doubling to 2 s, for ``unavailable_grace`` seconds."""

# KEYS: meta. ARGV: fingerprint (JSON), a new epoch. Returns {created, epoch, recorded fingerprint}.
_JOIN = """
local fp = redis.call('HGET', KEYS[1], 'fingerprint')
if not fp then
  redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1], 'epoch', ARGV[2])
  return {1, ARGV[2], ARGV[1]}
end
return {0, redis.call('HGET', KEYS[1], 'epoch') or '', fp}
"""


class CrawlStateLost(FleetError, CrawlError):
    """The crawl's partitions and positions vanished from Redis (it restarted without persistence, or was flushed).

    Positions committed since the crawl began are gone, so nothing may be claimed complete:
    the worker stops. Start the workers again: the crawl is enqueued afresh and every partition
    is read from its start (records already written are written again; a primary key
    deduplicates them downstream). Run Redis with AOF persistence (``appendonly yes``) so a
    restart keeps the queue.
    """

    def __init__(self, crawl: str, where: str) -> None:
        self.crawl = crawl
        self.where = where
        super().__init__(
            f"the fleet state of crawl {crawl!r} is gone from Redis at {where} (restarted without persistence, or "
            "flushed): positions since the crawl began are lost, so this worker stops rather than claim the crawl "
            "complete; start the workers again to crawl every partition from its start (records already written "
            "are written again), and run Redis with appendonly yes to keep the queue across restarts"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (CrawlStateLost, (self.crawl, self.where))


#: Errors that say a partition cannot be walked, whichever worker tries: the API refused one of its
#: requests for good (or its retries ran out), a page is not shaped as declared, or a link leads to a
#: foreign origin. The partition is marked failed with the error, and the worker goes on.
_PARTITION_ERRORS: tuple[type[Exception], ...] = (HTTPStatusError, PageShapeError, ForeignOriginError)
#: Errors of the worker or its surroundings, not of a partition: another worker may well walk it.
_WORKER_ERRORS: tuple[type[Exception], ...] = (OAuthPWError, OSError, MemoryError)

_REASON_LIMIT = 500
#: An Authorization value (RFC 6750 / RFC 7617 token68), told from prose by a digit or a sign in it.
_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic)\s+(?=[\w\-.~+/=]*[\d\-.~+/=])[\w\-.~+/=]{8,}")

Failure = Literal["partition", "worker", "unknown"]


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _failure(exc: BaseException) -> Failure:
    """What a walk's error says: ``partition`` (fails it for good), ``worker`` (give it back), or ``unknown``.

    Unknown errors (the crawler's own code raised) may be the partition's or the worker's: the
    partition is given back and the claim counts, so ``max_claims`` bounds the workers it can stop.
    """
    real = [e for e in _leaves(exc) if not isinstance(e, anyio.get_cancelled_exc_class())]
    if not real or any(not isinstance(e, Exception) for e in real):
        return "worker"  # a cancellation (a stop signal), KeyboardInterrupt, SystemExit
    kinds: set[Failure] = set()
    for e in real:
        if isinstance(e, _PARTITION_ERRORS) and not isinstance(e, UnauthorizedError):
            kinds.add("partition")  # (a 401 after renewals is the account's, not the partition's)
        elif isinstance(e, _WORKER_ERRORS):
            kinds.add("worker")
        else:
            kinds.add("unknown")
    return "worker" if "worker" in kinds else "unknown" if "unknown" in kinds else "partition"


def _reason(exc: BaseException) -> str:
    """The error's type and message for the fleet's record, bounded and without credentials."""
    leaves = [e for e in _leaves(exc) if not isinstance(e, anyio.get_cancelled_exc_class())] or [exc]
    first = leaves[0]
    text = f"{type(first).__name__}: {first}" if str(first) else type(first).__name__
    if not isinstance(first, OAuthPWError):
        # This package's messages are scrubbed where they are made; another library's may quote anything.
        text = _CREDENTIAL.sub(r"\1 ***", scrub(text))
    text = " ".join(text.split())
    return text if len(text) <= _REASON_LIMIT else text[:_REASON_LIMIT] + "..."


def _walked_to_end(position: Any) -> bool:
    """Whether a partition's last page was committed (a walk from there would read nothing)."""
    return isinstance(position, dict) and "pages" in position and position.get("next") is None


def default_consumer() -> str:
    """A worker's name in the consumer group: host, pid and a random suffix (unique across a fleet)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _shared_fingerprint(fp: Mapping[str, Any] | None) -> dict[str, Any]:
    # Every worker writes its own output, so the output is not part of what they must agree on.
    return {k: v for k, v in (fp or {}).items() if k != "output"}


class FleetCheckpoints(PositionStore):
    """The engine's position store and partition scheduler for one worker of a fleet.

    Pass it as ``state=`` and ``scheduler=`` to :class:`~oauthpw_async.crawler.engine.CrawlEngine`
    (or use :class:`FleetCrawl`). Positions are JSON (``{"next", "pages", "records", "problems"}``) sealed with
    the fleet's key in Redis, written after the page's records reached this worker's sink.

    Args:
        link: the coordinator's Redis connection (``Coordinator.link``).
        crawl: the crawl's name: every worker of one crawl uses the same; one queue per name.
        cipher: seals positions at rest (``Coordinator.cipher``, or a :class:`TokenCipher` of the fleet's key).
        consumer: this worker's name (default: host, pid and a random suffix).
        idle_timeout: seconds without a checkpoint or heartbeat after which another worker takes a
            partition over. Keep it well above the time one page takes (heartbeats every third of it).
        max_claims: claims of one partition before it is marked failed (it kept killing workers).
        partitions_at_once: partitions this worker walks at the same time (claims it holds).
        unavailable_grace: seconds a position write keeps retrying while Redis does not answer.
        round_name: incremental crawls: the name of the round this worker is for. Workers of one
            round (``crawl --workers N``, or hosts given the same ``OAUTHPW_FLEET_ROUND``) join it
            even after it finished; a worker that finds a finished round of another name begins the
            next. Default: a name of its own (each worker started after a round finished begins one).
        clock: the clock heartbeats and the waits for Redis are on.
    """

    def __init__(
        self,
        link: RedisLink,
        crawl: str,
        *,
        cipher: TokenCipher | None = None,
        consumer: str | None = None,
        idle_timeout: float = 60.0,
        max_claims: int = 5,
        partitions_at_once: int = 4,
        unavailable_grace: float = 30.0,
        round_name: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if cipher is None:
            raise UsageError(
                "a fleet crawl seals its positions with the fleet's key: pass cipher=coordinator.cipher "
                "(or FleetCrawl(..., token_key=KEY) with a plain Redis link)"
            )
        if partitions_at_once < 1:
            raise UsageError("partitions_at_once must be at least 1")
        if not crawl or "{" in crawl or "}" in crawl:
            raise UsageError("a fleet crawl needs a name without braces")
        self._link = link
        self.crawl = crawl
        self.queue = PartitionQueue(
            link,
            crawl,
            consumer=consumer or default_consumer(),
            idle_timeout=idle_timeout,
            max_claims=max_claims,
            cipher=cipher,
            clock=clock,
        )
        self.clock = clock
        self.partitions_at_once = partitions_at_once
        self.unavailable_grace = unavailable_grace
        self._meta = link.key(f"crawl:{crawl}", "meta")
        self._epoch: str | None = None
        self._claims: dict[str, Claim] = {}
        self._positions: dict[str, dict[str, Any]] = {}
        self._states: dict[str, PartitionStatus] = {}
        # Incremental crawlers: committed cursors (fleet-wide, as last read) and the runs in flight of the
        # partitions this worker holds (stored in their positions, so a takeover resumes the run as it was).
        self._cursors: dict[str, dict[str, Any]] = {}
        self._runs: dict[str, dict[str, Any]] = {}
        self._settle: Callable[[str], Awaitable[None]] | None = None
        self._round = 1  # the round this worker works in
        self.round_name = round_name or secrets.token_hex(8)
        #: Partitions this worker walked to their end.
        self.finished: list[str] = []
        #: Partitions this worker stopped because another worker had taken them over.
        self.taken_over: list[str] = []
        #: Partitions this worker marked failed because their walk failed for good (see :attr:`last_status`).
        self.failed: list[str] = []
        self._stopping = False  # a walk failed or was cancelled: claim nothing more
        #: The last fleet status read (after :meth:`walk_partitions`: the final one).
        self.last_status: FleetStatus | None = None

    @property
    def consumer(self) -> str:
        """The worker's name in the fleet (the owner shown by a status)."""
        return self.queue.consumer

    def __repr__(self) -> str:
        return f"FleetCheckpoints(crawl={self.crawl!r}, consumer={self.consumer!r}, redis={self._link.where!r})"

    # --- PositionStore --------------------------------------------------------------------------------

    async def open(self, fingerprint: Mapping[str, Any] | None = None) -> None:
        """Join the crawl: check it is the same crawl, enqueue the partitions (once for the fleet), read the status.

        Raises:
            StateMismatch: the crawl name is used by another crawl (crawler, partitions or pagination).
            CoordinatorUnavailable: Redis did not answer.
        """
        mine = _shared_fingerprint(fingerprint)
        created, epoch, recorded = await self._link.script(
            _JOIN, [self._meta], [orjson.dumps(mine, option=orjson.OPT_SORT_KEYS), secrets.token_hex(8)]
        )
        theirs = orjson.loads(recorded)
        if theirs != mine:
            differences = {
                k: (theirs.get(k), mine.get(k)) for k in sorted(set(theirs) | set(mine)) if theirs.get(k) != mine.get(k)
            }
            raise StateMismatch(
                f"the fleet crawl {self.crawl!r} in Redis at {self._link.where} belongs to another crawl "
                f"({'; '.join(f'{k} was {o!r}, now {n!r}' for k, (o, n) in differences.items())}); give this crawl "
                "another name, or drop the old one with `oauthpw-async fleet reset`",
                differences=differences,
            )
        self._epoch = as_text(epoch)
        names = list(mine.get("partitions") or [])
        if names:
            added = await self.queue.enqueue({name: None for name in names})
            if added:
                log.info("fleet crawl %s: enqueued %d partition(s)", self.crawl, added)
        if not int(created):
            log.info("fleet crawl %s: joined as %s", self.crawl, self.consumer)
        await self.queue.name_round(self.round_name)
        await self.refresh()

    def close(self) -> None:
        """Nothing to release: claims are given back as their partitions end or the worker stops."""

    def is_done(self, partition: str) -> bool:
        """Whether the partition is done or failed for good (fleet-wide, as last read)."""
        status = self._states.get(partition)
        return status is not None and status.state in ("done", "failed")

    def resume_from(self, partition: str) -> PageRequest | None:
        """The position the fleet committed last for the partition (``None``: its start)."""
        nxt = self._positions.get(partition, {}).get("next")
        return PageRequest.from_json(nxt) if isinstance(nxt, dict) else None

    def pages(self, partition: str) -> int:
        """Pages the fleet committed for the partition."""
        return int(self._positions.get(partition, {}).get("pages", 0))

    def records(self, partition: str) -> int:
        """Records the fleet committed for the partition (in all workers' sinks)."""
        return int(self._positions.get(partition, {}).get("records", 0))

    def problems(self, partition: str) -> list[str]:
        """Why a finished partition may be missing records (its walk's problems, or why it failed)."""
        saved = self._positions.get(partition, {}).get("problems") or []
        status = self._states.get(partition)
        if not saved and status is not None and status.state == "failed" and status.reason:
            return [status.reason]
        return [str(p) for p in saved]

    async def commit_position(self, partition: str, position: dict[str, Any]) -> None:
        """Commit the partition's position (with its run in flight, if any), fenced by this worker's claim.

        Raises:
            ClaimLost: another worker took the partition over: this worker must stop it.
            CoordinatorUnavailable: Redis did not answer for ``unavailable_grace`` seconds.
        """
        claim = self._claims.get(partition)
        if claim is None:
            raise UsageError(f"partition {partition!r} is not claimed by this worker; the engine saves claimed ones")
        if partition in self._runs:
            position["run"] = self._runs[partition]
        try:
            await self._patient(lambda: self.queue.checkpoint(claim, position))
        except ClaimLost:
            log.warning(
                "partition %s: position write refused, another worker took it over (this claim's fence %d); "
                "stopping it here",
                partition,
                claim.fence,
            )
            raise
        self._positions[partition] = position

    # --- CursorStore (incremental crawlers) --------------------------------------------------------------

    def cursor(self, partition: str) -> dict[str, Any] | None:
        """The committed cursor of a partition this worker claimed, read at its claim (``None``: never synced)."""
        return self._cursors.get(partition)

    def run(self, partition: str) -> dict[str, Any] | None:
        """The run in flight of a partition this worker holds (from its position: a takeover resumes it)."""
        return self._runs.get(partition) if partition in self._claims else None

    def set_run(self, partition: str, run: dict[str, Any]) -> None:
        """Update the run in flight; stored, sealed and fenced, with the partition's next :meth:`save`."""
        self._runs[partition] = run

    async def commit_cursor(self, partition: str, cursor: dict[str, Any]) -> None:
        """Commit a finished partition's next cursor and end its run in flight, in one fenced write.

        Raises:
            ClaimLost: another worker took the partition over (its cursor is not moved).
            CoordinatorUnavailable: Redis did not answer for ``unavailable_grace`` seconds.
        """
        claim = self._claims.get(partition)
        if claim is None:
            raise UsageError(f"partition {partition!r} is not claimed by this worker; the engine commits claimed ones")
        position = {k: v for k, v in self._positions.get(partition, {}).items() if k != "run"}
        position.setdefault("next", None)
        position.setdefault("pages", 0)
        position.setdefault("records", 0)
        await self._patient(lambda: self.queue.commit_cursor(claim, position, cursor))
        self._positions[partition] = position
        self._cursors[partition] = cursor
        self._runs.pop(partition, None)

    async def reset(self, partitions: Iterable[str] | None = None, *, cursors: bool) -> list[str]:
        """Begin the crawl's next round once every partition of this one is done or failed (incremental crawlers).

        Every partition is queued again without its position or run; cursors stay. If another
        worker began it first, this worker joins that round. Returns the partitions queued.

        Raises:
            UsageError: ``cursors`` (a full refresh): drop the crawl with ``oauthpw-async fleet reset`` instead.
        """
        if cursors:
            raise UsageError(
                "a fleet forgets its cursors with `oauthpw-async fleet reset` (run once, while no worker runs): "
                "the next workers then read every partition in full"
            )
        number = await self._patient(lambda: self.queue.next_round(self.round_name))
        status = await self.refresh()
        self._round = status.round
        if number:
            log.info("fleet crawl %s: round %d begins (every partition from its cursor)", self.crawl, number)
        wanted = None if partitions is None else set(partitions)
        return sorted(p.name for p in status.partitions if number and (wanted is None or p.name in wanted))

    @property
    def round(self) -> int:
        """The crawl's round this worker works in (an incremental crawl runs one round after another)."""
        return self._round

    @property
    def incremental(self) -> bool:
        """Whether an incremental crawler uses this store (its cursors are kept in Redis)."""
        return self._settle is not None

    def settle_with(self, settle: Callable[[str], Awaitable[None]]) -> None:
        """How to commit a run that a stopped worker walked to its end but did not commit (the engine's sync)."""
        self._settle = settle

    # --- PartitionScheduler -----------------------------------------------------------------------------

    async def walk_partitions(
        self, partitions: Sequence[Partition], walk: Callable[[Partition], Awaitable[None]]
    ) -> None:
        """Claim partitions and ``walk`` each, ``partitions_at_once`` at a time, until the fleet has none left.

        Returns once every partition is done or failed fleet-wide (so the worker may exit), with
        :attr:`last_status` and :meth:`is_done` reflecting the whole fleet. A walk that fails for
        good (the API refused the partition, see :data:`_PARTITION_ERRORS`) marks its partition
        failed with the error and the worker goes on with the others. Any other failure, or a
        cancellation, stops the worker: it claims nothing more and gives back every claim it holds
        (so no partition waits for the idle timeout), then raises.

        Raises:
            CrawlStateLost: the crawl vanished from Redis (restarted without persistence).
            CoordinatorUnavailable: Redis did not answer for ``unavailable_grace`` seconds.
        """
        by_name = {p.name: p for p in partitions}
        # Claims obtained whose walk has not begun: a worker that stops (an error elsewhere, a
        # cancellation) before it starts them gives them back below, however it stops.
        unstarted: dict[str, Claim] = {}
        self._stopping = False
        if self.last_status is not None:
            self._round = self.last_status.round
        try:
            await self._claim_until_drained(by_name, walk, unstarted)
        finally:
            if unstarted:
                await self._give_back(list(unstarted.values()))
                for name in unstarted:
                    self._claims.pop(name, None)
        await self.refresh()

    async def _claim_until_drained(
        self,
        by_name: Mapping[str, Partition],
        walk: Callable[[Partition], Awaitable[None]],
        unstarted: dict[str, Claim],
    ) -> None:
        """Claim as many partitions as are free and walk them; between claims, wait for a walk to end or a poll.

        Ends once nothing runs here and the fleet's round is finished (or another round began).
        """
        running: set[str] = set()
        changed = anyio.Event()
        poll = min(1.0, self.queue.idle_timeout / 4)

        async def run(claim: Claim) -> None:
            unstarted.pop(claim.partition, None)  # from here on _walk_claim gives it back or finishes it
            try:
                await self._walk_claim(claim, by_name[claim.partition], walk)
            finally:
                running.discard(claim.partition)
                self._claims.pop(claim.partition, None)
                changed.set()

        async with anyio.create_task_group() as tg:
            while True:
                free = self.partitions_at_once - len(running)
                claims = []
                if free > 0 and not self._stopping:
                    claims = await self._patient(functools.partial(self._claim, free, unstarted))
                for claim in claims:
                    if claim.partition not in by_name:  # cannot happen with matching fingerprints
                        raise UsageError(f"the fleet handed out {claim.partition!r}, which this crawler does not have")
                    self._adopt(claim)
                    running.add(claim.partition)
                    tg.start_soon(run, claim)
                if claims:
                    continue
                if not running and await self._round_over():
                    return
                changed = anyio.Event()
                await self._until(changed, poll)

    async def _round_over(self) -> bool:
        """Whether the fleet's round is finished, or another began (its workers run it, with what it has learnt)."""
        status = await self.refresh()
        return status.finished or status.round != self._round

    async def _until(self, event: anyio.Event, seconds: float) -> None:
        """Wait until ``event`` is set or ``seconds`` have passed on the clock, whichever comes first."""
        async with anyio.create_task_group() as tg:

            async def time_up() -> None:
                await self.clock.sleep(seconds)
                tg.cancel_scope.cancel()

            tg.start_soon(time_up)
            await event.wait()
            tg.cancel_scope.cancel()

    async def refresh(self) -> FleetStatus:
        """Read the fleet's status (every partition's state and position) into this store.

        Raises:
            CrawlStateLost: the crawl vanished from Redis since this worker joined it.
        """
        status = await self._patient(self.queue.status)
        await self._check_epoch()
        self.last_status = status
        self._states = {p.name: p for p in status.partitions}
        for p in status.partitions:
            if isinstance(p.position, dict) and p.name not in self._claims:
                self._positions[p.name] = self._checked(p.name, p.position)
        return status

    # --- inside ---------------------------------------------------------------------------------------------

    def _adopt(self, claim: Claim) -> None:
        self._claims[claim.partition] = claim
        self._runs.pop(claim.partition, None)
        if isinstance(claim.position, dict):
            position = self._positions[claim.partition] = self._checked(claim.partition, claim.position)
            if isinstance(position.get("run"), dict):
                self._runs[claim.partition] = position["run"]
        else:
            self._positions.pop(claim.partition, None)
        if claim.attempt > 1:
            log.warning(
                "partition %s: taken over (claim %d) from page %d",
                claim.partition,
                claim.attempt,
                self.pages(claim.partition),
            )

    def _checked(self, partition: str, position: dict[str, Any]) -> dict[str, Any]:
        """A position as :meth:`save` writes it, else a typed error (it opened, yet something else wrote it)."""
        nxt, pages, records = position.get("next"), position.get("pages", 0), position.get("records", 0)
        problems, run = position.get("problems") or [], position.get("run", {})
        try:
            if nxt is not None:
                PageRequest.from_json(nxt)
            if type(pages) is not int or type(records) is not int or not isinstance(problems, list):
                raise TypeError("not a position")
            if not isinstance(run, dict):
                raise TypeError("not a run")
        except (TypeError, ValueError, KeyError, AttributeError):
            raise damaged(
                f"the position of partition {partition!r} of crawl {self.crawl!r}",
                clear="run `oauthpw-async fleet reset` (the crawl starts over)",
            ) from None
        return position

    def _checked_cursor(self, partition: str, cursor: Any) -> dict[str, Any]:
        if not isinstance(cursor, dict):
            raise damaged(
                f"the cursor of partition {partition!r} of crawl {self.crawl!r}",
                clear="run `oauthpw-async fleet reset` (the crawl starts over, reading every partition in full)",
            )
        return cursor

    async def _claim(self, count: int, into: dict[str, Claim]) -> list[Claim]:
        """Up to ``count`` claims, noted in ``into`` before a cancellation can strike.

        Shielded: a claim is granted in Redis the moment the script runs, so a cancellation
        while waiting for the answer would leave this worker owning partitions it never heard
        of, stuck until the idle timeout.
        """
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + self._link.command_timeout + 1
            self.queue.in_round = self._round
            claims = await self.queue.claim(count)
            for claim in claims:
                into[claim.partition] = claim
            return claims
        raise self._link.unavailable(TimeoutError())  # the backstop deadline passed

    async def _give_back(self, claims: Sequence[Claim], error: str | None = None) -> None:
        """Release ``claims`` (shielded, bounded): another worker resumes them from their last checkpoint now."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._link.command_timeout + 1):
            for claim in claims:
                try:
                    await self.queue.release(claim, error=error)
                except FleetError:
                    pass  # lost, or Redis down: the idle timeout hands it on

    async def _walk_claim(
        self, claim: Claim, partition: Partition, walk: Callable[[Partition], Awaitable[None]]
    ) -> None:
        name = claim.partition
        position = self._positions.get(name)
        try:
            try:
                if self._settle is not None:  # its cursor, read when claimed (with its recent keys it may be large)
                    fresh = await self._patient(lambda: self.queue.cursors(name))
                    self._cursors.pop(name, None)
                    if name in fresh:
                        self._cursors[name] = self._checked_cursor(name, fresh[name])
                if _walked_to_end(position) and self._settle is not None and name in self._runs:
                    await self._settle(name)  # its worker stopped between its last page and its cursor
                if not _walked_to_end(position):
                    with anyio.CancelScope() as scope:
                        async with in_background(lambda: self._heartbeat(claim, scope)):
                            await walk(partition)
                    if scope.cancelled_caught:
                        raise ClaimLost(name)
                # else: its last page was committed and its worker stopped before marking it done
            except Exception as exc:
                if isinstance(exc, ClaimLost) or _failure(exc) != "partition":
                    raise
                # It fails the same way for every worker: record why, once, and go on with the others.
                reason = _reason(exc)
                log.warning("partition %s failed: %s; marked failed for the fleet", name, reason)
                await self._patient(lambda: self.queue.fail(claim, reason))
                self.failed.append(name)
                return
            problems = self.problems(name)
            if problems:
                await self._patient(lambda: self.queue.fail(claim, "; ".join(problems)))
            else:
                await self._patient(lambda: self.queue.complete(claim))
            self.finished.append(name)
        except ClaimLost:
            self.taken_over.append(name)
            log.warning("partition %s: stopped, another worker has taken it over", name)
            await self._check_epoch()  # lost because Redis lost the crawl: that ends this worker
        except BaseException as exc:
            # The worker stops (its own error, a cancellation, or one that may be the partition's):
            # claim nothing more, and give this one back so another worker resumes it from its last
            # checkpoint now, not after the idle timeout. An unknown error counts as a claim, so a
            # partition that stops every worker fails after max_claims, naming the error.
            self._stopping = True
            await self._give_back([claim], _reason(exc) if _failure(exc) == "unknown" else None)
            raise

    async def _heartbeat(self, claim: Claim, scope: anyio.CancelScope) -> None:
        """Keep the claim alive while a page is slow; stop the walk as soon as it is taken over."""
        while True:
            await self.clock.sleep(self.queue.idle_timeout / 3)
            try:
                await self.queue.touch(claim)
            except ClaimLost:
                log.warning("partition %s: claim taken over while walking it; stopping it", claim.partition)
                scope.cancel()
                return
            except CoordinatorUnavailable:
                continue  # the next page's checkpoint decides (it waits for Redis, within the grace)

    async def _check_epoch(self) -> None:
        epoch = await self._patient(lambda: self._link.call(self._link.client.hget(self._meta, "epoch")))
        if self._epoch is not None and (epoch is None or as_text(epoch) != self._epoch):
            raise CrawlStateLost(self.crawl, self._link.where)

    async def _patient(self, op: Callable[[], Awaitable[T]]) -> T:
        """``op()``, retried with backoff while Redis does not answer, for up to ``unavailable_grace`` seconds."""
        last: CoordinatorUnavailable | None = None
        async for n in attempts(REDIS_WAIT, self.clock, deadline=self.unavailable_grace):
            try:
                return await op()
            except CoordinatorUnavailable as exc:
                last = exc
                log.warning("fleet crawl %s: %s (attempt %d)", self.crawl, exc.detail, n + 1)
        assert last is not None  # attempts() yields at least once
        raise last


class SharedHostGovernor:
    """A host's governor shared by the fleet: one request rate (GCRA in Redis) and one 429/503 pause.

    With a ``limiter`` every request reserves its slot in one Redis call, which also holds it
    back during a shared pause; without one (no rate), the shared pause is read at most every
    ``pause_check`` seconds. A pause asked by this worker applies here at once and is published
    with the next wait. While Redis does not answer, the worker keeps the rate and the pause on
    its own (the ``local`` governor) rather than stop crawling.
    """

    def __init__(
        self,
        host: str,
        local: HostGovernor,
        link: RedisLink,
        limiter: HostRateLimiter | None,
        *,
        pause_check: float = 0.2,
    ) -> None:
        self.host = host
        self._local = local
        self._limiter = limiter or HostRateLimiter(link, rate=1.0)  # its rate unused: pauses only
        self._reserve = limiter is not None
        self._pause_check = pause_check
        self._checked_at = -math.inf
        self._to_publish = 0.0
        self._warned = False

    async def wait(self) -> None:
        """Wait for the shared pause and this request's slot in the shared rate."""
        local = self._local
        try:
            if self._to_publish:
                seconds, self._to_publish = self._to_publish, 0.0
                await self._limiter.pause(self.host, seconds)
            if self._reserve:
                await self._limiter.acquire(self.host)  # the shared rate, after the shared pause
                return
            now = local.clock.monotonic()
            if now - self._checked_at >= self._pause_check:
                self._checked_at = now
                paused = await self._limiter.paused_for(self.host)
                if paused > 0:
                    local.pause(paused)
        except CoordinatorUnavailable as exc:
            if not self._warned:
                self._warned = True
                log.warning("%s: %s; keeping this worker's own rate and pauses meanwhile", self.host, exc.detail)
        await local.wait()

    def pause(self, seconds: float) -> None:
        """Pause the host here at once; the pause is published to the fleet with the next :meth:`wait`."""
        self._local.pause(seconds)
        self._to_publish = max(self._to_publish, seconds)


class FleetCrawl:
    """Run a crawler as one worker of a fleet: claimed partitions, positions and politeness shared in Redis.

    Args:
        fleet: an open :class:`~oauthpw_async.fleet.Coordinator`, or a plain Redis link (a static token:
            nothing to renew) with ``token_key``.
        crawl: the crawl's name, the same on every worker.
        token_key: the fleet's key (or keys, newest first) sealing positions, when ``fleet`` is a link.
        rate: requests per second per host for the whole fleet (``None``: no limit, pauses still shared).
        burst: requests per host that may go at once after a quiet spell.
        idle_timeout, max_claims, partitions_at_once, unavailable_grace, consumer, round_name: see
            :class:`FleetCheckpoints`.
        clock: the clock the worker's loops wait on (default: the coordinator's, else the real one).
    """

    def __init__(
        self,
        fleet: Coordinator | RedisLink,
        crawl: str,
        *,
        rate: float | None = None,
        burst: int = 1,
        idle_timeout: float = 60.0,
        max_claims: int = 5,
        partitions_at_once: int = 4,
        unavailable_grace: float = 30.0,
        consumer: str | None = None,
        token_key: str | bytes | Sequence[str | bytes] | TokenCipher | None = None,
        round_name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        if clock is None:
            clock = SYSTEM_CLOCK if isinstance(fleet, RedisLink) else fleet.clock
        self.clock = clock
        self.link = fleet if isinstance(fleet, RedisLink) else fleet.link
        if isinstance(fleet, RedisLink):
            if token_key is None:
                raise UsageError(
                    "a fleet crawl seals its positions with the fleet's key: pass token_key= (the key every "
                    "worker has in OAUTHPW_FLEET_KEY), or a Coordinator"
                )
            cipher = token_key if isinstance(token_key, TokenCipher) else TokenCipher(token_key)
        else:
            cipher = fleet.cipher
        self.crawl = crawl
        self.rate = rate
        self.checkpoints = FleetCheckpoints(
            self.link,
            crawl,
            cipher=cipher,
            consumer=consumer,
            idle_timeout=idle_timeout,
            max_claims=max_claims,
            partitions_at_once=partitions_at_once,
            unavailable_grace=unavailable_grace,
            round_name=round_name,
            clock=clock,
        )
        # max_wait bounds one reservation; a longer shared pause is waited for in steps.
        self._limiter = HostRateLimiter(self.link, rate=rate, burst=burst, max_wait=60.0, clock=clock) if rate else None

    def governors(self, clock: Clock = SYSTEM_CLOCK) -> Callable[[str], SharedHostGovernor]:
        """A factory of shared per-host governors for :class:`~oauthpw_async.crawler.engine.CrawlEngine`."""

        def make(host: str) -> SharedHostGovernor:
            return SharedHostGovernor(host, HostGovernor(self.rate, clock), self.link, self._limiter)

        return make

    async def run(
        self,
        crawler: Crawler,
        tokens: TokenSource,
        sink: Sink,
        *,
        session: aiohttp.ClientSession | None = None,
        concurrency: int = 16,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
        on_progress: Callable[[CrawlStats], None] | None = None,
    ) -> CrawlStats:
        """Crawl the partitions this worker claims into ``sink`` until the fleet has none left.

        The returned stats count this worker's pages and records; their ``complete`` and
        ``incomplete`` are the whole fleet's. Accepts the engine's options (see
        :meth:`Crawler.crawl <oauthpw_async.crawler.Crawler.crawl>`).

        An incremental crawler runs one round: each partition from the cursor the fleet committed,
        committed again (fenced, with its last position) when the partition finished complete.

        Raises:
            CrawlStateLost: Redis lost the crawl's state while it ran.
        """
        from ..crawler.engine import CrawlEngine

        engine = CrawlEngine(
            crawler,
            tokens,
            session=session,
            concurrency=concurrency,
            state=self.checkpoints,
            retry=retry,
            timeout=timeout,
            on_progress=on_progress,
            governors=self.governors(tokens.clock),
            scheduler=self.checkpoints,
        )
        return await engine.run(sink)

    async def status(self) -> FleetStatus:
        """The fleet's view of the crawl: every partition's state, position, owner and claims."""
        return await self.checkpoints.queue.status()

    async def requeue_failed(self, names: Iterable[str] | None = None) -> list[str]:
        """Queue the crawl's failed partitions (or those of ``names`` that failed) again; returns their names.

        Fix what failed them first. A partition that failed mid-walk (an API error) resumes from
        its last checkpoint, so the records already written are not read again; one walked to its
        end but incomplete (a page budget, a loop) is read again from its start. Claim counts and
        reasons are cleared. Safe while workers run (they claim them); otherwise start workers again.
        """
        wanted = None if names is None else set(names)
        status = await self.status()
        failed = [p for p in status.partitions if p.state == "failed" and (wanted is None or p.name in wanted)]
        return await self.checkpoints.queue.requeue((p.name, _walked_to_end(p.position)) for p in failed)

    async def drop(self) -> None:
        """Forget the crawl in Redis (queue, positions, its fingerprint), to run it again from the start.

        Run it while no worker of the crawl is running.
        """
        await self.checkpoints.queue.drop()
        await self.link.call(self.link.client.delete([self.checkpoints._meta]))
