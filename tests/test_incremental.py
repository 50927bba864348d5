"""Incremental sync: the second run fetches only what changed, and loses nothing at the boundaries.

Over real HTTP against the mutable local API (:mod:`oauthpw_async.testing.changes`), in the
styles of ServiceNow, Jira, Zendesk and Microsoft Graph; plus the pure parts (timestamp parsing,
the cursor arithmetic) property-based.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oauthpw_async import PageShapeError, StateError, TokenProvider, UsageError
from oauthpw_async.crawler import Crawler, JsonLinesSink, ListSink, Offset, Partition
from oauthpw_async.crawler.checkpoint import Checkpoints
from oauthpw_async.crawler.incremental import (
    CursorState,
    ExportCursor,
    RunState,
    format_time,
    micros,
    next_cursor,
    next_since,
    parse_timestamp,
    server_time,
)
from oauthpw_async.testing import AuthServerState, LocalServer
from oauthpw_async.testing.changes import ChangesAPI, id_of, replay

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from graph_delta import DriveItems
from incremental_servicenow import Incidents

pytestmark = pytest.mark.anyio
UTC_MIN = datetime(1973, 3, 4, tzinfo=UTC)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- crawlers, one per family ------------------------------------------------------------------------


class ServiceNow(Crawler):
    path = "/api/now/table/incident"
    params = {"sysparm_limit": "20", "sysparm_query": "ORDERBYsys_updated_on"}
    records_path = "result"
    pagination = "link_header"
    primary_key = "sys_id"
    updated_field = "sys_updated_on"

    def changed_since(self, partition: Partition, since: datetime) -> dict[str, str]:
        return {"sysparm_query": f"sys_updated_on>={since:%Y-%m-%d %H:%M:%S}^ORDERBYsys_updated_on"}


class ServiceNowById(ServiceNow):
    """Ordered by id, not by update time: a record updated during the crawl does not move."""

    params = {"sysparm_limit": "20", "sysparm_query": "ORDERBYsys_id"}

    def changed_since(self, partition: Partition, since: datetime) -> dict[str, str]:
        return {"sysparm_query": f"sys_updated_on>={since:%Y-%m-%d %H:%M:%S}^ORDERBYsys_id"}


class Jira(Crawler):
    path = "/rest/api/2/search"
    params = {"jql": "ORDER BY updated", "maxResults": "20"}
    records_path = "issues"
    pagination = Offset("startAt", "maxResults", page_size=20, total_path="total")
    primary_key = "id"
    updated_field = "fields.updated"  # "2024-01-02T03:04:05.000+0000"
    filter_precision = timedelta(minutes=1)  # JQL takes "yyyy/MM/dd HH:mm"

    def changed_since(self, partition: Partition, since: datetime) -> dict[str, str]:
        return {"jql": f'updated >= "{since:%Y/%m/%d %H:%M}" ORDER BY updated'}


class Zendesk(Crawler):
    path = "/api/v2/incremental/tickets/cursor.json"
    params = {"start_time": "0", "per_page": "20"}
    records_path = "tickets"
    pagination = ExportCursor()
    primary_key = "id"
    updated_field = "updated_at"

    def changed_since(self, partition: Partition, since: datetime) -> dict[str, str]:
        return {"start_time": str(int(since.timestamp()))}

    def is_deleted(self, record: Any) -> bool:
        return bool(record["status"] == "deleted")


class ZendeskDelta(Zendesk):
    """The same export, continued from the server's last cursor instead of a time."""

    delta_path = "after_cursor"
    delta_param = "cursor"


class Graph(Crawler):
    path = "/v1.0/items/delta"
    params = {"$top": "20"}
    records_path = "value"
    pagination = "odata"
    primary_key = "id"
    delta_path = ("@odata.deltaLink",)
    deleted_path = ("@removed",)


@contextlib.asynccontextmanager
async def serving(api: Any) -> AsyncIterator[tuple[LocalServer, TokenProvider]]:
    async with (
        LocalServer(AuthServerState(token_lifetime=600), api=api) as server,
        TokenProvider(server.config()) as tokens,
    ):
        yield server, tokens


class PartitionSink(ListSink):
    """Keeps records, and each partition's records apart."""

    #: One output, whatever the subclass: a state file is bound to its output (its identity).
    identity = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.by_partition: dict[str, list[Any]] = {}

    async def write(self, records: Sequence[Any], partition: str) -> None:
        await super().write(records, partition)
        self.by_partition.setdefault(partition, []).extend(records)


