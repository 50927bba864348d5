"""Incremental sync keeps no stale record when rows vanish mid-crawl, a crawl is killed, or a position expires.

Over real HTTP against the mutable local API, whose clock the tests move by hand: deletions and
creations between the pages of an offset-paged run, changes while a killed crawl is stopped, and
a saved position refused as expired on the resume.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from oauthpw_async.crawler import Crawler, JsonLinesSink, Offset
from oauthpw_async.crawler.incremental import format_time, step_back
from oauthpw_async.crawler.pagination import PageRequest
from oauthpw_async.testing import AuthServerState, LocalServer
from oauthpw_async.testing.changes import ChangesAPI, replay

from .test_incremental import Jira, Runs, ServiceNow, Zendesk, frozen, ids, only, serving

pytestmark = pytest.mark.anyio

START = 1_715_000_000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class SeekingServiceNow(ServiceNow):
    ordered_by_updated = True


class SeekingJira(Jira):
    ordered_by_updated = True


def expired(status: int, data: Any) -> bool:
    return status == 400 and isinstance(data, list) and data[0].get("errorCode") == "INVALID_QUERY_LOCATOR"


class ExpiringServiceNow(ServiceNow):
    def position_expired(self, status: int, data: Any) -> bool:
        return expired(status, data)


class ExpiringZendesk(Zendesk):
    def position_expired(self, status: int, data: Any) -> bool:
        return expired(status, data)


def spaced_updates(api: ChangesAPI, now: list[float], record_ids: range, gap: int = 30) -> list[int]:
    """Update these records one after another, ``gap`` seconds apart on the server's clock."""
    done = []
    for i in record_ids:
        now[0] += gap
        done += api.update([i])
    return done


def served(api: ChangesAPI) -> int:
    return sum(v for k, v in api.counts.items() if k != "control")


# --- 1. deletions during an offset-paged incremental run -----------------------------------------------


@pytest.mark.parametrize("cls", [SeekingServiceNow, SeekingJira], ids=["servicenow-link", "jira-offset"])
async def test_deletions_and_creations_between_pages_skip_no_record(tmp_path: Path, cls: type[Crawler]) -> None:
    now, clock = frozen(START)
    api = ChangesAPI(records=300, spacing=10, now=clock)
    async with serving(api) as (server, tokens):
        runs = Runs(cls, server, tokens, tmp_path / "state.json")
        await runs.run()
        changed = spaced_updates(api, now, range(0, 300, 3))  # 100 changes, pages of 20
        first = served(api)
        for k in (1, 2, 3):  # after each of run 2's first three pages: two records it read vanish, two appear
            api.at(first + k, delete=changed[2 * k - 2 : 2 * k], create=2)
        second, stats = await runs.run()
        ps = only(stats)
        assert ps.complete and ps.sync.committed
        # every record changed before run 2, and the six created during it, are written by run 2
        assert api.differences(runs.held(), deletions=False) == []
        assert set(changed[6:]) <= set(ids(second))


async def test_records_out_of_update_time_order_make_a_seeking_run_incomplete(tmp_path: Path, caplog: Any) -> None:
    class Misdeclared(SeekingServiceNow):  # says it is ordered by update time, but is ordered by id
        params = {"sysparm_limit": "20", "sysparm_query": "ORDERBYsys_id"}

        def changed_since(self, partition: Any, since: Any) -> dict[str, str]:
            return {"sysparm_query": f"sys_updated_on>={since:%Y-%m-%d %H:%M:%S}^ORDERBYsys_id"}

    now, clock = frozen(START)
    api = ChangesAPI(records=100, now=clock)
    async with serving(api) as (server, tokens):
        runs = Runs(Misdeclared, server, tokens, tmp_path / "state.json")
        await runs.run()
        spaced_updates(api, now, range(5, 100, 3))  # 32 changes: more than one page of 20
        api.update([1])  # the newest change has the smallest id: the first page is out of order
        _, stats = await runs.run()
        ps = only(stats)
        assert not ps.sync.committed and any("not in update-time order" in p for p in ps.problems)
        assert "set ordered_by_updated = False" in caplog.text
        assert api.differences(runs.held(), deletions=False) == []


# --- 2. changes between a kill and the resume ---------------------------------------------------------------


