"""Incremental crawls run by a fleet (in one process, fast): cursors and runs in flight in Redis, rounds.

The process test (3 worker processes, one SIGKILLed) is in test_incremental_fleet_processes.py.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from oauthpw_async import TokenProvider
from oauthpw_async.crawler import CrawlEngine, ListSink
from oauthpw_async.crawler.pagination import PageRequest
from oauthpw_async.errors import UsageError
from oauthpw_async.fleet import FleetCrawl, SharedStateUnreadable
from oauthpw_async.testing import AuthServerState, LocalServer

from .changing import PAGE, SOURCES, ChangingSources, Sources
from .helpers import coordinator
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio

RECORDS = 200  # per source: 10 pages each in a full round
#: Requests of a full round: each source's pages, and the seek past its last record that finds nothing new.
FULL = len(SOURCES) * (RECORDS // PAGE + 1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the engine's HTTP is aiohttp


@contextlib.asynccontextmanager
async def serving(sources: Sources, redis: RedisServer, namespace: str) -> AsyncIterator[tuple[str, Any, Any]]:
    async with (
        LocalServer(AuthServerState(), api=sources) as server,
        TokenProvider(server.config()) as tokens,
        coordinator(redis.url, namespace) as fleet,
    ):
        yield server.base_url, tokens, fleet


async def round_of(
    fleet: Any, crawler: ChangingSources, tokens: Any, workers: int = 3, name: str | None = None
) -> list[ListSink]:
    """One round: ``workers`` workers of the crawl at once (of one round name), each its own sink."""
    sinks = [ListSink() for _ in range(workers)]
    name = name or secrets.token_hex(4)

    async def work(i: int) -> None:
        worker = FleetCrawl(fleet, "changes", consumer=f"w{i}", partitions_at_once=2, round_name=name)
        await worker.run(crawler, tokens, sinks[i])

    with anyio.fail_after(120):  # only a hang hits this
        async with anyio.create_task_group() as tg:
            for i in range(workers):
                tg.start_soon(work, i)
    return sinks


async def cursors(fleet: Any) -> dict[str, str | None]:
    committed = await FleetCrawl(fleet, "changes").checkpoints.queue.cursors()
    return {name: c.get("cursor") for name, c in committed.items()}


def records(rounds: Sequence[Sequence[ListSink]]) -> list[list[Any]]:
    return [[r for sink in sinks for r in sink.records] for sinks in rounds]


async def test_a_fleet_runs_incremental_rounds_and_an_incomplete_partition_keeps_its_cursor(
    redis_server: RedisServer, namespace: str
) -> None:
    sources = Sources(RECORDS)
    async with serving(sources, redis_server, namespace) as (base, tokens, fleet):
        crawler = ChangingSources(base_url=base)
        first = await round_of(fleet, crawler, tokens)
        full = sources.requests()
        after_first = await cursors(fleet)
        assert set(after_first) == set(SOURCES) and None not in after_first.values()

        # Between the rounds: a few changes everywhere, and in s1 more than one page holds.
        sources.time += 600
        for name, api in sources.apis.items():
            api.update(range(0, 6 * PAGE if name == "s1" else 9, 3))  # s1: 40 records
            api.create(2)
        crawler.max_pages = 2  # s1 now needs 3 pages: it finishes incomplete, the others complete
        second = await round_of(fleet, crawler, tokens)
        after_second = await cursors(fleet)
        status = await FleetCrawl(fleet, "changes").status()
        assert status.round == 2  # three workers joined the finished round: one round began, not three
        assert {p.name for p in status.partitions if p.state == "failed"} == {"s1"}
        assert after_second["s1"] == after_first["s1"]  # incomplete: its cursor stays
        assert all(after_second[n] != after_first[n] for n in SOURCES if n != "s1")  # complete: theirs move

        sources.time += 600
        crawler.max_pages = 1000
        third = await round_of(fleet, crawler, tokens)
        assert (await FleetCrawl(fleet, "changes").status()).complete
    assert sources.differences(records([first, second, third])) == {}
    incremental = sources.requests() - full
    # Rounds 2 and 3 read what changed (and s1's changes again in round 3, from its old cursor):
    # one or a few pages per partition, against 10 per partition in the full round.
    assert incremental <= full * 0.35, (incremental, full)


async def test_a_round_with_nothing_changed_costs_one_page_per_partition(
    redis_server: RedisServer, namespace: str
) -> None:
    sources = Sources(RECORDS)
    async with serving(sources, redis_server, namespace) as (base, tokens, fleet):
        crawler = ChangingSources(base_url=base)
        await round_of(fleet, crawler, tokens)
        full = sources.requests()
        sources.time += 3600
        quiet = await round_of(fleet, crawler, tokens)
    assert sources.requests() - full == len(SOURCES)  # the lookback's few records fit one page
    assert records([quiet]) == [[]]  # re-delivered unchanged: dropped by the recent keys kept in Redis
    assert full == FULL


async def test_a_fleet_round_costs_what_one_process_run_costs(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    def change(sources: Sources) -> None:
        sources.time += 900
        for name, api in sources.apis.items():
            api.update(range(1, 3 * PAGE + 1 if name == "s1" else 5))
            api.create(2)

    costs = {}
    for who in ("fleet", "one process"):
        sources = Sources(RECORDS)
        async with serving(sources, redis_server, namespace + who[0]) as (base, tokens, fleet):
            crawler = ChangingSources(base_url=base)
            outputs = []
            for _ in range(2):
                if outputs:
                    change(sources)
                before = sources.requests()
                if who == "fleet":
                    outputs += await round_of(fleet, crawler, tokens)
                else:
                    outputs.append(ListSink())
                    await crawler.crawl(tokens, outputs[-1], state=str(tmp_path / "state.json"))
            costs[who] = (before, sources.requests() - before)
        assert sources.differences([sink.records for sink in outputs]) == {}
    assert costs["fleet"] == costs["one process"]
    assert costs["fleet"][0] == FULL and costs["fleet"][1] < FULL // 4  # 60 changes in s1 take 4 pages


async def test_a_worker_of_a_finished_round_has_nothing_to_do_and_a_worker_of_a_new_one_begins_it(
    redis_server: RedisServer, namespace: str
) -> None:
    sources = Sources(RECORDS)
    async with serving(sources, redis_server, namespace) as (base, tokens, fleet):
        crawler = ChangingSources(base_url=base)
        await round_of(fleet, crawler, tokens, workers=2, name="monday")
        full = sources.requests()
        late = await round_of(fleet, crawler, tokens, workers=1, name="monday")  # started late: joins it
        assert sources.requests() == full and records([late]) == [[]]
        assert (await FleetCrawl(fleet, "changes").status()).round == 1
        sources.time += 600
        sources.apis["s2"].update([5])
        tuesday = await round_of(fleet, crawler, tokens, workers=1, name="tuesday")
        assert (await FleetCrawl(fleet, "changes").status()).round == 2
    assert [r["key"] for r in records([tuesday])[0]] == [f"s2/{5:032x}"]
    assert sources.requests() - full == len(SOURCES)


async def test_a_partition_walked_to_its_end_by_a_worker_that_died_before_its_commit_is_committed_by_the_next(
    redis_server: RedisServer, namespace: str
) -> None:
    sources = Sources(RECORDS)
    async with serving(sources, redis_server, namespace) as (base, tokens, fleet):
        crawler = ChangingSources(base_url=base)
        dying = FleetCrawl(fleet, "changes", consumer="dying", partitions_at_once=1)

        async def die(*args: Any) -> None:  # the worker stops between its last page and its cursor
            raise OSError(5, "Input/output error")

        dying.checkpoints.queue.commit_cursor = die  # type: ignore[method-assign]
        with pytest.raises(OSError, match="Input/output error"):
            await dying.run(crawler, tokens, ListSink())
        status = await dying.status()
        (walked,) = [p for p in status.partitions if (p.position or {}).get("pages")]
        assert walked.position["next"] is None and "run" in walked.position and walked.state == "queued"
        assert walked.name not in await cursors(fleet)
        before = sources.requests()
        await round_of(fleet, crawler, tokens, workers=1)
        committed = await cursors(fleet)
    assert committed.keys() == set(SOURCES) and committed[walked.name] is not None
    # The walked partition was not read again: the other three were, one full walk each.
    assert sources.requests() - before == FULL // len(SOURCES) * (len(SOURCES) - 1)


async def test_cursors_are_sealed_in_redis_bound_to_their_partition_and_forgotten_by_a_reset(
    redis_server: RedisServer, namespace: str
) -> None:
    sources = Sources(RECORDS)
    async with serving(sources, redis_server, namespace) as (base, tokens, fleet):
        crawler = ChangingSources(base_url=base)
        await round_of(fleet, crawler, tokens)
        full = sources.requests()
        crawl = FleetCrawl(fleet, "changes")
        key = crawl.checkpoints.queue._cursors
        raw = {k.decode(): v for k, v in (await fleet.link.client.hgetall(key)).items()}
        shown = (await cursors(fleet))["s0"]
        assert shown is not None and set(raw) == set(SOURCES)
        stamp = shown.rstrip("Z").encode()
        for form in (stamp, base64.b64encode(stamp), stamp.hex().encode(), b'"cursor"'):
            assert all(form not in value for value in raw.values())
        await fleet.link.client.hset(key, {"s0": raw["s1"]})  # another partition's cursor, sealed and whole
        with pytest.raises(SharedStateUnreadable, match="cursor of partition 's0'"):
            await crawl.checkpoints.queue.cursors()
        await crawl.drop()  # what `fleet reset` runs: cursors go with the positions
        await round_of(fleet, crawler, tokens)
    assert sources.requests() - full == full  # read in full again


async def test_an_incremental_crawler_needs_a_store_that_keeps_cursors(tmp_path: Any) -> None:
    class PositionsOnly:  # a position store of the engine's seam, without cursors
        async def open(self, fingerprint: Any = None) -> None: ...
        def close(self) -> None: ...
        def is_done(self, partition: str) -> bool:
            return False

        def resume_from(self, partition: str) -> PageRequest | None:
            return None

        def pages(self, partition: str) -> int:
            return 0

        def records(self, partition: str) -> int:
            return 0

        def problems(self, partition: str) -> list[str]:
            return []

        async def save(self, *args: Any, **kwargs: Any) -> None: ...

    async with TokenProvider(LocalServer().config()) as tokens:
        with pytest.raises(UsageError, match="cursors need a store"):
            CrawlEngine(ChangingSources(base_url="http://127.0.0.1:9"), tokens, state=PositionsOnly())
