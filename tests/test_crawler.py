"""The crawler end to end over real HTTP against the local paginated API, with faults."""

from __future__ import annotations

import logging
from contextlib import aclosing
from typing import Any

import anyio
import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oauthpw_async import HTTPStatusError, RetryPolicy, TokenProvider, UnauthorizedError, rate_limit_delay
from oauthpw_async.crawler import (
    Crawler,
    Cursor,
    JsonLinesSink,
    ListSink,
    NextUrl,
    Offset,
    Page,
    PageNumber,
    PageRequest,
    Partition,
    parse_link_header,
)
from oauthpw_async.testing import AuthServerState, FakeClock, LocalServer, Quirks
from oauthpw_async.testing.api import ApiFault, DemoAPI

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Projects(Crawler):
    def partitions(self):
        return [Partition(p, {"project": p}) for p in ("alpha", "beta", "gamma")]


class OffsetItems(Projects):
    path = "/api/offset/items"
    records_path = "items"
    total_path = "total"
    pagination = Offset(total_path="total", page_size=50)


class CursorItems(Projects):
    path = "/api/cursor/items"
    records_path = "data"
    pagination = Cursor("meta.next_cursor", has_more_path="meta.has_more")


class PageItems(Projects):
    path = "/api/page/items"
    records_path = "results"
    pagination = PageNumber(total_pages_path="total_pages", page_size=50)


class NextUrlItems(Projects):
    path = "/api/nexturl/items"
    records_path = "records"
    pagination = NextUrl("nextRecordsUrl")


class ODataItems(Projects):
    path = "/api/odata/items"
    records_path = "value"
    pagination = "odata"


class LinkItems(Projects):
    path = "/api/link/items"
    pagination = "link_header"


class WithDetails(OffsetItems):
    def detail(self, record: dict[str, Any]) -> str:
        return f"/api/items/{record['id']}"


STYLES = [OffsetItems, CursorItems, PageItems, NextUrlItems, ODataItems, LinkItems]


def bind(cls: type[Crawler], server: LocalServer) -> Crawler:
    crawler = cls()
    crawler.base_url = server.base_url  # type: ignore[misc]
    return crawler


async def crawl(
    cls: type[Crawler], api: DemoAPI, state: AuthServerState | None = None, clock: FakeClock | None = None, **kw: Any
):
    async with (
        LocalServer(state or AuthServerState(), api=api) as server,
        TokenProvider(server.config(), **({"clock": clock} if clock else {})) as tokens,
    ):
        sink = ListSink()
        stats = await bind(cls, server).crawl(tokens, sink, **kw)
        return sink.records, stats, tokens.stats, server


@pytest.mark.parametrize("cls", STYLES, ids=lambda c: c.__name__)
async def test_every_pagination_style_reads_the_whole_dataset(cls: type[Crawler]) -> None:
    api = DemoAPI(per_project=230, max_page_size=100)
    records, stats, _, _ = await crawl(cls, api)
    ids = [r["id"] for r in records]
    assert sorted(ids) == sorted(api.expected_ids())  # each record exactly once
    assert stats.partitions_done == 3 and stats.cycles_stopped == 0


async def test_follow_up_detail_fetch_per_record() -> None:
    api = DemoAPI(per_project=120)
    records, _stats, _, _ = await crawl(WithDetails, api, concurrency=32)
    assert len(records) == 360 and all(r["detail"]["id"] == r["id"] for r in records)
    assert api.counts["detail:200"] == 360


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    per_project=st.integers(0, 130),
    concurrency=st.integers(1, 300),
    missing=st.one_of(st.none(), st.integers(0, 389)),
)
def test_every_detail_is_merged_into_its_own_record_or_the_crawl_raises_the_failure(
    per_project: int, concurrency: int, missing: int | None
) -> None:
    # Follow-ups run on a few workers (as many as there are free slots): whatever the number of
    # records and slots, each record gets its own detail once; a detail that fails (a 404 here)
    # fails the crawl with that error, never with the cancellation of the page's other fetches.
    class Details(WithDetails):
        def detail(self, record: dict[str, Any]) -> str:
            return f"/api/items/{10**9 if record['id'] == missing else record['id']}"

    api = DemoAPI(per_project=per_project, max_page_size=100)

    async def scenario() -> tuple[list[Any], BaseException | None]:
        try:
            records, _, _, _ = await crawl(Details, api, concurrency=concurrency)
        except Exception as exc:
            return [], exc
        return records, None

    records, error = anyio.run(scenario)
    if missing is not None and missing < 3 * per_project:
        assert isinstance(error, HTTPStatusError) and error.status == 404, repr(error)
    else:
        assert error is None, repr(error)
        assert sorted(r["id"] for r in records) == sorted(api.expected_ids())
        assert all(r["detail"]["id"] == r["id"] for r in records)
        assert api.counts["detail:200"] == 3 * per_project


