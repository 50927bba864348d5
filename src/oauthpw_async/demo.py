"""The built-in demo: its data source, its plan (dataset, injected faults) and its completeness check.

``oauthpw-async demo`` serves the plan's authorization server and API on 127.0.0.1 and crawls
:class:`DemoItems` from it; the command itself only parses options and prints.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
import orjson

from .crawler import Crawler, Offset, Partition
from .testing import AuthServerState, Quirks
from .testing.api import ApiFault, DemoAPI

__all__ = ["DemoItems", "DemoOutcome", "DemoPlan", "demo_files", "plan_demo", "verify_output"]

#: Where in the crawl (as a fraction of its API requests) each fault is injected.
FAULTS: tuple[tuple[float, ApiFault], ...] = (
    (0.15, ApiFault("status", status=429, retry_after="1")),
    (0.35, ApiFault("status", status=500)),
    (0.55, ApiFault("status", status=503, retry_after="0.5")),
    (0.75, ApiFault("status", status=502)),
)


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


@attrs.define
class DemoPlan:
    """The demo's servers: a dataset, rotating refresh tokens, and faults at set points."""

    api: DemoAPI
    auth: AuthServerState
    token_lifetime: float

    def describe(self) -> str:
        """One line saying what the demo is about to do."""
        return (
            f"crawling {self.api.total:,} records with one detail fetch each; tokens live "
            f"{self.token_lifetime:g}s (rotating refresh tokens); a 429, a 500, a 503 and a 502 are injected"
        )


def plan_demo(records: int, token_lifetime: float) -> DemoPlan:
    """The demo's dataset (``records`` over three projects) with its faults scheduled."""
    per_project = max(1, records // 3)
    api = DemoAPI(per_project=per_project, max_page_size=100, latency=0.015)
    requests = per_project * 3 * 1.01  # one detail fetch per record plus one list request per page
    pending = [(int(requests * at), fault) for at, fault in FAULTS]

    def inject(served: int) -> None:
        if pending and served >= pending[0][0]:
            api.inject(pending.pop(0)[1])

    api.on_request = inject
    auth = AuthServerState(token_lifetime=token_lifetime, quirks=Quirks(rotate_refresh_tokens=True))
    return DemoPlan(api=api, auth=auth, token_lifetime=token_lifetime)


def demo_files(out_dir: Path, *, resume: bool) -> tuple[Path, Path]:
    """The records file and the state file in ``out_dir``; both removed first unless resuming."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl, state = out_dir / "demo-records.jsonl", out_dir / "demo-state.json"
    if not resume:
        for f in (jsonl, state):
            f.unlink(missing_ok=True)
    return jsonl, state


@attrs.frozen
class DemoOutcome:
    """What the demo's output file holds, against the dataset."""

    distinct: int
    expected: int
    #: Every record of the dataset is in the file (duplicates from a resume are allowed).
    complete: bool


def verify_output(jsonl: Path, api: DemoAPI) -> DemoOutcome:
    """Check the output file against the dataset: every record id present, none unknown."""
    ids = {orjson.loads(line)["id"] for line in jsonl.read_bytes().splitlines()} if jsonl.exists() else set()
    expected = api.expected_ids()
    return DemoOutcome(distinct=len(ids), expected=len(expected), complete=ids == expected)