class Runs:
    """Crawl runs against one server and one state file; keeps every run's output in order."""

    def __init__(self, cls: type[Crawler], server: LocalServer, tokens: TokenProvider, state: Path) -> None:
        self.cls, self.server, self.tokens, self.state = cls, server, tokens, state
        self.sinks: list[PartitionSink] = []

    async def run(
        self, cls: type[Crawler] | None = None, sink: PartitionSink | None = None, **options: Any
    ) -> tuple[list[Any], Any]:
        crawler = (cls or self.cls)(base_url=self.server.base_url)
        sink = sink or PartitionSink()
        self.sinks.append(sink)
        stats = await crawler.crawl(self.tokens, sink, state=str(self.state), **options)
        return sink.records, stats

    def held(self, partition: str | None = None) -> dict[int, tuple[int | None, bool]]:
        if partition is None:
            return replay(s.records for s in self.sinks)
        return replay(s.by_partition.get(partition, []) for s in self.sinks)


def ids(records: Sequence[Any]) -> list[int]:
    return sorted(id_of(r) for r in records)


def only(stats: Any) -> Any:
    (ps,) = stats.partitions.values()
    return ps


def frozen(start: float) -> tuple[list[float], Any]:
    """A server clock the test moves by hand."""
    now = [start]
    return now, lambda: now[0]


# --- timestamps, property-based ---------------------------------------------------------------------

moments = st.datetimes(min_value=datetime(1973, 3, 4), max_value=datetime(4000, 1, 1), timezones=st.just(UTC))
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


@given(moments, offsets)
def test_iso_8601_with_any_offset_or_none_reads_back_the_same_instant(moment: datetime, tz: timezone) -> None:
    local = moment.astimezone(tz)
    assert parse_timestamp(local.isoformat()) == moment
    assert parse_timestamp(local.isoformat().replace("+00:00", "Z")) == moment
    assert parse_timestamp(moment.replace(tzinfo=None).isoformat()) == moment  # naive is UTC
    assert parse_timestamp(local) == moment and parse_timestamp(moment.replace(tzinfo=None)) == moment
    # Salesforce/Jira: milliseconds and an offset without a colon
    jira = local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{local.microsecond // 1000:03d}" + local.strftime("%z")
    assert parse_timestamp(jira) == moment.replace(microsecond=moment.microsecond // 1000 * 1000)


@given(moments)
def test_space_separated_and_epoch_forms_read_back_to_their_precision(moment: datetime) -> None:
    seconds = moment.replace(microsecond=0)
    millis = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    assert parse_timestamp(moment.strftime("%Y-%m-%d %H:%M:%S")) == seconds
    epoch_s, epoch_ms = int(seconds.timestamp()), micros(millis) // 1000
    assert parse_timestamp(epoch_s) == seconds and parse_timestamp(str(epoch_s)) == seconds
    assert parse_timestamp(epoch_ms) == millis and parse_timestamp(str(epoch_ms)) == millis
    assert parse_timestamp(micros(moment)) == moment
    assert parse_timestamp(f"{epoch_s}.{moment.microsecond:06d}") == moment  # a fraction in a string is exact
    # a float carries what a double can: a few microseconds by year 4000
    assert abs(parse_timestamp(moment.timestamp()) - moment) <= timedelta(microseconds=10)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-02", datetime(2024, 1, 2, tzinfo=UTC)),
        ("2024-01-02T03:04:05.1234567Z", datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)),  # .NET: 7 digits
        ("20240102T030405Z", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        (" 1704164645 ", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("1704164645.5", datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)),
        (1704164645123456789, datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)),  # nanoseconds
        (None, None),
        ("", None),
    ],
)
def test_other_forms(value: Any, expected: datetime | None) -> None:
    assert parse_timestamp(value) == expected


@pytest.mark.parametrize("value", ["yesterday", "2024-13-01", True, [1], {"t": 1}, "1e9", float("nan")])
def test_what_is_not_a_time_is_a_typed_error_that_says_what_to_do(value: Any) -> None:
    with pytest.raises(PageShapeError, match="is not an update time: use ISO 8601"):
        parse_timestamp(value)


def test_server_time_comes_from_the_date_header_and_nothing_else() -> None:
    assert server_time({"Date": "Tue, 02 Jan 2024 03:04:05 GMT"}) == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert server_time({}) is None and server_time({"Date": ""}) is None and server_time({"Date": "soon"}) is None


# --- the cursor arithmetic ----------------------------------------------------------------------------

T = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
L = timedelta(minutes=5)
SEC = timedelta(seconds=1)


def cursor_after(previous: CursorState, **run: Any) -> CursorState:
    return next_cursor(previous, RunState("incremental", **run), [], lookback=L, precision=SEC, max_recent=10)


def test_the_next_cursor_is_the_smaller_of_the_largest_update_seen_and_the_server_start() -> None:
    assert cursor_after(CursorState(), max_seen=T, server_start=T + L).cursor == T
    # Records stamped after the server's start (updated during the run, or a clock ahead): S bounds it.
    assert cursor_after(CursorState(), max_seen=T + L, server_start=T).cursor == T
    assert cursor_after(CursorState(), max_seen=T, server_start=None).cursor == T