@pytest.mark.parametrize("cls", [ServiceNow, SeekingServiceNow], ids=["offsets", "seeking"])
async def test_changes_while_a_killed_run_is_stopped_are_not_skipped(tmp_path: Path, cls: type[Crawler]) -> None:
    now, clock = frozen(START)
    api = ChangesAPI(records=300, spacing=10, now=clock)
    state = tmp_path / "state.json"
    async with serving(api) as (server, tokens):
        runs = Runs(cls, server, tokens, state)
        await runs.run()
        changed = spaced_updates(api, now, range(0, 300, 3))
        scope = anyio.CancelScope()
        api.on_kill = scope.cancel
        api.at(served(api) + 3, kill=True)  # run 2 stops with three pages written
        with scope:
            await runs.run()
        assert scope.cancelled_caught and not orjson.loads(state.read_bytes())["partitions"]["default"]["done"]
        written = set(ids(runs.sinks[-1].records))
        # While it is stopped: six records it wrote are deleted, three updated (they move to the end).
        gone = [i for i in changed if i in written][:9]
        api.delete(gone[:6])
        now[0] += 30
        api.update(gone[6:9])
        _, resumed = await runs.run()
        assert only(resumed).sync.resumed and only(resumed).complete
        await runs.run()  # run 3
        assert api.differences(runs.held(), deletions=False) == []


# --- 3. an expired saved position inside an incremental run ----------------------------------------------------


@pytest.mark.parametrize("cls", [ExpiringServiceNow, ExpiringZendesk], ids=["servicenow", "zendesk-tombstones"])
async def test_an_expired_position_in_an_incremental_run_writes_every_changed_record(
    tmp_path: Path, cls: type[Crawler]
) -> None:
    now, clock = frozen(START)
    api = ChangesAPI(records=1000, spacing=10, now=clock)
    state, out = tmp_path / "state.json", tmp_path / "out.jsonl"
    async with serving(api) as (server, tokens):
        crawler = cls(base_url=server.base_url)

        async def run() -> Any:
            sink = JsonLinesSink(out)
            try:
                return await crawler.crawl(tokens, sink, state=str(state))
            finally:
                sink.close()

        await run()
        changed = spaced_updates(api, now, range(0, 1000, 2), gap=2)  # 500 updated
        now[0] += 2
        deleted = api.delete(list(range(1, 200, 2))) if cls is ExpiringZendesk else []  # 100 deleted
        scope = anyio.CancelScope()
        api.on_kill = scope.cancel
        api.at(served(api) + 5, kill=True)
        with scope:
            await run()
        assert scope.cancelled_caught
        api.expire_positions()  # the saved position expired while the crawl was stopped
        stats = await run()
        ps = only(stats)
        assert ps.restarts == 1 and ps.complete and ps.sync.committed
        held = replay([[orjson.loads(line) for line in out.read_bytes().splitlines()]])
        # every changed record is in the output as its new version, every deletion as a tombstone
        assert api.differences(held, deletions=cls is ExpiringZendesk) == []
        assert all(held[i][1] for i in deleted) and len(changed) == 500


# --- a tie group larger than a page ----------------------------------------------------------------------


async def test_a_tie_group_larger_than_a_page_is_read_again_when_rows_shift_under_its_offsets(tmp_path: Path) -> None:
    class Offsets(SeekingJira):
        pagination = Offset("startAt", "maxResults", page_size=5, total_path="total")

    _, clock = frozen(START)
    api = ChangesAPI(records=40, spacing=0, now=clock)  # forty records in one second, pages of five
    api.at(4, delete=[0, 1], create=2)  # read by offsets: the rows behind shift by two, the total stays
    async with serving(api) as (server, tokens):
        runs = Runs(Offsets, server, tokens, tmp_path / "state.json")
        first, stats = await runs.run()
        ps = only(stats)
        # one row of overlap per page showed the shift: the group was read again, nothing skipped
        assert ps.complete and ps.sync.committed, ps.problems
        assert set(range(2, 42)) <= set(ids(first))
        assert api.differences(runs.held(), deletions=False) == []