async def test_a_failed_detail_stops_the_page_s_other_fetches_and_is_the_error_raised() -> None:
    # Record 0's detail never answers; record 7's is a 404. The crawl must raise the 404 (not
    # the cancellation of record 0's fetch, which the failure stops), and must not wait for
    # record 0: without the stop this test never ends (bounded by fail_after).
    hung, release = anyio.Event(), anyio.Event()

    def installer(app: web.Application, auth: AuthServerState) -> None:
        async def items(request: web.Request) -> web.Response:
            offset = int(request.query.get("offset", "0"))
            ids = range(offset, min(offset + 20, 40))
            return web.json_response({"items": [{"id": i} for i in ids], "total": 40})

        async def item(request: web.Request) -> web.Response:
            rid = int(request.match_info["id"])
            if rid == 0:
                hung.set()
                await release.wait()  # until the test is over
            if rid == 7:
                return web.json_response({"error": "gone"}, status=404)
            return web.json_response({"id": rid})

        app.router.add_get("/api/items", items)
        app.router.add_get("/api/items/{id}", item)

    class Hanging(Crawler):
        path = "/api/items"
        records_path = "items"
        pagination = Offset(total_path="total", page_size=20)

        def detail(self, record: dict[str, Any]) -> str:
            return f"/api/items/{record['id']}"

    async with LocalServer(AuthServerState(), api=installer) as server, TokenProvider(server.config()) as tokens:
        try:
            with anyio.fail_after(60), pytest.raises(HTTPStatusError) as caught:
                await bind(Hanging, server).crawl(tokens, ListSink(), concurrency=64)
        finally:
            release.set()
    assert caught.value.status == 404 and hung.is_set()


async def test_server_page_size_cap_loses_nothing() -> None:
    class Greedy(OffsetItems):
        pagination = Offset(total_path="total", page_size=500)  # server caps at 100

    api = DemoAPI(per_project=330, max_page_size=100)
    records, _, _, _ = await crawl(Greedy, api)
    assert sorted(r["id"] for r in records) == sorted(api.expected_ids())


async def test_429_pauses_all_tasks_and_honours_retry_after() -> None:
    api = DemoAPI(per_project=100)
    api.inject(ApiFault("status", status=429, retry_after="30"), ApiFault("status", status=503, retry_after="0"))
    clock = FakeClock()
    async with clock.autojump():
        started = clock.now
        records, stats, _, _ = await crawl(OffsetItems, api, clock=clock)
    assert len(records) == 300 and stats.rate_limit_pauses == 2 and stats.retries == 2
    # Retry-After: 30 was honoured on the crawl's clock (plus at most the jitter of half a second).
    assert 30 <= clock.now - started <= 31


async def test_5xx_and_dropped_connections_are_retried() -> None:
    api = DemoAPI(per_project=100)
    api.inject(ApiFault("status", status=500), ApiFault("status", status=502), ApiFault("drop"))
    records, stats, _, _ = await crawl(OffsetItems, api, retry=RetryPolicy(base_delay=0.01))
    # aiohttp itself resends a GET once when a kept-alive connection is dropped, so the drop
    # may not reach the engine's retry count.
    assert len(records) == 300 and stats.retries >= 2 and api.counts["fault:drop"] == 1


async def test_retries_are_bounded_and_name_the_request() -> None:
    api = DemoAPI(per_project=10)
    api.inject(*[ApiFault("status", status=500)] * 20)
    with pytest.raises(HTTPStatusError, match=r"gave up after 3 attempts.*HTTP 500 for http://127.0.0.1:\d+/api/"):
        await crawl(CursorItems, api, retry=RetryPolicy(max_attempts=3, base_delay=0.01), concurrency=1)


