"""Fleet crawl workers in one process (fast): claims, fenced positions, completeness, shared politeness.

The multi-process scenarios (kill -9, SIGSTOP, Redis restarted) are in test_crawl_processes.py.
"""

from __future__ import annotations

import base64
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from oauthpw_async import TokenProvider
from oauthpw_async.crawler import ListSink
from oauthpw_async.crawler.checkpoint import fingerprint
from oauthpw_async.crawler.pagination import PageRequest, resolve
from oauthpw_async.errors import StateMismatch, UsageError
from oauthpw_async.fleet import ClaimLost, FleetCheckpoints, FleetCrawl
from oauthpw_async.testing import AuthServerState, LocalServer
from oauthpw_async.testing.api import ApiFault, DemoAPI

from .crawlers import PAGE, PROJECTS, BudgetedFleetItems, FleetItems, OtherItems
from .helpers import TOKEN_KEY, coordinator
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio

PER_PROJECT = 100  # 5 pages of 20 per partition


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the engine's HTTP is aiohttp


def demo_api(**options: Any) -> DemoAPI:
    return DemoAPI(projects=PROJECTS, per_project=PER_PROJECT, max_page_size=PAGE, **options)


@contextlib.asynccontextmanager
async def serving(api: DemoAPI, redis: RedisServer, namespace: str) -> AsyncIterator[tuple[LocalServer, Any, Any]]:
    """The local server with ``api``, a provider logged in to it, and a coordinator."""
    async with (
        LocalServer(AuthServerState(), api=api) as server,
        TokenProvider(server.config()) as tokens,
        coordinator(redis.url, namespace) as fleet,
    ):
        yield server, tokens, fleet


def ids(*sinks: ListSink) -> Counter[int]:
    return Counter(r["id"] for s in sinks for r in s.records)


class Gated:
    """A token source that hands out no token until :attr:`gate` opens: workers claim, then all start at once."""

    def __init__(self, tokens: TokenProvider) -> None:
        self.tokens = tokens
        self.gate = anyio.Event()
        self.clock = tokens.clock

    async def get(self) -> Any:
        await self.gate.wait()
        return await self.tokens.get()

    async def authorization(self) -> str:
        return (await self.get()).authorization

    def invalidate(self, token: Any = None) -> bool:
        return self.tokens.invalidate(token)


class Two:
    """What :func:`run_two` leaves: each worker, its stats and sink, and the seconds from the start to the end."""

    def __init__(self, workers: list[FleetCrawl]) -> None:
        self.workers = workers
        self.stats: list[Any] = [None, None]
        self.sinks = [ListSink(), ListSink()]
        self.elapsed = 0.0


async def run_two(fleet: Any, server: LocalServer, tokens: TokenProvider, **options: Any) -> Two:
    """Two workers of one crawl, each with its own governors and sink, holding 4 partitions each.

    Both claim their partitions before either sends a request, so the split is even however
    slowly the second one starts; ``elapsed`` counts from that moment.
    """
    two = Two([FleetCrawl(fleet, "items", consumer=f"w{i}", partitions_at_once=4, **options) for i in range(2)])
    workers = two.workers
    gated = Gated(tokens)

    async def work(i: int) -> None:
        two.stats[i] = await workers[i].run(FleetItems(base_url=server.base_url), gated, two.sinks[i])

    async with anyio.create_task_group() as tg:
        for i in range(2):
            tg.start_soon(work, i)
        with anyio.fail_after(60):
            while (await workers[0].status()).count("running") < len(PROJECTS):
                await anyio.sleep(0.01)
        start = anyio.current_time()
        gated.gate.set()
    two.elapsed = anyio.current_time() - start
    assert [len(w.checkpoints.finished) for w in workers] == [4, 4]
    return two