def test_the_cursor_never_goes_back_except_for_a_record_that_moved() -> None:
    before = CursorState(cursor=T)
    assert cursor_after(before, max_seen=T - SEC, server_start=T + L).cursor == T
    assert cursor_after(before, max_seen=T + L, server_start=T + L, floor=T - 2 * SEC).cursor == T - 2 * SEC


def test_a_run_that_delivered_nothing_keeps_cursor_token_and_memory() -> None:
    before = CursorState(cursor=T, token="abc", recent={b"k" * 16: (micros(T), 7)}, runs=3)
    after = next_cursor(before, RunState("incremental"), [], lookback=L, precision=SEC, max_recent=10)
    assert (after.cursor, after.token, after.recent, after.runs) == (T, "abc", before.recent, 4)


def test_the_memory_holds_the_newest_keys_at_or_after_the_next_since_and_is_bounded() -> None:
    stamps = [T - 10 * L, T - L - SEC, T - L, T - SEC, T]
    candidates = [(micros(t), bytes([i]) * 16, i) for i, t in enumerate(stamps)]
    candidates.append((micros(T - 2 * SEC), bytes([4]) * 16, 99))  # an older version of key 4
    run = RunState("incremental", max_seen=T, server_start=T + L)
    after = next_cursor(CursorState(), run, candidates, lookback=L, precision=SEC, max_recent=10)
    assert after.cursor == T and next_since(T, L, SEC) == T - L
    assert after.recent == {bytes([i]) * 16: (micros(stamps[i]), i) for i in (2, 3, 4)}
    bounded = next_cursor(CursorState(), run, candidates, lookback=L, precision=SEC, max_recent=2)
    assert set(bounded.recent) == {bytes([3]) * 16, bytes([4]) * 16}


@given(moments, st.integers(0, 3600), st.sampled_from([1, 60, 3600]))
def test_the_next_since_is_floored_to_the_filter_precision(moment: datetime, lookback: int, unit: int) -> None:
    since = next_since(moment, timedelta(seconds=lookback), timedelta(seconds=unit))
    assert since <= moment - timedelta(seconds=lookback) < since + timedelta(seconds=unit)
    assert micros(since) % (unit * 1_000_000) == 0


@given(
    st.one_of(st.none(), moments),
    st.one_of(st.none(), st.text(max_size=50)),
    st.dictionaries(
        st.binary(min_size=16, max_size=16), st.tuples(st.integers(-(2**62), 2**62), st.integers(0, 2**64 - 1))
    ),
)
def test_cursor_state_survives_the_state_file(cursor: datetime | None, token: str | None, recent: Any) -> None:
    state = CursorState(cursor=cursor, token=token, recent=recent, runs=2, last_run={"mode": "full"})
    assert CursorState.from_json(orjson.loads(orjson.dumps(state.to_json()))) == state


def test_a_damaged_cursor_is_a_state_error_that_says_what_to_do() -> None:
    with pytest.raises(StateError, match="state reset"):
        CursorState.from_json({"cursor": "last tuesday"})
    with pytest.raises(StateError, match="state reset"):
        CursorState.from_json({"recent": "not base64!"})


# --- the test server's query engine, against a model ----------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_the_servers_filters_and_orders_match_a_naive_model(data: st.DataObject) -> None:
    clock = [0.0]
    api = ChangesAPI(
        records=data.draw(st.integers(0, 40)),
        ties=data.draw(st.integers(1, 4)),
        spacing=data.draw(st.integers(0, 3)),
        now=lambda: clock[0],
    )
    for _ in range(data.draw(st.integers(0, 4))):
        clock[0] = api.base_epoch + data.draw(st.integers(-5, 120))
        some = data.draw(st.lists(st.integers(0, api.next_id + 1), max_size=6))
        getattr(api, data.draw(st.sampled_from(["update", "delete"])))(some)
        api.create(data.draw(st.integers(0, 3)))
    since = data.draw(st.one_of(st.none(), st.integers(api.base_epoch - 3, api.base_epoch + 130)))
    deleted = data.draw(st.booleans())
    pool = [s for s in api.final_state() if (deleted or not s.deleted) and (since is None or s.updated >= since)]
    by_time = [s.id for s in sorted(pool, key=lambda s: (s.updated, s.id))]
    by_id = sorted(s.id for s in pool)
    offset, limit = data.draw(st.integers(0, len(pool) + 2)), data.draw(st.integers(1, 6))
    assert api.by_time(since, None, offset, limit, deleted=deleted) == (
        by_time[offset : offset + limit],
        offset + limit < len(pool),
    )
    assert api.by_id(since, None, offset, limit, deleted=deleted)[0] == by_id[offset : offset + limit]
    assert api.count(since, deleted=deleted) == len(pool)


# --- over HTTP: the second run fetches only what changed -------------------------------------------------


