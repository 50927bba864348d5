"""Crawlers the fleet crawl tests run, in the test process and as ``--crawler tests.fleet.crawlers:Name``."""

from __future__ import annotations

from collections.abc import Iterable

from oauthpw_async.crawler import Crawler, Cursor, Partition

#: The DemoAPI projects the crawlers read, one partition each.
PROJECTS = tuple(f"p{i}" for i in range(8))
#: Records per page (the DemoAPI's page size is capped at this too).
PAGE = 20


class FleetItems(Crawler):
    """Eight partitions read page by page with a cursor (one request in flight per partition)."""

    path = "/api/cursor/items"
    records_path = "data"
    pagination = Cursor("meta.next_cursor", has_more_path="meta.has_more")

    def partitions(self) -> Iterable[Partition]:
        return [Partition(p, {"project": p, "limit": str(PAGE)}) for p in PROJECTS]


class OtherItems(FleetItems):
    """Another crawl (another class): may not join a fleet crawl of FleetItems under the same name."""


class BudgetedFleetItems(FleetItems):
    """Stops each partition after two pages: a fleet crawl that finishes incomplete."""

    max_pages = 2
