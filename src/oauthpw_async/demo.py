"""The built-in demo data source, crawled by ``oauthpw-async demo`` against the local server."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .crawler import Crawler, Offset, Partition

__all__ = ["DemoItems"]


class DemoItems(Crawler):
    """Three projects, paged by offset with a total, one detail fetch per record."""

    path = "/api/offset/items"
    records_path = "items"
    total_path = "total"
    pagination = Offset(total_path="total", page_size=100)
    projects: tuple[str, ...] = ("alpha", "beta", "gamma")

    def partitions(self) -> Iterable[Partition]:
        """One partition per project."""
        return [Partition(p, {"project": p}) for p in self.projects]

    def detail(self, record: Any) -> str:
        """Fetch each item's detail document."""
        return f"/api/items/{record['id']}"
