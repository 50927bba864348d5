"""Offset paging with a total over a server that caps the page size: no range is jumped for good.

Over real HTTP against the demo API, whose offset style serves at most ``max_page_size`` rows and
can answer chosen pages empty (rows hidden by permissions, as ServiceNow's ACLs do).
"""

from __future__ import annotations

from typing import Any

import pytest

from oauthpw_async import TokenProvider
from oauthpw_async.crawler import Crawler, ListSink, Offset, Partition
from oauthpw_async.testing import AuthServerState, LocalServer
from oauthpw_async.testing.api import DemoAPI

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Capped(Crawler):
    """Asks for 500 a page; the server serves 100."""

    path = "/api/offset/items"
    records_path = "items"
    pagination = Offset(total_path="total", page_size=500)
    primary_key = "id"

    def partitions(self) -> list[Partition]:
        return [Partition("alpha", {"project": "alpha"})]


async def crawl(crawler: Crawler, api: DemoAPI) -> tuple[list[Any], Any]:
    async with LocalServer(AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        crawler.base_url = server.base_url
        sink = ListSink()
        stats = await crawler.crawl(tokens, sink)
        return sink.records, stats


@pytest.mark.parametrize("parallel", [1, 4], ids=["sequential", "parallel"])
@pytest.mark.parametrize("hidden", [{0}, {0, 1}, {0, 6}, {2, 3}], ids=str)
async def test_pages_answered_empty_do_not_make_the_crawl_jump_the_rows_behind_them(
    parallel: int, hidden: set[int]
) -> None:
    class Crawl(Capped):
        parallel_pages = parallel

    api = DemoAPI(projects=("alpha",), per_project=1000, max_page_size=100, empty_page_at=frozenset(hidden))
    records, stats = await crawl(Crawl(), api)
    # Only the rows the server hid are missing, not those a step of the 500 asked jumped.
    served = [i for i in range(1000) if i // 100 not in hidden]
    assert sorted(r["id"] for r in records) == served
    assert stats.incomplete == {"alpha": [f"{len(served)} of 1000 announced records were read"]}
