"""Positions belong to an output, cursors to the crawl; warnings about the data always reach stderr.

A daily incremental run writes each run to a new file (``2026-12-03.jsonl``): it starts from the
committed cursors, and the union of the files replays to the source, whatever runs were stopped
midway and wherever they wrote. A full crawl's unfinished positions stay bound to their output.
Over real HTTP against the mutable local API; the command line as a real process.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oauthpw_async import StateError, TokenProvider
from oauthpw_async.crawler import Crawler, Cursor, JsonLinesSink, Partition
from oauthpw_async.crawler.checkpoint import Checkpoints
from oauthpw_async.testing import AuthServerState, LocalServer
from oauthpw_async.testing.api import DemoAPI
from oauthpw_async.testing.changes import ChangesAPI, replay

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class ServiceNow(Crawler):
    path = "/api/now/table/incident"
    params = {"sysparm_limit": "20", "sysparm_query": "ORDERBYsys_updated_on"}
    records_path = "result"
    pagination = "link_header"
    primary_key = "sys_id"
    updated_field = "sys_updated_on"

    def changed_since(self, partition: Partition, since: datetime) -> dict[str, str]:
        return {"sysparm_query": f"sys_updated_on>={since:%Y-%m-%d %H:%M:%S}^ORDERBYsys_updated_on"}


class Items(Crawler):
    """A full crawl (no update time) of the demo API's three projects."""

    path = "/api/cursor/items"
    records_path = "data"
    pagination = Cursor("meta.next_cursor", has_more_path="meta.has_more")

    def partitions(self) -> list[Partition]:
        return [Partition(p, {"project": p, "limit": "10"}) for p in ("alpha", "beta", "gamma")]


async def _crawl(crawler: Crawler, tokens: TokenProvider, out: Path, state: Path) -> Any:
    sink = JsonLinesSink(out)
    try:
        return await crawler.crawl(tokens, sink, state=str(state))
    finally:
        sink.close()


async def _settle(api: ChangesAPI) -> None:
    with anyio.fail_after(10):  # requests the client cancelled still finish on the server
        while api.inflight:
            await anyio.sleep(0.01)


@st.composite
def rounds(draw: st.DrawFn) -> list[tuple[list[int], int, int | None, bool]]:
    """Per round: ids to update, records to create, a stop after N requests (or none), a new output."""
    out = []
    for _ in range(draw(st.integers(1, 4))):
        updates = draw(st.lists(st.integers(0, 119), max_size=30, unique=True))
        creates = draw(st.integers(0, 15))
        stop = draw(st.none() | st.integers(1, 6))
        out.append((updates, creates, stop, draw(st.booleans())))
    return out


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(plan=rounds())
def test_daily_outputs_with_stopped_runs_replay_to_the_source(tmp_path_factory: Any, plan: Any) -> None:
    """Any sequence of runs, stopped or not, each into the same or a new file: the files replay to the source."""
    folder = tmp_path_factory.mktemp("daily")

    async def main() -> None:
        api = ChangesAPI(records=120)
        state = folder / "state.json"
        files = [folder / "day-0.jsonl"]
        async with (
            LocalServer(AuthServerState(token_lifetime=600), api=api) as server,
            TokenProvider(server.config()) as tokens,
        ):
            crawler = ServiceNow(base_url=server.base_url)
            await _crawl(crawler, tokens, files[-1], state)
            for day, (updates, creates, stop, new_file) in enumerate(plan, 1):
                api.update(updates)
                api.create(creates)
                if new_file:
                    files.append(folder / f"day-{day}.jsonl")
                if stop is not None:
                    scope = anyio.CancelScope()
                    start = sum(api.counts.values())
                    api.on_request = lambda n, scope=scope, start=start, stop=stop: n >= start + stop and scope.cancel()
                    with scope:
                        await _crawl(crawler, tokens, files[-1], state)
                    api.on_request = None
                    await _settle(api)
            files.append(folder / "last.jsonl")  # a last run, not stopped, into a file of its own
            stats = await _crawl(crawler, tokens, files[-1], state)
            assert stats.complete
        batches = [[orjson.loads(line) for line in f.read_bytes().splitlines()] for f in files if f.exists()]
        assert api.differences(replay(batches), deletions=False) == []

    anyio.run(main)