@pytest.mark.parametrize("paging", ["offset", "keyset"])
async def test_servicenow_run_two_gets_exactly_the_changes_and_run_three_nothing(tmp_path: Path, paging: str) -> None:
    api = ChangesAPI(records=500, paging=paging)  # type: ignore[arg-type]
    async with serving(api) as (server, tokens):
        runs = Runs(ServiceNow, server, tokens, tmp_path / "state.json")
        first, stats1 = await runs.run()
        assert ids(first) == list(range(500)) and only(stats1).sync.mode == "full"
        updated, created = api.update([3, 250, 499]), api.create(4)
        api.delete([7])  # ServiceNow's table API does not list deleted records: nothing can show it
        second, stats2 = await runs.run()
        sync = only(stats2).sync
        assert ids(second) == sorted(updated + created)
        assert sync.mode == "incremental" and sync.committed
        # the cursor is the server's time at run 1's start, not the newest record's (years older): the
        # lookback re-reads only what changed since, and nothing is dropped as a re-delivery
        assert sync.redelivered == 0 and stats2.requests <= 17 < stats1.requests
        third, stats3 = await runs.run()
        assert third == [] and only(stats3).sync.redelivered == len(updated + created)
        assert api.differences(runs.held(), deletions=False) == []


async def test_jira_minute_precision_filters_lose_nothing_and_write_nothing_twice(tmp_path: Path) -> None:
    minute = 1_715_000_000 // 60 * 60
    now, clock = frozen(minute + 10)
    api = ChangesAPI(records=100, now=clock)
    async with serving(api) as (server, tokens):
        runs = Runs(Jira, server, tokens, tmp_path / "state.json")
        await runs.run()
        a = api.update([5])  # at hh:mm:10
        now[0] = minute + 30
        c = api.update([6])  # at hh:mm:30: the next cursor
        second, _ = await runs.run()
        assert ids(second) == sorted(a + c)
        now[0] = minute + 45
        b = api.update([7])  # same minute, after the cursor
        third, stats = await runs.run()
        sync = only(stats).sync
        # JQL only takes minutes: the filter asked from hh:(mm-5):00, so a and c came again and were dropped
        assert sync.since == format_time(datetime.fromtimestamp(minute - 300, UTC))
        assert ids(third) == b and sync.redelivered == 2
        assert api.differences(runs.held(), deletions=False) == []


async def test_equal_timestamps_across_page_boundaries_and_at_the_cursor(tmp_path: Path) -> None:
    _, clock = frozen(1_715_000_000)
    api = ChangesAPI(records=200, ties=7, max_page_size=5, now=clock)  # runs of 7 equal times, pages of 5
    async with serving(api) as (server, tokens):
        runs = Runs(ServiceNow, server, tokens, tmp_path / "state.json")
        first, _ = await runs.run()
        assert ids(first) == list(range(200))
        twelve = api.update(list(range(0, 120, 10)))  # all at one second T: page boundaries fall among them
        second, _ = await runs.run()
        assert ids(second) == twelve
        # Still second T, which is now the cursor: seven more, and a new version of three of the twelve.
        more = api.update([1, 2, 3, 4, 5, 6, 8]) + api.update([0, 10, 20])
        third, stats = await runs.run()
        assert ids(third) == sorted(more) and only(stats).sync.redelivered == 9
        assert {id_of(r): r["sys_mod_count"] for r in third if id_of(r) in (0, 10, 20)} == {0: "2", 10: "2", 20: "2"}
        fourth, _ = await runs.run()
        assert fourth == []
        assert api.differences(runs.held(), deletions=False) == []


async def test_zendesk_export_deletions_arrive_as_tombstones(tmp_path: Path) -> None:
    api = ChangesAPI(records=300)
    async with serving(api) as (server, tokens):
        runs = Runs(Zendesk, server, tokens, tmp_path / "state.json")
        await runs.run()
        changed = api.update([1, 2]) + api.create(3)
        deleted = api.delete([10, 11])
        second, stats = await runs.run()
        tombstones = [r for r in second if r.get("_deleted")]
        assert sorted(r["_key"] for r in tombstones) == deleted
        assert all(set(t) == {"_deleted", "_key", "record"} and t["record"]["status"] == "deleted" for t in tombstones)
        assert ids(second) == sorted(changed + deleted) and only(stats).sync.tombstones == 2
        third, _ = await runs.run()
        assert third == []
        assert api.differences(runs.held()) == []


