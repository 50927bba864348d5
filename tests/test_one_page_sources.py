"""Next-link sources whose last page simply has no next link: one page is a complete partition.

Graph, Confluence and most next-link APIs leave the link out on their last page and have no end
flag. A source that fits on one page (every quiet incremental run) must finish complete and
advance its cursor; a wrong path is still caught when the page holds a field named like a next
link. Over real HTTP against a small local server whose next-link field is configurable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oauthpw_async import StaticToken
from oauthpw_async.crawler import Crawler, Cursor, ListSink, NextUrl, ODataNextLink, Partition

PAGE = 25
EPOCH = 1_700_000_000

#: (strategy, where the server puts the next link, where it puts the records)
STYLES: dict[str, tuple[Any, tuple[str, ...], str]] = {
    "confluence": (NextUrl("_links.next", base_path="_links.base"), ("_links", "next"), "results"),
    "graph": (ODataNextLink(), ("@odata.nextLink",), "value"),
    "plain": (NextUrl("nextPageUrl"), ("nextPageUrl",), "items"),
}


@asynccontextmanager
async def source(style: str, updated: list[int]) -> AsyncIterator[str]:
    """Records ``id`` 0..n-1 with the given update times, ``?since=`` filtered, ``PAGE`` per page."""
    _, link_at, records_at = STYLES[style]

    async def page(request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        start = int(request.query.get("start", "0"))
        rows = sorted((t, i) for i, t in enumerate(updated) if t >= since)
        chunk = rows[start : start + PAGE]
        body: dict[str, Any] = {records_at: [{"id": i, "updated": t} for t, i in chunk]}
        if style == "confluence":
            body["_links"] = {"base": str(request.url.origin())}
        if start + PAGE < len(rows):
            nxt = f"/items?since={since}&start={start + PAGE}"
            if style != "confluence":
                nxt = str(request.url.origin()) + nxt
            holder = body
            for key in link_at[:-1]:
                holder = holder.setdefault(key, {})
            holder[link_at[-1]] = nxt
        return web.json_response(body, headers={"Date": "Tue, 14 Nov 2023 22:13:20 GMT"})

    app = web.Application()
    app.router.add_get("/items", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def crawler_for(style: str, *, incremental: bool) -> Crawler:
    strategy, _, records_at = STYLES[style]

    class Items(Crawler):
        path = "/items"
        records_path = records_at
        pagination = strategy
        primary_key = "id"

    if not incremental:
        return Items()

    class Synced(Items):
        updated_field = "updated"

        def changed_since(self, partition: Partition, since: datetime) -> dict[str, str]:
            return {"since": str(int(since.timestamp()))}

    return Synced()


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(style=st.sampled_from(sorted(STYLES)), n=st.integers(0, 3 * PAGE))
def test_a_source_without_an_end_flag_is_complete_at_any_size(style: str, n: int) -> None:
    async def main() -> None:
        async with source(style, [EPOCH + i for i in range(n)]) as base:
            crawler = crawler_for(style, incremental=False)
            crawler.base_url = base
            sink = ListSink()
            stats = await crawler.crawl(StaticToken("t"), sink)
        assert stats.complete, stats.incomplete
        assert sorted(r["id"] for r in sink.records) == list(range(n))

    anyio.run(main)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_quiet_incremental_runs_of_a_one_page_source_advance_the_cursor(style: str, tmp_path: Path) -> None:
    updated = [EPOCH - 1000 + i for i in range(10)]
    state = str(tmp_path / "state.json")

    async def main() -> None:
        async with source(style, updated) as base:
            crawler = crawler_for(style, incremental=True)
            crawler.base_url = base
            first = await crawler.crawl(StaticToken("t"), ListSink(), state=state)
            assert first.complete, first.incomplete
            assert first.partitions["default"].sync.committed
            updated[3] = EPOCH - 100  # one change, then a quiet run
            second_sink = ListSink()
            second = await crawler.crawl(StaticToken("t"), second_sink, state=state)
            assert second.complete and second.partitions["default"].sync.committed
            assert [r["id"] for r in second_sink.records] == [3]
            quiet = await crawler.crawl(StaticToken("t"), ListSink(), state=state)
            assert quiet.complete and quiet.partitions["default"].sync.committed
            cursor = quiet.partitions["default"].sync.cursor_after
            # the server's time (its Date header) at the run's start: every record stamped before it was read
            assert cursor is not None and datetime.fromisoformat(cursor) == datetime.fromtimestamp(EPOCH, UTC)

    anyio.run(main)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_a_wrong_next_link_path_is_still_reported(style: str) -> None:
    """The page holds a field named like a next link that the strategy does not read: possibly incomplete."""

    async def main() -> None:
        async with source(style, [EPOCH + i for i in range(2 * PAGE)]) as base:
            crawler = crawler_for(style, incremental=False)
            crawler.base_url = base
            type(crawler).pagination = NextUrl("links.nxt")
            stats = await crawler.crawl(StaticToken("t"), ListSink())
        assert not stats.complete
        (problem,) = stats.incomplete["default"]
        assert "'links.nxt' was not on the page" in problem and "looks like a next link" in problem

    anyio.run(main)


def test_a_cursor_strategy_still_needs_its_field_unless_told() -> None:
    assert Cursor().missing_is_end is False and NextUrl().missing_is_end is True
    assert ODataNextLink().missing_is_end is True
