"""Crawls never lose a record silently: consumers that leave, two runs on one file, foreign state, full disks.

Crawls run over real HTTP against the local server; locking between processes is tested
with real OS processes.
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import anyio
import orjson
import pytest

from oauthpw_async import HTTPStatusError, RetryPolicy, TokenProvider
from oauthpw_async.crawler import Crawler, Cursor, Partition
from oauthpw_async.testing import AuthServerState, LocalServer
from oauthpw_async.testing.api import ApiFault, DemoAPI

pytestmark = pytest.mark.anyio

#: A hang guard only (a broken exit would block forever), never a timing assertion.
HANG = 60


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the crawl engine runs on asyncio


class Projects(Crawler):
    path = "/api/cursor/items"
    records_path = "data"
    pagination = Cursor("meta.next_cursor", has_more_path="meta.has_more")

    def partitions(self) -> list[Partition]:
        return [Partition(p, {"project": p, "limit": "20"}) for p in ("alpha", "beta", "gamma")]


def crawl_tasks() -> list[asyncio.Task[Any]]:
    """The crawl's tasks still running (the server's handlers are not counted)."""
    running = []
    for task in asyncio.all_tasks():
        name = getattr(task.get_coro(), "__qualname__", "")
        if not task.done() and name.startswith(("Crawler.", "CrawlEngine.")):
            running.append(task)
    return running


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What the event loop would log as lost ("Task exception was never retrieved"...); must stay empty."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    yield seen
    gc.collect()
    loop.set_exception_handler(previous)


def project_of(record_id: int, api: DemoAPI) -> str:
    return api.projects[record_id // api.per_project]


def committed(state_file: Any) -> dict[str, int]:
    """Pages saved per partition."""
    return {name: e["pages"] for name, e in orjson.loads(state_file.read_bytes())["partitions"].items()}


# --- 1. records(): every way out of the loop stops and awaits the crawl ----------------------------


async def _consume(records: AsyncIterator[Any], taken: list[int], stop_at: int, *, fail: bool = False) -> None:
    """Take records until ``stop_at``, then break (or raise), closing the iterator as `aclosing` does."""
    async with aclosing(records):
        async for record in records:
            taken.append(record["id"])
            if len(taken) == stop_at:
                if fail:
                    raise LookupError("the consumer failed")
                break


def _assert_stopped_behind_consumer(api: DemoAPI, taken: list[int], state_file: Any) -> None:
    assert crawl_tasks() == []  # returned only once the crawl had stopped
    per_partition = Counter(project_of(i, api) for i in taken)
    for name, pages in committed(state_file).items():
        # At-least-once: no position moved past a record the consumer did not take.
        assert pages * 20 <= per_partition[name], (name, pages, per_partition)


@pytest.mark.parametrize("how", ["break", "raise", "aclose", "cancel_scope", "task_cancel"])
async def test_records_returns_after_the_consumer_leaves_however_it_leaves(
    how: str, tmp_path: Any, loop_errors: list[dict[str, Any]]
) -> None:
    api = DemoAPI(per_project=600, max_page_size=20)
    state_file = tmp_path / "state.json"
    taken: list[int] = []
    async with LocalServer(AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        crawler = Projects(base_url=server.base_url)
        with anyio.fail_after(HANG):
            records = crawler.records(tokens, concurrency=4, state=str(state_file))
            if how == "break":
                await _consume(records, taken, 150)
            elif how == "raise":
                with pytest.raises(LookupError):
                    await _consume(records, taken, 150, fail=True)
            elif how == "aclose":
                for _ in range(150):
                    taken.append((await anext(records))["id"])
                await records.aclose()
            elif how == "cancel_scope":
                with anyio.CancelScope() as scope:
                    async for record in records:
                        taken.append(record["id"])
                        if len(taken) == 150:
                            scope.cancel()
                assert scope.cancelled_caught
            else:

                async def consumer() -> None:
                    async for record in records:
                        taken.append(record["id"])
                        if len(taken) == 150:
                            asyncio.current_task().cancel()  # type: ignore[union-attr]

                task = asyncio.ensure_future(consumer())
                await asyncio.wait([task])
                assert task.cancelled()
            _assert_stopped_behind_consumer(api, taken, state_file)
            served = api.counts["list:200"]
        # A resumed crawl (the same records() on the same state) delivers the rest.
        with anyio.fail_after(HANG):
            rest = [r["id"] async for r in crawler.records(tokens, concurrency=4, state=str(state_file))]
    assert set(taken) | set(rest) == api.expected_ids()
    assert api.counts["list:200"] > served
    assert loop_errors == []


async def test_records_dropped_without_aclose_stops_the_crawl_once_collected(
    tmp_path: Any, loop_errors: list[dict[str, Any]]
) -> None:
    api = DemoAPI(per_project=2000, max_page_size=20)
    taken: list[int] = []
    async with LocalServer(AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        crawler = Projects(base_url=server.base_url)
        with anyio.fail_after(HANG):
            # A plain `async for ... break` with no aclosing(): the generator is only dropped.
            async for record in crawler.records(tokens, concurrency=4):
                taken.append(record["id"])
                if len(taken) == 100:
                    break
            gc.collect()
            # The loop's async-generator hook closes the dropped generator in a task of its own.
            for _ in range(10_000):
                if not crawl_tasks():
                    break
                await asyncio.sleep(0)
            assert crawl_tasks() == []
    assert len(taken) == 100 and loop_errors == []


async def test_records_with_a_failing_partition_raises_the_failure_and_stops_the_others(
    loop_errors: list[dict[str, Any]],
) -> None:
    api = DemoAPI(per_project=2000, max_page_size=20)
    taken: list[int] = []
    async with LocalServer(AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        crawler = Projects(base_url=server.base_url)

        async def consume() -> None:
            async with aclosing(crawler.records(tokens, concurrency=4, retry=RetryPolicy(max_attempts=1))) as records:
                async for record in records:
                    taken.append(record["id"])
                    if len(taken) == 30:
                        api.inject(ApiFault("status", status=404))

        with anyio.fail_after(HANG), pytest.raises(HTTPStatusError) as failure:
            await consume()
        assert failure.value.status == 404 and len(taken) >= 30
        assert crawl_tasks() == []
    assert loop_errors == []


async def test_records_consumer_leaving_after_the_crawl_failed_loses_no_error_in_the_log(
    loop_errors: list[dict[str, Any]],
) -> None:
    api = DemoAPI(per_project=2000, max_page_size=20)

    def progress_display_fails(stats: Any) -> None:
        raise RuntimeError("the progress display broke")

    async with LocalServer(AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        crawler = Projects(base_url=server.base_url)
        with anyio.fail_after(HANG):
            async with aclosing(crawler.records(tokens, concurrency=4, on_progress=progress_display_fails)) as records:
                # 21 records: the first page is taken, so the crawl commits it and fails (in
                # on_progress) while the consumer holds a record and awaits nothing.
                for _ in range(21):
                    await anext(records)
                for _ in range(10_000):
                    if not crawl_tasks():
                        break
                    await asyncio.sleep(0)
                assert crawl_tasks() == []
            # The consumer left without asking for more: the failure is not raised at it.
        gc.collect()
    assert loop_errors == []
