"""A crawler as a dlt source, loaded into a real DuckDB through dlt's duckdb destination.

The source is the mutable local API (:mod:`oauthpw_async.testing.changes`) over real HTTP; after
every run the table must equal the source: every live record once, at its current version, no
deleted record, whatever changed in between.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import dlt
import duckdb
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oauthpw_async import TokenProvider, UsageError
from oauthpw_async.crawler import Crawler
from oauthpw_async.integrations import IncompleteCrawlError
from oauthpw_async.integrations.dlt import STATE_KEY, crawler_resource, crawler_source
from oauthpw_async.testing import AuthServerState, LocalServer
from oauthpw_async.testing.changes import ChangesAPI

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from dlt_tickets import run as run_example
from zendesk_tickets import Tickets

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Graph(Crawler):
    """Microsoft Graph style: a server delta token, deletions as ``@removed``."""

    path = "/v1.0/items/delta"
    params = {"$top": "20"}
    records_path = "value"
    pagination = "odata"
    primary_key = "id"
    delta_path = ("@odata.deltaLink",)
    deleted_path = ("@removed",)


class SmallTickets(Tickets):
    params = {"start_time": "0", "per_page": "20"}


@contextlib.asynccontextmanager
async def serving(api: ChangesAPI) -> AsyncIterator[LocalServer]:
    async with LocalServer(AuthServerState(token_lifetime=600), api=api) as server:
        yield server


def pipeline_in(folder: Path, name: str = "crawl") -> Any:
    return dlt.pipeline(
        name,
        destination=dlt.destinations.duckdb(str(folder / "db.duckdb")),
        dataset_name="landed",
        pipelines_dir=str(folder / "pipelines"),
    )


async def run(pipeline: Any, source: Any) -> Any:
    """``pipeline.run`` off the event loop, so the local server keeps answering."""
    return await anyio.to_thread.run_sync(pipeline.run, source)


def table(database: Path, name: str, dataset: str = "landed") -> dict[int, int]:
    """``id -> version`` of every row, failing on a duplicated id."""
    with duckdb.connect(str(database), read_only=True) as db:
        rows = db.sql(f"select id, version from {dataset}.{name}").fetchall()
    landed = {int(i): v for i, v in rows}
    assert len(landed) == len(rows), "a key landed twice"
    return landed


def source_now(api: ChangesAPI) -> dict[int, int]:
    return {s.id: s.version for s in api.final_state() if not s.deleted}


def data_requests(api: ChangesAPI) -> int:
    return api.counts["zendesk"] + api.counts["graph"]


async def test_the_example_lands_the_source_then_only_its_changes_with_deletions(tmp_path: Path) -> None:
    api = ChangesAPI(records=450, spacing=60)
    async with serving(api) as server:
        config = server.config()

        async def example() -> Any:
            return await anyio.to_thread.run_sync(
                lambda: run_example(
                    config, base_url=server.base_url, database=tmp_path / "t.duckdb", pipelines_dir=tmp_path / "p"
                )
            )

        await example()
        assert table(tmp_path / "t.duckdb", "tickets", "zendesk") == source_now(api)
        full = data_requests(api)
        changed = api.update([3, 200, 449]) + api.create(4)
        api.delete([0, 7, 201, changed[-1]])  # one created since the last run, then deleted
        await example()
        assert table(tmp_path / "t.duckdb", "tickets", "zendesk") == source_now(api)
        assert data_requests(api) - full <= 2 < full  # only what changed was read
        before = data_requests(api)
        await example()  # nothing changed: the lookback's re-reads are merged, not duplicated
        assert table(tmp_path / "t.duckdb", "tickets", "zendesk") == source_now(api)
        assert data_requests(api) - before <= 2


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    style=st.sampled_from([SmallTickets, Graph]),
    rounds=st.lists(
        st.tuples(
            st.lists(st.integers(0, 80), max_size=8),  # updated
            st.integers(0, 3),  # created
            st.lists(st.integers(0, 80), max_size=5),  # deleted
        ),
        min_size=1,
        max_size=3,
    ),
)
async def test_after_every_run_the_table_equals_the_source(style: type[Crawler], rounds: list[Any]) -> None:
    api = ChangesAPI(records=70, spacing=60)
    with tempfile.TemporaryDirectory() as folder:
        async with serving(api) as server:
            pipeline = pipeline_in(Path(folder))
            name = style.__name__.lower()
            await run(pipeline, crawler_source(style(base_url=server.base_url), server.config(), name=name))
            assert table(Path(folder) / "db.duckdb", name) == source_now(api)
            for updated, created, deleted in rounds:
                api.update(updated)
                api.create(created)
                api.delete(deleted)
                await run(pipeline, crawler_source(style(base_url=server.base_url), server.config(), name=name))
                assert table(Path(folder) / "db.duckdb", name) == source_now(api)


async def test_the_cursor_lives_in_dlts_state_and_comes_back_from_the_destination(tmp_path: Path) -> None:
    api = ChangesAPI(records=120, spacing=60)
    async with serving(api) as server:
        await run(pipeline_in(tmp_path), crawler_source(SmallTickets(base_url=server.base_url), server.config()))
        state = pipeline_in(tmp_path).state["sources"]["small_tickets"]["resources"]["small_tickets"][STATE_KEY]
        assert orjson.loads(state)["cursors"]["default"]["cursor"] is not None
        assert sorted(p.name for p in tmp_path.iterdir()) == ["db.duckdb", "pipelines"]  # no state file of its own
        # The pipeline's local folder is lost: dlt restores its state, and the cursor, from the destination.
        shutil.rmtree(tmp_path / "pipelines")
        api.update([5])
        api.delete([6])
        before = data_requests(api)
        await run(pipeline_in(tmp_path), crawler_source(SmallTickets(base_url=server.base_url), server.config()))
        assert data_requests(api) - before == 1  # one page of changes, not the 6 pages of a full crawl
        assert table(tmp_path / "db.duckdb", "small_tickets") == source_now(api)


class Budgeted(SmallTickets):
    max_pages = 2  # 120 records in pages of 20: the crawl stops short


async def test_an_incomplete_crawl_lands_nothing_and_keeps_the_cursor(tmp_path: Path) -> None:
    api = ChangesAPI(records=120, spacing=60)
    async with serving(api) as server:
        pipeline = pipeline_in(tmp_path)
        with pytest.raises(Exception, match="incomplete") as caught:
            await run(pipeline, crawler_source(Budgeted(base_url=server.base_url), server.config()))
        causes = []
        exc: BaseException | None = caught.value
        while exc is not None and len(causes) < 10:
            causes.append(exc)
            exc = exc.__cause__ or exc.__context__
        (typed,) = [e for e in causes if isinstance(e, IncompleteCrawlError)]
        assert typed.problems == {"default": ["stopped on the page budget (max_pages = 2)"]}
        assert STATE_KEY not in str(pipeline.state)
        with duckdb.connect(str(tmp_path / "db.duckdb"), read_only=True) as db:
            assert "budgeted" not in str(db.sql("show all tables").fetchall())
        # Accepted explicitly, what was read lands.
        await run(pipeline, crawler_source(Budgeted(base_url=server.base_url), server.config(), allow_incomplete=True))
        assert len(table(tmp_path / "db.duckdb", "budgeted")) == 40


class Unkeyed(Graph):
    primary_key = None


class FullOnly(Crawler):
    path = "/v1.0/items/delta"
    params = {"$top": "20"}
    records_path = "value"
    pagination = "odata"


async def test_without_a_key_an_incremental_crawler_is_refused_and_a_full_one_replaces() -> None:
    with pytest.raises(UsageError, match="declare primary_key"):
        crawler_resource(Unkeyed(), {"Access Token URL": "http://127.0.0.1:1/t"})
    api = ChangesAPI(records=30, spacing=60)
    with tempfile.TemporaryDirectory() as folder:
        async with serving(api) as server:
            pipeline = pipeline_in(Path(folder))
            for _ in range(2):
                await run(pipeline, crawler_source(FullOnly(base_url=server.base_url), server.config()))
                assert table(Path(folder) / "db.duckdb", "full_only") == source_now(api)


async def test_a_token_source_factory_is_opened_on_dlts_loop(tmp_path: Path) -> None:
    api = ChangesAPI(records=25, spacing=60)
    async with serving(api) as server:
        config = server.config()
        opened: list[TokenProvider] = []

        def tokens() -> TokenProvider:
            opened.append(TokenProvider(config))
            return opened[-1]

        await run(pipeline_in(tmp_path), crawler_source(SmallTickets(base_url=server.base_url), tokens))
        assert len(opened) == 1 and table(tmp_path / "db.duckdb", "small_tickets") == source_now(api)


async def test_of_two_versions_of_a_record_in_one_run_the_later_lands(tmp_path: Path) -> None:
    api = ChangesAPI(records=100, spacing=60)

    # After 3 pages of 20, records already read change: they are read again, later in the same run.
    def change(served: int) -> None:
        if served == 3:
            api.update([1, 2, 3])
            api.delete([4, 5, 6])

    api.on_request = change
    async with serving(api) as server:
        await run(pipeline_in(tmp_path), crawler_source(SmallTickets(base_url=server.base_url), server.config()))
        assert table(tmp_path / "db.duckdb", "small_tickets") == source_now(api)
        assert {1, 2, 3} <= set(table(tmp_path / "db.duckdb", "small_tickets")) and api.counts["zendesk"] > 5


async def test_one_source_holds_one_resource_per_crawler(tmp_path: Path) -> None:
    api = ChangesAPI(records=60, spacing=60)
    async with serving(api) as server:
        crawlers = [SmallTickets(base_url=server.base_url), Graph(base_url=server.base_url)]
        source = crawler_source(crawlers, server.config())
        assert sorted(source.resources) == ["graph", "small_tickets"]
        await run(pipeline_in(tmp_path), source)
        api.update([1])
        api.delete([2])
        await run(pipeline_in(tmp_path), crawler_source(crawlers, server.config()))
        assert (
            table(tmp_path / "db.duckdb", "small_tickets") == table(tmp_path / "db.duckdb", "graph") == source_now(api)
        )
    with pytest.raises(UsageError, match="distinct classes"):
        crawler_source([Graph(), Graph()], server.config())
