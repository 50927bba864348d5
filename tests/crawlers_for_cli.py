"""Crawlers the CLI tests load with --crawler tests.crawlers_for_cli:Name."""

from __future__ import annotations

from oauthpw_async.crawler import Crawler, Cursor, NextUrl, Partition


class SlowCursorItems(Crawler):
    path = "/api/cursor/items"
    records_path = "data"
    pagination = Cursor("meta.next_cursor", has_more_path="meta.has_more")

    def partitions(self):
        return [Partition(p, {"project": p, "limit": "20"}) for p in ("alpha", "beta", "gamma")]


class BudgetedItems(SlowCursorItems):
    """Stops each partition after two pages: a crawl that finishes incomplete."""

    max_pages = 2


class GraphFeed(Crawler):
    """Graph-style paging: the next link is a whole URL (which the API may fill with the caller's token)."""

    path = "/v1/feed"
    records_path = "data"
    pagination = NextUrl("paging.next")
    params = {"fields": "id,message"}
