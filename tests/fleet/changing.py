"""Several changing sources behind one local server, and an incremental crawler with one partition per source.

Each source is a :class:`~oauthpw_async.testing.changes.ChangesAPI` (ServiceNow style: offset pages
through ``Link`` headers, a ``sys_updated_on>=`` filter) mounted under its own prefix. Records are
tagged with their source, so a replica is built per source from every worker's output.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from oauthpw_async.crawler import Crawler, Page, Partition
from oauthpw_async.testing import AuthServerState
from oauthpw_async.testing.changes import ChangesAPI, replay

#: The sources, one partition each.
SOURCES = ("s0", "s1", "s2", "s3")
#: Records per page asked (the sources cap pages at this too).
PAGE = 20
#: The sources' server clock starts here (epoch seconds), after every base record's update time.
CLOCK_START = 1_700_100_000.0


class Sources:
    """The changing sources, on one server clock the test steps (never the wall clock)."""

    def __init__(self, records: int, *, latency: float = 0.0) -> None:
        self.time = CLOCK_START
        self.apis = {
            name: ChangesAPI(
                records=records, spacing=30, max_page_size=PAGE, prefix=f"/{name}", latency=latency, now=self.now
            )
            for name in SOURCES
        }

    def now(self) -> float:
        return self.time

    def __call__(self, app: web.Application, auth: AuthServerState) -> None:
        for api in self.apis.values():
            api(app, auth)

    def requests(self) -> int:
        """Data requests served so far, every source counted."""
        return sum(v for api in self.apis.values() for k, v in api.counts.items() if k != "control")

    def differences(self, outputs: Iterable[Sequence[Any]]) -> dict[str, list[str]]:
        """Per source, how the replica built from ``outputs`` (in order) differs from it; empty: equal."""
        batches = [list(batch) for batch in outputs]
        out = {}
        for name, api in self.apis.items():
            held = replay([[r for r in batch if r.get("src") == name] for batch in batches])
            problems = api.differences(held, deletions=False)  # this style does not show deletions
            if problems:
                out[name] = problems
        return out


class ChangingSources(Crawler):
    """One partition per source, read incrementally by update time (offset pages, as ServiceNow's)."""

    params = {"sysparm_limit": str(PAGE), "sysparm_query": "ORDERBYsys_updated_on^ORDERBYsys_id"}
    records_path = "result"
    pagination = "link_header"
    primary_key = "key"  # the source and its sys_id: sys_ids repeat across sources
    updated_field = "sys_updated_on"
    #: Listed by update time: pages seek from the last update time read, so deletions skip nothing.
    ordered_by_updated = True

    def partitions(self) -> Iterable[Partition]:
        return [Partition(name, path=f"/{name}/api/now/table/incident") for name in SOURCES]

    def changed_since(self, partition: Partition, since: datetime) -> Mapping[str, str]:
        return {"sysparm_query": f"sys_updated_on>={since:%Y-%m-%d %H:%M:%S}^ORDERBYsys_updated_on^ORDERBYsys_id"}

    def parse(self, page: Page) -> Sequence[Any]:
        source = urlsplit(page.url).path.split("/")[1]
        return [{**r, "src": source, "key": f"{source}/{r['sys_id']}"} for r in super().parse(page)]