@pytest.mark.parametrize("cls", [Graph, ZendeskDelta], ids=["graph", "zendesk"])
async def test_server_delta_tokens_continue_where_the_last_run_ended(tmp_path: Path, cls: type[Crawler]) -> None:
    api = ChangesAPI(records=250)
    async with serving(api) as (server, tokens):
        runs = Runs(cls, server, tokens, tmp_path / "state.json")
        first, stats1 = await runs.run()
        assert ids(first) == list(range(250))
        changed = api.update([0, 100, 249]) + api.create(2)
        deleted = api.delete([50])
        second, stats2 = await runs.run()
        sync = only(stats2).sync
        assert sync.mode == "delta" and sync.cursor_before.startswith("token ")
        assert ids(second) == sorted(changed + deleted) and sync.tombstones == 1
        assert stats2.requests == 1 < stats1.requests
        third, _ = await runs.run()
        assert third == []
        assert api.differences(runs.held()) == []


async def test_graph_changes_made_during_a_round_are_in_the_next_round(tmp_path: Path) -> None:
    api = ChangesAPI(records=200)
    api.on_request = lambda n: n == 5 and api.update([3]) and api.delete([150])  # pages 0..4 were served
    async with serving(api) as (server, tokens):
        runs = Runs(Graph, server, tokens, tmp_path / "state.json")
        first, _ = await runs.run()
        assert ids(first) == [i for i in range(200) if i != 150]
        api.on_request = None
        second, _ = await runs.run()
        assert ids(second) == [3, 150] and api.differences(runs.held()) == []


# --- records that change during a crawl ------------------------------------------------------------------


def move_during_the_crawl(api: ChangesAPI) -> None:
    """After three pages of 10, records 5, 6 and 7 (already read) are updated: they move to the end."""
    api.on_request = lambda n: n == 3 and api.update([5, 6, 7]) and None


class ByTimeTen(ServiceNow):
    params = {"sysparm_limit": "10", "sysparm_query": "ORDERBYsys_updated_on"}


async def test_keyset_paging_loses_nothing_when_records_move_during_the_crawl(tmp_path: Path) -> None:
    api = ChangesAPI(records=100, paging="keyset")
    move_during_the_crawl(api)
    async with serving(api) as (server, tokens):
        runs = Runs(ByTimeTen, server, tokens, tmp_path / "state.json")
        first, stats = await runs.run()
        assert sorted(set(ids(first))) == list(range(100))  # nothing skipped
        assert only(stats).sync.moves == 3  # the new versions were read too
        assert api.differences(runs.held(), deletions=False) == []


async def test_offset_paging_a_move_is_detected_and_the_next_run_recovers_the_skipped_record(
    tmp_path: Path,
) -> None:
    api = ChangesAPI(records=100, paging="offset")
    move_during_the_crawl(api)
    async with serving(api) as (server, tokens):
        runs = Runs(ByTimeTen, server, tokens, tmp_path / "state.json")
        first, stats = await runs.run()
        # Three moves shifted the rest back by three: the offset walked past 30, 31 and 32.
        assert set(range(100)) - set(ids(first)) == {30, 31, 32}
        ps = only(stats)
        assert ps.sync.moves == 3
        # 100 rows were read, but only 97 distinct records against the 100 announced: incomplete
        assert ps.problems == ["97 of 100 announced records were read"] and not ps.sync.committed
        api.on_request = None
        second, _ = await runs.run()
        assert {30, 31, 32} <= set(ids(second))
        assert api.differences(runs.held(), deletions=False) == []


class SeekingTen(ByTimeTen):
    ordered_by_updated = True


async def test_offset_paging_that_seeks_by_update_time_skips_nothing_when_records_move(tmp_path: Path) -> None:
    _, clock = frozen(1_715_000_000)
    api = ChangesAPI(records=100, paging="offset", now=clock)
    move_during_the_crawl(api)
    async with serving(api) as (server, tokens):
        runs = Runs(SeekingTen, server, tokens, tmp_path / "state.json")
        first, stats = await runs.run()
        assert set(ids(first)) == set(range(100))  # nothing skipped
        ps = only(stats)
        assert ps.sync.moves == 3 and ps.complete and ps.sync.committed
        # the moves could not skip (each page starts a filter at its first row): the cursor is not lowered
        assert ps.sync.cursor_after == format_time(datetime.fromtimestamp(1_715_000_000, UTC))
        assert api.differences(runs.held(), deletions=False) == []


async def test_offset_paging_without_a_primary_key_is_warned_about(tmp_path: Path, caplog: Any) -> None:
    class NoKey(ByTimeTen):
        primary_key = None

    api = ChangesAPI(records=30)
    async with serving(api) as (server, tokens):
        await Runs(NoKey, server, tokens, tmp_path / "state.json").run()
    assert "without a primary_key" in caplog.text and "declare primary_key" in caplog.text