async def test_two_workers_share_the_partitions_and_the_fleet_is_complete(
    redis_server: RedisServer, namespace: str
) -> None:
    api = demo_api(latency=0.005)
    async with serving(api, redis_server, namespace) as (server, tokens, fleet):
        two = await run_two(fleet, server, tokens)
        status = await two.workers[0].status()
    seen = ids(*two.sinks)
    assert set(seen) == api.expected_ids() and max(seen.values()) == 1  # no death: no duplicate
    walked = [set(w.checkpoints.finished) for w in two.workers]
    assert walked[0].isdisjoint(walked[1]) and walked[0] | walked[1] == set(PROJECTS)
    for stats in two.stats:  # each worker's counters are its own; completeness is the fleet's
        assert stats.complete and stats.partitions_done == len(PROJECTS) and stats.records == api.total // 2
    assert status.complete
    assert {p.position["records"] for p in status.partitions} == {PER_PROJECT}
    assert {p.position["pages"] for p in status.partitions} == {PER_PROJECT // PAGE}


async def test_a_worker_joining_a_finished_crawl_has_nothing_to_do(redis_server: RedisServer, namespace: str) -> None:
    api = demo_api()
    async with serving(api, redis_server, namespace) as (server, tokens, fleet):
        first = ListSink()
        await FleetCrawl(fleet, "items").run(FleetItems(base_url=server.base_url), tokens, first)
        requests = sum(api.counts.values())
        late = ListSink()
        stats = await FleetCrawl(fleet, "items").run(FleetItems(base_url=server.base_url), tokens, late)
    assert len(first.records) == api.total and late.records == []
    assert stats.complete and stats.records == 0 and sum(api.counts.values()) == requests


async def test_an_incomplete_partition_is_failed_with_its_problems_for_every_worker(
    redis_server: RedisServer, namespace: str
) -> None:
    api = demo_api()
    async with serving(api, redis_server, namespace) as (server, tokens, fleet):
        stats = await FleetCrawl(fleet, "budget").run(BudgetedFleetItems(base_url=server.base_url), tokens, ListSink())
        status = await FleetCrawl(fleet, "budget").status()
    assert not stats.complete and set(stats.incomplete) == set(PROJECTS)
    assert all("page budget" in " ".join(v) for v in stats.incomplete.values())
    assert status.finished and not status.complete
    assert {p.state for p in status.partitions} == {"failed"}
    assert all("page budget" in (p.reason or "") for p in status.partitions)


async def test_another_crawl_under_the_same_name_is_refused(redis_server: RedisServer, namespace: str) -> None:
    api = demo_api()
    async with serving(api, redis_server, namespace) as (server, tokens, fleet):
        await FleetCrawl(fleet, "items").run(FleetItems(base_url=server.base_url), tokens, ListSink())
        with pytest.raises(StateMismatch, match="belongs to another crawl"):
            await FleetCrawl(fleet, "items").run(OtherItems(base_url=server.base_url), tokens, ListSink())
        await FleetCrawl(fleet, "items").drop()  # then it may start over under that name
        sink = ListSink()
        await FleetCrawl(fleet, "items").run(OtherItems(base_url=server.base_url), tokens, sink)
        assert len(sink.records) == api.total


async def test_a_taken_over_partition_is_stopped_and_its_late_write_refused(
    redis_server: RedisServer, namespace: str
) -> None:
    """A worker whose claim was taken over stops that partition at its next write; the new owner's position stands."""
    async with coordinator(redis_server.url, namespace) as fleet:
        slow = FleetCheckpoints(
            fleet.link, "items", cipher=fleet.cipher, consumer="slow", idle_timeout=0.2, partitions_at_once=1
        )
        fast = FleetCheckpoints(
            fleet.link, "items", cipher=fleet.cipher, consumer="fast", idle_timeout=0.2, partitions_at_once=1
        )
        crawler = FleetItems(base_url="http://127.0.0.1:9")
        fp = fingerprint(crawler, resolve(crawler.pagination), list(PROJECTS), ListSink())
        await slow.open(fp)
        await fast.open(fp)
        (claim,) = await slow.queue.claim()
        slow._adopt(claim)
        await slow.save(claim.partition, PageRequest("/page2"), 1, records=20)
        await anyio.sleep(0.3)  # silent past the idle timeout: taken over
        (taken,) = await fast.queue.claim()
        fast._adopt(taken)
        assert taken.partition == claim.partition and fast.resume_from(taken.partition) == PageRequest("/page2")
        await fast.save(taken.partition, PageRequest("/page3"), 2, records=40)
        with pytest.raises(ClaimLost):
            await slow.save(claim.partition, PageRequest("/page2b"), 2, records=40)
        await fast.refresh()
        assert fast.resume_from(claim.partition) == PageRequest("/page3") and fast.pages(claim.partition) == 2


async def test_positions_are_sealed_at_rest_and_resume_in_another_worker(
    redis_server: RedisServer, namespace: str
) -> None:
    """A next link that echoes a token (Graph-style ``access_token=``) is unreadable in Redis, yet resumes whole."""
    secret = "EAAGm0PX4ZCpsBA-echoed-token-0123456789"
    nxt = PageRequest("https://graph.example.com/v19/items", (("access_token", secret), ("after", "QVFIUj")))
    async with coordinator(redis_server.url, namespace) as fleet:
        crawler = FleetItems(base_url="http://127.0.0.1:9")
        fp = fingerprint(crawler, resolve(crawler.pagination), list(PROJECTS), ListSink())
        first = FleetCheckpoints(fleet.link, "items", cipher=fleet.cipher, consumer="first", idle_timeout=60.0)
        await first.open(fp)
        (claim,) = await first.queue.claim()
        first._adopt(claim)
        await first.save(claim.partition, nxt, 3, records=60)
        raw = b"".join((await fleet.link.client.hgetall(first.queue._pos)).values())
        for form in (secret.encode(), base64.b64encode(secret.encode()), secret.encode().hex().encode(), b"QVFIUj"):
            assert form not in raw
        await first.queue.release(claim)  # handed on: another worker resumes it from the sealed position
        second = FleetCheckpoints(fleet.link, "items", cipher=fleet.cipher, consumer="second", idle_timeout=60.0)
        await second.open(fp)
        (taken,) = [c for c in await second.queue.claim(len(PROJECTS)) if c.partition == claim.partition]
        second._adopt(taken)
        assert second.resume_from(taken.partition) == nxt
        assert second.pages(taken.partition) == 3 and second.records(taken.partition) == 60
        status = await FleetCrawl(fleet.link, "items", token_key=TOKEN_KEY).status()  # what `fleet status` reads
        assert next(p for p in status.partitions if p.name == claim.partition).position["pages"] == 3
        with pytest.raises(UsageError, match="seals its positions"):
            FleetCrawl(fleet.link, "items")  # a plain link and no key: refused, never stored in plain


async def test_the_rate_limit_holds_for_the_fleet_not_per_worker(redis_server: RedisServer, namespace: str) -> None:
    api = DemoAPI(projects=PROJECTS, per_project=2 * PAGE, max_page_size=PAGE)  # 2 pages each: 16 requests
    rate = 16.0
    async with serving(api, redis_server, namespace) as (server, tokens, fleet):
        await tokens.get()
        elapsed = (await run_two(fleet, server, tokens, rate=rate)).elapsed
    requests = api.counts["list:200"]
    assert requests == 16
    # GCRA with burst 1: the k-th request of the fleet goes no earlier than (k-1)/rate after the first.
    # Two workers with 8 requests each, each limited on its own, would take half as long.
    assert elapsed >= (requests - 1) / rate * 0.99


async def test_a_429_pauses_every_worker_through_redis(redis_server: RedisServer, namespace: str) -> None:
    # 50 pages per partition: each worker has work for the whole pause.
    api = DemoAPI(projects=PROJECTS, per_project=50 * PAGE, max_page_size=PAGE, latency=0.01)
    seen: list[float] = []
    injected: list[float] = []
    retry_after = 1.0

    def on_request(n: int) -> None:
        seen.append(anyio.current_time())
        if len(seen) == 12:  # both workers are crawling; the next answer is the 429
            injected.append(anyio.current_time())
            api.inject(ApiFault("status", status=429, retry_after=str(int(retry_after))))

    api.on_request = on_request
    async with serving(api, redis_server, namespace) as (server, tokens, fleet):
        two = await run_two(fleet, server, tokens)
    assert sorted(s.rate_limit_pauses for s in two.stats) == [0, 1]  # one worker was told, both waited
    limited = injected[0]  # the 429 went out within the API's latency (10 ms) after this
    # Requests already on their way, and the other worker's until it reads the pause (every 0.2 s),
    # may still arrive; then nothing from either worker until the pause is over.
    during = [t for t in seen if limited + 0.4 < t < limited + retry_after - 0.05]
    assert during == [], f"{len(during)} requests during the fleet's pause"
    assert api.counts["fault:status"] == 1 and api.counts["list:200"] == len(PROJECTS) * 50