async def test_a_full_crawl_with_unfinished_positions_stays_bound_to_its_output(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    async with (
        LocalServer(AuthServerState(), api=DemoAPI(per_project=50, max_page_size=10)) as server,
        TokenProvider(server.config()) as tokens,
    ):
        scope = anyio.CancelScope()

        def stop_after_two_pages(stats: Any) -> None:
            if stats.pages >= 2:
                scope.cancel()

        with scope:
            sink = JsonLinesSink(tmp_path / "a.jsonl")
            try:
                await Items(base_url=server.base_url).crawl(
                    tokens, sink, state=str(state), on_progress=stop_after_two_pages
                )
            finally:
                sink.close()
        assert scope.cancelled_caught
        saved = orjson.loads(state.read_bytes())
        assert any(not e["done"] for e in saved["partitions"].values())
        with pytest.raises(StateError) as caught:
            await _crawl(Items(base_url=server.base_url), tokens, tmp_path / "b.jsonl", state)
        message = str(caught.value)
        assert "unfinished positions of a crawl into another output" in message and "--restart" in message
        assert "delete" not in message  # the first advice is not to throw the state away
        # into the output it belongs to, it resumes and completes
        stats = await _crawl(Items(base_url=server.base_url), tokens, tmp_path / "a.jsonl", state)
        assert stats.complete
        # once done, a new output starts a new full crawl there, with every record
        stats = await _crawl(Items(base_url=server.base_url), tokens, tmp_path / "c.jsonl", state)
        assert stats.complete and stats.records == 150
        assert len((tmp_path / "c.jsonl").read_bytes().splitlines()) == 150


# --- the command line ---------------------------------------------------------------------------


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "oauthpw_async",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def changes_server() -> AsyncIterator[tuple[LocalServer, ChangesAPI]]:
    api = ChangesAPI(records=200)
    async with LocalServer(AuthServerState(), api=api) as server:
        yield server, api


async def test_a_daily_run_to_a_new_file_is_incremental_run_n_not_a_resume(tmp_path: Path, changes_server: Any) -> None:
    server, api = changes_server
    config = tmp_path / "connection.json"
    config.write_bytes(orjson.dumps(server.connection()))
    state = tmp_path / "state.json"
    crawl = ["crawl", "--config", str(config), "--crawler", "examples.incremental_servicenow:Incidents"]
    crawl += ["--base-url", server.base_url, "--state", str(state)]
    code, first, err = await run_cli(*crawl, "--out", str(tmp_path / "2026-12-01.jsonl"))
    assert code == 0, err
    assert "incremental run 1, the first (no cursor yet)" in first
    api.update([3, 4, 5])
    code, second, err = await run_cli(*crawl, "--out", str(tmp_path / "2026-12-02.jsonl"))
    assert code == 0, err
    assert "belongs to another crawl" not in err and "resumed" not in second
    assert "incremental run 2, from the cursors of run 1" in second
    assert "3 written" in second
    assert len((tmp_path / "2026-12-02.jsonl").read_bytes().splitlines()) == 3
    code, third, err = await run_cli(*crawl, "--out", str(tmp_path / "2026-12-03.jsonl"))
    assert code == 0, err
    assert "incremental run 3, from the cursors of run 2" in third and "0 written" in third


async def test_warnings_about_the_data_reach_stderr_and_the_summary_without_verbose(tmp_path: Path) -> None:
    api = DemoAPI(per_project=100, max_page_size=20)  # 5 pages per partition; the crawler reads 2
    async with LocalServer(AuthServerState(), api=api) as server:
        cfg = tmp_path / "c.json"
        cfg.write_bytes(orjson.dumps(server.connection()))
        args = ["crawl", "--config", str(cfg), "--crawler", "tests.crawlers_for_cli:BudgetedItems"]
        args += ["--base-url", server.base_url, "--out", str(tmp_path / "a.jsonl"), "--allow-incomplete"]
        code, out, err = await run_cli(*args)
    assert code == 0, out + err
    for name in ("alpha", "beta", "gamma"):
        assert re.search(rf"WARNING oauthpw_async\.crawler: partition {name} is incomplete", err), err
    assert re.search(r"^  warnings +3 about the data$", out, re.MULTILINE), out
    assert "token request" not in err  # -v still adds the detail; without it, only what concerns the data


def test_a_state_read_by_a_tool_keeps_its_recorded_output(tmp_path: Path) -> None:
    """Opening a state without a fingerprint (``state show``) never rebinds it to another output."""
    state = tmp_path / "s.json"
    doc = {
        "version": 2,
        "fingerprint": {"crawler": "x.Y", "partitions": ["a"], "pagination": "P", "output": "/data/a.jsonl"},
        "partitions": {"a": {"next": None, "done": True, "pages": 1, "records": 1}},
    }
    state.write_bytes(orjson.dumps(doc))
    cp = Checkpoints(str(state))
    cp.read()
    assert cp.document()["fingerprint"]["output"] == "/data/a.jsonl" and cp.is_done("a")


async def test_offset_paged_incremental_sync_without_time_order_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Seeking(ServiceNow):
        ordered_by_updated = True

    api = ChangesAPI(records=30)
    async with (
        LocalServer(AuthServerState(), api=api) as server,
        TokenProvider(server.config()) as tokens,
    ):
        caplog.set_level("WARNING", logger="oauthpw_async.crawler")
        await _crawl(ServiceNow(base_url=server.base_url), tokens, tmp_path / "a.jsonl", tmp_path / "a.json")
        assert "set ordered_by_updated = True" in caplog.text
        caplog.clear()
        await _crawl(Seeking(base_url=server.base_url), tokens, tmp_path / "b.jsonl", tmp_path / "b.json")
        assert "ordered_by_updated" not in caplog.text