async def test_server_clock_skew_the_cursor_is_bounded_by_the_servers_own_time(tmp_path: Path) -> None:
    """The server's clock is an hour behind ours, and the crawl is not ordered by update time.

    Record 2 (already read) is updated during run 1, then record 90 (not read yet) ten minutes
    later by the server's clock. Run 1 reads 90, so its largest update time M is the later one;
    a cursor at M would put record 2 behind the next filter forever. The cursor is
    min(M, S) with S the server's Date at the start: record 2 comes in run 2.
    """
    now, clock = frozen(datetime.now(UTC).timestamp())
    api = ChangesAPI(records=100, clock_offset=-3600, now=clock)

    def during(n: int) -> None:
        if n == 2:
            api.update([2])
            now[0] += 600
            api.update([90])

    api.on_request = during
    async with serving(api) as (server, tokens):
        runs = Runs(ServiceNowById, server, tokens, tmp_path / "state.json")
        first, stats = await runs.run()
        assert 90 in {id_of(r) for r in first if r["sys_mod_count"] == "1"}
        assert 2 not in {id_of(r) for r in first if r["sys_mod_count"] == "1"}  # read before its update
        start = datetime.fromtimestamp(api.state_of(2).updated, UTC)  # type: ignore[union-attr]
        assert only(stats).sync.cursor_after == format_time(start)
        api.on_request = None
        second, _ = await runs.run()
        assert 2 in ids(second)
        assert api.differences(runs.held(), deletions=False) == []


async def test_without_a_date_header_the_client_clock_minus_the_allowance_is_used(tmp_path: Path) -> None:
    class Tolerant(ServiceNowById):
        clock_skew = timedelta(hours=2)  # more than the server's skew

    now, clock = frozen(datetime.now(UTC).timestamp())
    api = ChangesAPI(records=100, clock_offset=-3600, now=clock, date_header=False)

    def during(n: int) -> None:
        if n == 2:
            api.update([2])
            now[0] += 600
            api.update([90])

    api.on_request = during
    async with serving(api) as (server, tokens):
        runs = Runs(Tolerant, server, tokens, tmp_path / "state.json")
        await runs.run()
        api.on_request = None
        second, _ = await runs.run()
        assert 2 in ids(second)
        assert api.differences(runs.held(), deletions=False) == []


# --- stopping, resuming, failing ------------------------------------------------------------------------


async def test_a_run_stopped_midway_resumes_with_its_filter_and_loses_nothing(tmp_path: Path) -> None:
    api = ChangesAPI(records=600)
    state = tmp_path / "state.json"
    out = tmp_path / "out.jsonl"
    async with serving(api) as (server, tokens):
        crawler = ServiceNow(base_url=server.base_url)

        async def run() -> Any:
            sink = JsonLinesSink(out)
            try:
                return await crawler.crawl(tokens, sink, state=str(state))
            finally:
                sink.close()

        await run()
        cursor_one = orjson.loads(state.read_bytes())["cursors"]["default"]["cursor"]
        changed = api.update(list(range(0, 600, 3))) + api.create(20)  # 220 changes: 11+ pages
        scope = anyio.CancelScope()
        api.on_request = lambda n: n == 30 + 5 and scope.cancel()  # run 1 made 30 requests
        with scope:
            await run()
        assert scope.cancelled_caught
        saved = orjson.loads(state.read_bytes())
        # the cursor did not move; the run in flight is saved apart from it, with its filter
        assert saved["cursors"]["default"]["cursor"] == cursor_one
        assert saved["runs"]["default"]["mode"] == "incremental" and not saved["partitions"]["default"]["done"]
        with anyio.fail_after(10):  # requests cancelled by the client still finish on the server
            while api.inflight:
                await anyio.sleep(0.01)
        api.on_request = None
        late = api.update([1])  # changed while the crawl was stopped
        stats = await run()
        sync = only(stats).sync
        assert sync.resumed and sync.since == format_time(next_since(datetime.fromisoformat(cursor_one), L, SEC))
        assert sync.committed and "runs" not in orjson.loads(state.read_bytes())
        third = await run()
        assert only(third).sync.mode == "incremental"
    written = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert set(changed + late) <= {id_of(r) for r in written[600:]}
    assert api.differences(replay([written]), deletions=False) == []


async def test_a_stop_between_the_last_page_and_the_cursor_commit_is_committed_at_the_next_start(
    tmp_path: Path, monkeypatch: Any
) -> None:
    api = ChangesAPI(records=100)
    async with serving(api) as (server, tokens):
        runs = Runs(ServiceNow, server, tokens, tmp_path / "state.json")
        await runs.run()
        changed = api.update([10, 20])
        commit = Checkpoints.commit_cursor

        async def stopped(self: Checkpoints, partition: str, cursor: dict[str, Any]) -> None:
            raise RuntimeError("stopped")

        monkeypatch.setattr(Checkpoints, "commit_cursor", stopped)
        with pytest.raises(RuntimeError, match="stopped"):
            await runs.run()
        monkeypatch.setattr(Checkpoints, "commit_cursor", commit)
        saved = orjson.loads((tmp_path / "state.json").read_bytes())
        assert saved["partitions"]["default"]["done"] and "default" in saved["runs"]
        third, stats = await runs.run()
        sync = only(stats).sync
        # committed from the saved run (M and S were saved with the positions), then a new run
        assert sync.mode == "incremental" and sync.cursor_before == format_time(
            datetime.fromtimestamp(api.state_of(10).updated, UTC)  # type: ignore[union-attr]
        )
        # the memory of keys was not saved with the run: its records may be written once more
        assert set(ids(third)) <= set(changed)
        assert api.differences(runs.held(), deletions=False) == []


