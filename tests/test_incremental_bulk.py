"""A bulk update stamped at one moment is read once, not by every later run.

The cursor of a complete run is the server's time at its start (its ``Date``), so the records a
bulk update stamped before it are outside the next filter once the lookback has passed. Without a
``Date`` header (or with ``cursor_at_server_time = False``) the cursor stays at the newest record's
time, the bound that needs no trust in the server's clock. Property-based over the bulk's size,
the gap between runs and the server's clock offset, against the mutable local API on a hand-driven
server clock; after every run the replica equals the source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oauthpw_async.testing.changes import ChangesAPI

from .test_incremental import Runs, ServiceNow, frozen, only, serving

pytestmark = pytest.mark.anyio
START = 1_715_000_000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class ByClientClock(ServiceNow):
    cursor_at_server_time = False


async def test_a_bulk_update_is_read_once_and_not_an_hour_later_again(tmp_path: Path) -> None:
    now, clock = frozen(START)
    api = ChangesAPI(records=300, now=clock)
    async with serving(api) as (server, tokens):
        runs = Runs(ServiceNow, server, tokens, tmp_path / "state.json")
        await runs.run()
        now[0] += 60
        bulk = api.update(list(range(100, 200)))  # 100 records stamped in one second
        now[0] += 600  # more than the lookback (5 minutes) later
        written, stats = await runs.run()
        assert len(written) == 100 and only(stats).sync.committed
        for _ in range(3):  # an hour later, and every hour after
            now[0] += 3600
            later, stats = await runs.run()
            assert later == [] and only(stats).sync.redelivered == 0 and stats.requests == 1
        assert api.differences(runs.held(), deletions=False) == []
    assert len(bulk) == 100


async def test_without_trusting_the_server_clock_the_bulk_is_read_again_and_dropped(tmp_path: Path) -> None:
    now, clock = frozen(START)
    api = ChangesAPI(records=300, now=clock)
    async with serving(api) as (server, tokens):
        runs = Runs(ByClientClock, server, tokens, tmp_path / "state.json")
        await runs.run()
        now[0] += 60
        api.update(list(range(100, 200)))
        now[0] += 600
        await runs.run()
        for _ in range(2):
            now[0] += 3600
            later, stats = await runs.run()
            assert later == [] and only(stats).sync.redelivered == 100  # the newest record's time bounds it


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    bulk=st.integers(1, 80),
    gaps=st.lists(st.integers(0, 7200), min_size=2, max_size=4),
    offset=st.sampled_from([-3 * 3600, -600, 0, 600, 3 * 3600]),
    during=st.booleans(),
)
def test_runs_at_any_gap_and_clock_offset_keep_the_replica_equal_to_the_source(
    tmp_path_factory: Any, bulk: int, gaps: list[int], offset: int, during: bool
) -> None:
    import anyio

    folder = tmp_path_factory.mktemp("bulk")

    async def main() -> None:
        now, clock = frozen(START)
        api = ChangesAPI(records=120, now=clock, clock_offset=offset)
        if during:  # an update that lands while run 2 reads its first page
            api.on_request = lambda n: n == 8 and api.update([5, 6, 7])
        async with serving(api) as (server, tokens):
            runs = Runs(ServiceNow, server, tokens, folder / "state.json")
            await runs.run()
            api.update(list(range(bulk)))
            for i, gap in enumerate(gaps):
                now[0] += gap
                await runs.run()
                if i > 0 or not during:  # changes made during run N are due by run N + 1
                    assert api.differences(runs.held(), deletions=False) == []
            api.on_request = None
            now[0] += 600
            await runs.run()  # the changes made during the last run arrive in the next one
            assert api.differences(runs.held(), deletions=False) == []

    anyio.run(main)