async def test_slow_page_completes() -> None:
    api = DemoAPI(per_project=50)
    api.inject(ApiFault("slow", delay=0.3))
    records, _, _, _ = await crawl(OffsetItems, api)
    assert len(records) == 150


async def test_tokens_revoked_mid_crawl_cost_one_refresh() -> None:
    api = DemoAPI(per_project=300, latency=0.01)
    state = AuthServerState()
    revoked = []

    def revoke_once(n: int) -> None:
        if n >= 5 and not revoked:
            revoked.append(state.revoke_access_tokens())

    api.on_request = revoke_once
    records, stats, tstats, _ = await crawl(WithDetails, api, state=state, concurrency=64)
    assert len(records) == 900 and revoked == [1]
    assert stats.unauthorized >= 1 and tstats.invalidations == 1
    assert state.count("refresh_token", "ok") == 1 and state.count("password") == 1


class OneCursor(Crawler):
    path = "/api/cursor/items"
    records_path = "data"
    pagination = Cursor("meta.next_cursor")


async def test_each_rejected_token_gets_its_own_renewal_within_one_request() -> None:
    # 429, then 401 (token revoked), then 500, then 401 again with the renewed token revoked too:
    # two separate rejections, two renewals, and the crawl completes.
    api = DemoAPI(per_project=10)
    api.inject(
        ApiFault("status", status=429, retry_after="0"),
        ApiFault("revoke"),
        ApiFault("status", status=500),
        ApiFault("revoke"),
    )
    records, stats, tstats, _ = await crawl(OneCursor, api, retry=RetryPolicy(base_delay=0.01))
    assert len(records) == 10 and stats.unauthorized == 2 and tstats.invalidations == 2


async def test_an_account_that_lost_access_stops_the_crawl_after_a_few_renewals() -> None:
    api = DemoAPI(per_project=10)
    api.deny_all = True
    with pytest.raises(UnauthorizedError, match=r"lost access.*HTTP 401 for http://127\.0\.0\.1") as info:
        await crawl(OneCursor, api, concurrency=50)
    assert "?" not in info.value.url
    assert api.counts["list:401"] <= 4


async def test_4xx_is_not_retried_and_reports_url_and_body() -> None:
    class Missing(Crawler):
        path = "/api/offset/items"
        params = {"project": "nope"}
        records_path = "items"
        pagination = "offset"

    api = DemoAPI()
    with pytest.raises(HTTPStatusError, match=r"HTTP 404 for .*/api/offset/items.*unknown project") as info:
        await crawl(Missing, api)
    assert "?" not in info.value.url and api.counts["list:200"] == 1


async def test_empty_page_mid_stream_does_not_end_the_stream(caplog) -> None:
    for cls in (OffsetItems, CursorItems, NextUrlItems):
        api = DemoAPI(per_project=300, max_page_size=50, empty_page_at=frozenset({1}))
        records, stats, _, _ = await crawl(cls, api)
        # page 1 of each project is empty on the server; everything after it is still read
        assert len(records) == 3 * 250, cls.__name__
        if cls is not CursorItems:  # these announce 300 per project: 50 are missing, and it says so
            assert stats.incomplete["alpha"] == ["250 of 300 announced records were read"], cls.__name__
        assert max(r["id"] for r in records) == api.total - 1


async def test_next_link_back_to_an_earlier_page_stops_with_a_warning(caplog) -> None:
    caplog.set_level(logging.WARNING)
    api = DemoAPI(per_project=500, max_page_size=50, cycle_at=3)
    records, stats, _, _ = await crawl(NextUrlItems, api)
    # The loop-back URL differs from the first request's (it adds after=0&limit=50), so at
    # most one page is read twice before the repeat is recognised.
    assert stats.cycles_stopped == 3 and 3 * 4 * 50 <= len(records) <= 3 * 5 * 50
    assert len({r["id"] for r in records}) == 3 * 4 * 50
    assert not stats.complete and set(stats.incomplete) == {"alpha", "beta", "gamma"}
    assert all("links form a loop" in stats.incomplete[p][0] for p in stats.incomplete)
    assert "partition alpha is incomplete" in caplog.text and "of 500 announced records" in caplog.text