async def test_an_incomplete_partition_keeps_its_cursor_and_the_next_run_reads_it_again(
    tmp_path: Path, caplog: Any
) -> None:
    class Budget(ServiceNow):  # one crawler throughout: its state file is bound to it
        max_pages = 1_000_000

    api = ChangesAPI(records=100)
    async with serving(api) as (server, tokens):
        runs = Runs(Budget, server, tokens, tmp_path / "state.json")
        await runs.run()
        before = only((await runs.run())[1]).sync.cursor_after
        changed = api.update(list(range(0, 100, 2)))  # 50 changes, 20 a page: more than 2 pages
        Budget.max_pages = 2
        _, stats = await runs.run()
        Budget.max_pages = 1_000_000
        ps = only(stats)
        assert ps.problems and not ps.sync.committed and "cursor stays where it was" in caplog.text
        assert orjson.loads((tmp_path / "state.json").read_bytes())["cursors"]["default"]["cursor"] == before
        third, _ = await runs.run()
        assert set(changed) <= set(ids(third))
        assert api.differences(runs.held(), deletions=False) == []


async def test_a_new_run_begins_only_when_every_partition_is_done(tmp_path: Path) -> None:
    """Two tables; the crawl stops after ``a`` finished and ``b`` committed one page.

    The next start resumes ``b`` only (``a`` is done); the start after that is a new run of both.
    """
    a, b = ChangesAPI(records=50, prefix="/a"), ChangesAPI(records=100, prefix="/b")

    class Two(ServiceNow):
        primary_key = None  # the two tables' ids overlap, and keys are de-duplicated crawl-wide

        def partitions(self) -> list[Partition]:
            return [Partition(n, path=f"/{n}/api/now/table/incident") for n in ("a", "b")]

    def both(app: Any, auth: Any) -> None:
        a(app, auth)
        b(app, auth)

    a_done = anyio.Event()
    scope = anyio.CancelScope()

    class StopSink(PartitionSink):
        pages = 0

        async def write(self, records: Sequence[Any], partition: str) -> None:
            await super().write(records, partition)
            if partition == "b":
                self.pages += 1
                if self.pages == 2:  # b's first page is committed, its second is not
                    await a_done.wait()
                    scope.cancel()

    def progress(stats: Any) -> None:
        if stats.partitions["a"].done:
            a_done.set()

    state = tmp_path / "state.json"
    async with serving(both) as (server, tokens):
        runs = Runs(Two, server, tokens, state)
        await runs.run()
        a.update([1])
        b.update(list(range(0, 100, 2)))
        with scope:
            await runs.run(sink=StopSink(), on_progress=progress)
        assert scope.cancelled_caught
        saved = orjson.loads(state.read_bytes())
        assert saved["partitions"]["a"]["done"] and not saved["partitions"]["b"]["done"]
        _, resumed = await runs.run()
        assert resumed.partitions["a"].sync is None  # done in the stopped run: not read again
        assert resumed.partitions["b"].sync.resumed
        _, new = await runs.run()
        assert {p.sync.mode for p in new.partitions.values()} == {"incremental"}
        assert not any(p.sync.resumed for p in new.partitions.values())
    assert a.differences(runs.held("a")) == [] and b.differences(runs.held("b")) == []


# --- full refresh, configuration --------------------------------------------------------------------------


async def test_full_refresh_ignores_the_cursors_and_reads_everything(tmp_path: Path, caplog: Any) -> None:
    api = ChangesAPI(records=120)
    async with serving(api) as (server, tokens):
        runs = Runs(ServiceNow, server, tokens, tmp_path / "state.json")
        await runs.run()
        api.update([1])
        everything, stats = await runs.run(full_refresh=True)
        assert ids(everything) == list(range(120)) and only(stats).sync.mode == "full"
        assert "full refresh" in caplog.text
        after, _ = await runs.run()
        assert after == []


async def test_an_incremental_crawler_without_a_filter_hook_fails_before_any_request() -> None:
    class NoHook(Crawler):
        path = "/api/now/table/incident"
        updated_field = "sys_updated_on"

    api = ChangesAPI(records=10)
    async with serving(api) as (server, tokens):
        with pytest.raises(UsageError, match=r"no changed_since\(partition, since\)"):
            await NoHook(base_url=server.base_url).crawl(tokens, ListSink())
    assert api.counts["servicenow"] == 0