async def test_behind_next_links_that_count_rows_a_tie_group_is_read_again_when_rows_shift(tmp_path: Path) -> None:
    class Links(SeekingServiceNow):
        params = {"sysparm_limit": "5", "sysparm_query": "ORDERBYsys_updated_on"}

    _, clock = frozen(START)
    api = ChangesAPI(records=40, spacing=0, now=clock)
    api.at(4, delete=[0, 1], create=2)
    async with serving(api) as (server, tokens):
        runs = Runs(Links, server, tokens, tmp_path / "state.json")
        first, stats = await runs.run()
        ps = only(stats)
        # the link's sysparm_offset counts rows: pages overlap by one, the shift shows, the group is read again
        assert ps.complete and ps.sync.cursor_after == format_time(datetime.fromtimestamp(START, UTC))
        assert set(range(2, 42)) <= set(ids(first))
        assert api.differences(runs.held(), deletions=False) == []


@pytest.mark.parametrize(
    ("current", "proposed", "expected"),
    [
        (
            PageRequest("/t", (("limit", "5"),)),
            PageRequest("http://h/t?limit=5&offset=5"),
            "http://h/t?limit=5&offset=4",
        ),
        (PageRequest("/t?start=10&q=a+b"), PageRequest("/t?start=15&q=a+b"), "/t?start=14&q=a+b"),
        (PageRequest("/t", (("startAt", "5"),)), PageRequest("/t", (("startAt", "10"),)), "/t?startAt=9"),
        (PageRequest("/t", (("page", "1"),)), PageRequest("/t", (("page", "2"),)), None),  # a page number
        (PageRequest("/t"), PageRequest("/t?cursor=abc"), None),  # an opaque cursor
        (PageRequest("/t?a=0&b=0"), PageRequest("/t?a=5&b=5"), None),  # two could count: neither is trusted
    ],
)
def test_a_next_link_steps_back_one_row_only_through_the_one_parameter_that_counts_rows(
    current: PageRequest, proposed: PageRequest, expected: str | None
) -> None:
    earlier = step_back(current, proposed, 5)  # the page of ``current`` held 5 records
    assert (earlier.key().removesuffix("?") if earlier else None) == expected


# --- 2b. a real SIGKILL of the command line ------------------------------------------------------------------


async def test_a_crawl_process_killed_with_sigkill_resumes_and_loses_no_change(tmp_path: Path) -> None:
    import asyncio
    import os
    import signal
    import sys

    now, clock = frozen(START)
    api = ChangesAPI(records=600, spacing=10, now=clock)
    state, out, config = tmp_path / "state.json", tmp_path / "out.jsonl", tmp_path / "connection.json"
    root = Path(__file__).resolve().parent.parent
    async with LocalServer(AuthServerState(), api=api) as server:
        config.write_bytes(orjson.dumps(server.connection()))
        argv = [sys.executable, "-m", "oauthpw_async", "crawl", "--config", str(config), "--state", str(state)]
        argv += ["--crawler", "examples.incremental_servicenow:Incidents", "--base-url", server.base_url]
        argv += ["--out", str(out)]

        async def crawl(kill_at: int | None = None) -> int:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=root, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
            if kill_at is not None:
                api.on_kill = lambda: os.kill(proc.pid, signal.SIGKILL)
                api.at(served(api) + kill_at, kill=True)
            _, err = await asyncio.wait_for(proc.communicate(), 120)
            assert proc.returncode is not None
            assert proc.returncode in (0, -signal.SIGKILL), err.decode()
            return proc.returncode

        assert await crawl() == 0
        changed = spaced_updates(api, now, range(0, 600, 2))  # 300 changes: pages of 100
        assert await crawl(kill_at=2) == -signal.SIGKILL  # killed with two pages written
        written = set(ids_in(out)[600:])
        # While it is dead: ten records it wrote are deleted, five updated (they move to the end).
        gone = [i for i in changed if i in written]
        assert len(gone) >= 15
        api.delete(gone[:10])
        now[0] += 30
        api.update(gone[10:15])
        assert await crawl() == 0  # the resume
        assert await crawl() == 0  # and the next run
    assert (
        api.differences(replay([[orjson.loads(line) for line in out.read_bytes().splitlines()]]), deletions=False) == []
    )


def ids_in(path: Path) -> list[int]:
    from oauthpw_async.testing.changes import id_of

    return [id_of(orjson.loads(line)) for line in path.read_bytes().splitlines() if line.strip()]