async def test_page_budget(caplog) -> None:
    class Budget(CursorItems):
        max_pages = 2

    api = DemoAPI(per_project=500, max_page_size=50)
    records, stats, _, _ = await crawl(Budget, api)
    assert len(records) == 3 * 2 * 50 and "page budget" in caplog.text
    assert not stats.complete and all("max_pages = 2" in r[0] for r in stats.incomplete.values())


async def test_salesforce_like_base_url_from_token() -> None:
    class Accounts(Crawler):
        base_url_from_token = "instance_url"
        path = "/api/nexturl/items"
        records_path = "records"
        pagination = NextUrl("nextRecordsUrl")

    api = DemoAPI(per_project=120)
    state = AuthServerState(quirks=Quirks(salesforce=True))
    async with LocalServer(state, api=api) as server, TokenProvider(server.config()) as tokens:
        sink = ListSink()
        await Accounts().crawl(tokens, sink)
    assert len(sink.records) == 120


async def test_checkpoint_resume_after_cancel_loses_nothing(tmp_path) -> None:
    api = DemoAPI(per_project=400, max_page_size=50, latency=0.03)
    state_file = str(tmp_path / "state.json")
    out = tmp_path / "out.jsonl"
    async with LocalServer(AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        crawler = bind(OffsetItems, server)
        sink = JsonLinesSink(out)
        with anyio.move_on_after(0.1):
            await crawler.crawl(tokens, sink, state=state_file)
        sink.close()
        first = out.read_bytes().count(b"\n")
        assert 0 < first < 1200
        with anyio.fail_after(10):  # requests cancelled by the client still finish on the server
            while api.inflight:
                await anyio.sleep(0.01)
        before = api.counts["list:200"]
        sink = JsonLinesSink(out)
        stats = await crawler.crawl(tokens, sink, state=state_file)
        sink.close()
        resumed_pages = api.counts["list:200"] - before
        ids = {orjson.loads(line)["id"] for line in out.read_bytes().splitlines()}
        assert ids == api.expected_ids()
        assert resumed_pages < 24 + 3  # did not start over
        # A finished crawl run again fetches nothing.
        before = api.counts["list:200"]
        with JsonLinesSink(out) as sink:
            await crawler.crawl(tokens, sink, state=state_file)
        assert api.counts["list:200"] == before and stats.partitions_done == 3


async def test_records_iterator_streams_and_stops_when_the_consumer_breaks() -> None:
    api = DemoAPI(per_project=1000, max_page_size=50)
    async with LocalServer(AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        seen = []
        async with aclosing(bind(CursorItems, server).records(tokens, concurrency=4)) as records:
            async for record in records:
                seen.append(record["id"])
                if len(seen) == 120:
                    break
        pages_then = api.counts["list:200"]
        await anyio.sleep(0.2)
        assert api.counts["list:200"] == pages_then  # the crawl stopped with the consumer
        assert pages_then <= 3 * 3  # back-pressure: nobody ran ahead of the consumer


async def test_several_crawlers_share_one_provider_and_session() -> None:
    import aiohttp

    api = DemoAPI(per_project=100)
    async with LocalServer(AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        async with aiohttp.ClientSession() as session:
            sinks = [ListSink() for _ in STYLES]
            async with anyio.create_task_group() as tg:
                for cls, sink in zip(STYLES, sinks, strict=True):
                    tg.start_soon(lambda c=cls, s=sink: bind(c, server).crawl(tokens, s, session=session))
        assert all(len(s.records) == 300 for s in sinks)
        assert server.auth.token_requests == 1


def test_link_header_parsing() -> None:
    value = '<https://a/x?page=2>; rel="next", <https://a/x?page=9>; rel="last", </rel>; rel=prev'
    assert parse_link_header(value) == {"next": "https://a/x?page=2", "last": "https://a/x?page=9", "prev": "/rel"}


def test_rate_limit_headers() -> None:
    now = 1_700_000_000.0
    assert rate_limit_delay({"Retry-After": "12"}, now) == 12
    assert rate_limit_delay({"Retry-After": "Tue, 14 Nov 2023 22:13:30 GMT"}, now) == pytest.approx(10, abs=1)
    assert rate_limit_delay({"X-RateLimit-Reset": str(int(now) + 30)}, now) == pytest.approx(30)
    assert rate_limit_delay({"X-Rate-Limit-Reset": str(int(now) + 5)}, now) == pytest.approx(5)
    assert rate_limit_delay({"X-RateLimit-Reset": "2023-11-14T22:13:40Z"}, now) == pytest.approx(20, abs=1)
    assert rate_limit_delay({"RateLimit-Reset": "7"}, now) == 7
    assert rate_limit_delay({}, now) is None


def test_confluence_style_relative_next_joined_to_base() -> None:
    page = Page(
        PageRequest("/rest/api/content"),
        "https://wiki.example.com/rest/api/content",
        200,
        {},
        {"_links": {"base": "https://wiki.example.com/confluence", "next": "/rest/api/content?start=25"}},
        0,
    )
    nxt = NextUrl("_links.next", base_path="_links.base").next(page, [1])
    assert nxt is not None and nxt.url == "https://wiki.example.com/confluence/rest/api/content?start=25"


def test_json_lines_sink_repairs_a_torn_tail(tmp_path) -> None:
    path = tmp_path / "o.jsonl"
    path.write_bytes(b'{"id":1}\n{"id":2}\n{"id":')
    JsonLinesSink(path).close()
    assert path.read_bytes() == b'{"id":1}\n{"id":2}\n'


async def test_rate_limit_spaces_requests_per_host() -> None:
    class One(CursorItems):
        def partitions(self):
            return [Partition("alpha", {"project": "alpha"})]

    api = DemoAPI(projects=("alpha",), per_project=200, max_page_size=20)
    clock = FakeClock()
    async with clock.autojump():
        started = clock.now
        records, stats, _, _ = await crawl(One, api, clock=clock, rate=4.0)
    # 10 pages at 4 requests/s: exactly 9 intervals of 250 ms on the crawl's clock.
    assert len(records) == 200 and stats.requests == 10
    assert clock.now - started == pytest.approx(9 / 4)


@pytest.mark.parametrize("cls", [OffsetItems, PageItems], ids=lambda c: c.__name__)
async def test_known_totals_fetch_pages_in_parallel_but_emit_in_order(cls: type[Crawler]) -> None:
    class One(cls):  # type: ignore[valid-type, misc]
        parallel_pages = 4

        def partitions(self):
            return [Partition("alpha", {"project": "alpha"})]

    api = DemoAPI(projects=("alpha",), per_project=1000, max_page_size=50, latency=0.02)
    records, stats, _, _ = await crawl(One, api)
    ids = [r["id"] for r in records]
    assert ids == list(range(1000))  # every record, in page order
    assert api.max_inflight >= 3 and stats.pages == 20

    class Sequential(One):
        parallel_pages = 1

    api = DemoAPI(projects=("alpha",), per_project=1000, max_page_size=50, latency=0.02)
    records, _, _, _ = await crawl(Sequential, api)
    assert [r["id"] for r in records] == list(range(1000)) and api.max_inflight == 1


async def test_parallel_pages_resume_in_order_after_cancel(tmp_path) -> None:
    class One(OffsetItems):
        parallel_pages = 6

        def partitions(self):
            return [Partition("alpha", {"project": "alpha"})]

    api = DemoAPI(projects=("alpha",), per_project=2000, max_page_size=50, latency=0.03)
    state_file = str(tmp_path / "state.json")
    async with LocalServer(AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        first = ListSink()
        with anyio.move_on_after(0.25):
            await bind(One, server).crawl(tokens, first, state=state_file)
        committed = orjson.loads((tmp_path / "state.json").read_bytes())["partitions"]["alpha"]
        # The checkpoint never runs ahead of what reached the sink.
        assert committed["pages"] * 50 <= len(first.records)
        second = ListSink()
        await bind(One, server).crawl(tokens, second, state=state_file)
    ids = [r["id"] for r in first.records] + [r["id"] for r in second.records]
    assert set(ids) == set(range(2000)) and 0 < len(first.records) < 2000