async def test_the_state_keeps_cursors_apart_from_positions(tmp_path: Path) -> None:
    api = ChangesAPI(records=40)
    async with serving(api) as (server, tokens):
        await Runs(ServiceNow, server, tokens, tmp_path / "state.json").run()
    saved = orjson.loads((tmp_path / "state.json").read_bytes())
    assert set(saved) == {"version", "fingerprint", "partitions", "cursors"}
    assert saved["partitions"]["default"]["done"]
    cursor = saved["cursors"]["default"]
    # the server's time at the run's start (its Date): every record stamped before it was read
    assert cursor["cursor"] == cursor["last_run"]["server_start"]
    assert datetime.fromisoformat(cursor["cursor"]) > datetime.fromtimestamp(api.base_updated(39), UTC)
    assert cursor["recent_count"] == 0 and cursor["runs"] == 1 and cursor["last_run"]["mode"] == "full"


# --- the examples -----------------------------------------------------------------------------------------


async def test_the_incremental_servicenow_example(tmp_path: Path) -> None:
    api = ChangesAPI(records=250)
    async with serving(api) as (server, tokens):
        runs = Runs(Incidents, server, tokens, tmp_path / "state.json")
        assert ids((await runs.run())[0]) == list(range(250))
        changed = api.update([4, 8]) + api.create(1)
        assert ids((await runs.run())[0]) == changed


async def test_the_graph_delta_example(tmp_path: Path) -> None:
    api = ChangesAPI(records=150)
    async with serving(api) as (server, tokens):
        runs = Runs(DriveItems, server, tokens, tmp_path / "state.json")
        assert ids((await runs.run())[0]) == list(range(150))
        api.update([4])
        api.delete([8])
        second = (await runs.run())[0]
        assert ids(second) == [4, 8] and [r["_key"] for r in second if r.get("_deleted")] == ["8"]


# --- the command line ---------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


async def run_cli(*args: str) -> tuple[int, str, str]:
    import asyncio
    import os

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


async def test_the_command_line_syncs_incrementally_and_shows_and_resets_the_state(tmp_path: Path) -> None:
    api = ChangesAPI(records=300)
    state, out = tmp_path / "state.json", tmp_path / "out.jsonl"
    async with LocalServer(AuthServerState(), api=api) as server:
        config = tmp_path / "connection.json"
        config.write_bytes(orjson.dumps(server.connection()))
        crawl = ["crawl", "--config", str(config), "--crawler", "examples.incremental_servicenow:Incidents"]
        crawl += ["--base-url", server.base_url, "--state", str(state), "--out", str(out)]
        code, first, err = await run_cli(*crawl)
        assert code == 0, err
        shown = re.search(r"cursor default +- -> (\S+) \[full\]", first)
        assert shown and "300 written" in first
        cursor = shown.group(1)  # the server's time at the run's start, past the newest record
        assert datetime.fromisoformat(cursor) > datetime.fromtimestamp(api.base_updated(299), UTC)
        api.update([1, 2])
        code, second, err = await run_cli(*crawl)
        assert code == 0, err
        assert re.search(rf"cursor default +{cursor} -> \S+ \[incremental since", second)
        assert "2 written, 0 deletions, 0 re-deliveries dropped" in second
        code, refresh, err = await run_cli(*crawl, "--full-refresh")
        assert code == 0, err
        assert f"full refresh: the saved cursors in {state} are ignored" in refresh
        assert "[full]" in refresh and "300 written" in refresh
        code, shown, err = await run_cli("state", "show", "--state", str(state))
        assert code == 0, err
        # each page seeks from the last update time read, so each re-reads the record it ended with
        assert "partition default" in shown and "position   done (4 pages, 303 records)" in shown
        assert "after 1 run(s); 2 recent keys" in shown and "last run   mode full" in shown  # counted anew
        code, reset, err = await run_cli("state", "reset", "--state", str(state))
        assert code == 0, err
        assert "forgot the positions and cursors of default" in reset and "reads everything" in reset
        code, shown, _ = await run_cli("state", "show", "--state", str(state))
        assert "empty (the next crawl reads everything)" in shown
        code, _, err = await run_cli("state", "show", "--state", str(tmp_path / "missing.json"))
        assert code == 2 and "there is no state file" in err
    assert len(out.read_bytes().splitlines()) == 300 + 2 + 300


async def test_the_incremental_demo_fetches_only_the_changes_and_matches_the_source(tmp_path: Path) -> None:
    import io

    from oauthpw_async.testing.changes import incremental_demo

    out = io.StringIO()
    assert await incremental_demo(out, records=3000, changed=200, out_dir=str(tmp_path)) == 0
    text = out.getvalue()
    assert "first run (full): 30 API requests, 3,000 records written" in text
    assert "160 tickets updated, 20 created, 20 deleted" in text
    assert "second run (incremental): 2 API requests, 200 records written (20 deletions)" in text
    assert "matches the source" in text
