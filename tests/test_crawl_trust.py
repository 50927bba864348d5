"""Crawls at the edges, over real HTTP: nothing lost silently, the token only where it was sent."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import orjson
import pytest
import trustme
from aiohttp import web

from oauthpw_async import ForeignOriginError, HTTPStatusError, TokenProvider
from oauthpw_async.crawler import Crawler, Cursor, JsonLinesSink, ListSink, NextUrl, Offset, Partition
from oauthpw_async.errors import CrawlError
from oauthpw_async.testing import AuthServerState, LocalServer
from oauthpw_async.testing.api import DemoAPI

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Alpha(Crawler):
    def partitions(self) -> list[Partition]:
        return [Partition("alpha", {"project": "alpha"})]


class LinkItems(Alpha):
    path = "/api/link/items"
    pagination = "link_header"


class OData(Alpha):
    path = "/api/odata/items"
    records_path = "value"
    pagination = "odata"


class CursorItems(Alpha):
    path = "/api/cursor/items"
    records_path = "data"
    pagination = Cursor("meta.next_cursor", has_more_path="meta.has_more")


async def crawl(
    crawler: Crawler, api: DemoAPI, *, sink: Any = None, state: AuthServerState | None = None, **kw: Any
) -> tuple[list[Any], Any, LocalServer]:
    async with LocalServer(state or AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        if crawler.base_url is None:
            crawler.base_url = server.base_url
        sink = sink or ListSink()
        stats = await crawler.crawl(tokens, sink, **kw)
        return getattr(sink, "records", []), stats, server


@asynccontextmanager
async def second_origin(host: str = "127.0.0.2") -> AsyncIterator[tuple[str, list[str | None]]]:
    """A plain server on another origin that serves one public page and records Authorization headers."""
    seen: list[str | None] = []

    async def page(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"value": [{"id": "elsewhere"}], "data": [{"id": "elsewhere"}]})

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://{host}:{port}", seen
    finally:
        await runner.cleanup()


# --- completeness -------------------------------------------------------------------------------


async def test_link_headers_on_separate_lines_are_all_read_and_the_total_checks_out() -> None:
    api = DemoAPI(projects=("alpha",), per_project=230, max_page_size=50, split_link_lines=True)
    records, stats, _ = await crawl(LinkItems(), api)
    assert len(records) == 230 and stats.pages == 5
    assert stats.complete and stats.partitions["alpha"].total == 230  # from X-Total-Count


async def test_dotted_keys_work_as_written() -> None:
    class Counted(OData):
        total_path = "@odata.count"

    records, stats, _ = await crawl(Counted(), DemoAPI(projects=("alpha",), per_project=120, max_page_size=50))
    assert len(records) == 120 and stats.complete and stats.partitions["alpha"].total == 120


async def test_a_short_crawl_against_an_announced_total_is_incomplete_and_says_so(caplog) -> None:
    caplog.set_level(logging.WARNING)
    api = DemoAPI(projects=("alpha",), per_project=300, max_page_size=50, empty_page_at=frozenset({2}))
    records, stats, _ = await crawl(OData(), api)  # announces @odata.count = 300
    assert len(records) == 250 and not stats.complete
    assert stats.incomplete == {"alpha": ["250 of 300 announced records were read"]}
    assert "partition alpha is incomplete: 250 of 300 announced records were read" in caplog.text


@pytest.mark.parametrize(
    ("crawler", "reason"),
    [
        (type("WrongRecords", (CursorItems,), {"records_path": "items"})(), "records_path 'items' was on none"),
        (type("WrongTotal", (CursorItems,), {"total_path": "meta.total"})(), "total_path 'meta.total' was on none"),
        (
            type("WrongCursor", (CursorItems,), {"pagination": Cursor("meta.cursor")})(),
            "next-page locator 'meta.cursor' was never on a page",
        ),
    ],
    ids=["records_path", "total_path", "cursor_path"],
)
async def test_a_path_that_never_resolves_makes_the_crawl_incomplete(crawler: Crawler, reason: str) -> None:
    _, stats, _ = await crawl(crawler, DemoAPI(projects=("alpha",), per_project=120, max_page_size=50))
    assert not stats.complete
    assert any(reason in problem for problem in stats.incomplete["alpha"]), stats.incomplete


async def test_a_one_page_source_that_signals_its_end_is_complete() -> None:
    class Salesforce(Alpha):
        path = "/api/nexturl/items"
        records_path = "records"
        pagination = NextUrl("nextRecordsUrl", done_path="done")

    records, stats, _ = await crawl(Salesforce(), DemoAPI(projects=("alpha",), per_project=40, max_page_size=50))
    assert len(records) == 40 and stats.complete


async def test_offset_steps_over_an_empty_page_by_the_servers_real_page_size() -> None:
    # The crawler asks for 500 a page; the server serves 100. Page 3 comes back empty.
    class Big(Alpha):
        path = "/api/offset/items"
        records_path = "items"
        pagination = Offset(total_path="total", page_size=500)
        parallel_pages = 1

    api = DemoAPI(projects=("alpha",), per_project=1000, max_page_size=100, empty_page_at=frozenset({3}))
    records, stats, _ = await crawl(Big(), api)
    assert len(records) == 900  # only the 100 the server hid are missing, not 400 more
    assert stats.incomplete == {"alpha": ["900 of 1000 announced records were read"]}


async def test_parallel_pages_still_read_records_added_during_the_crawl() -> None:
    class Parallel(Alpha):
        path = "/api/offset/items"
        records_path = "items"
        total_path = "total"
        pagination = Offset(total_path="total", page_size=50)
        parallel_pages = 4

    api = DemoAPI(projects=("alpha",), per_project=200, max_page_size=50)

    def grow(n: int) -> None:
        if n == 2:
            api.per_project = 260  # 60 records appended after the page list was planned

    api.on_request = grow
    records, stats, _ = await crawl(Parallel(), api)
    assert sorted(r["id"] for r in records) == list(range(260)) and stats.complete


# --- where the token goes ---------------------------------------------------------------------------


async def test_paths_resolve_under_a_base_url_with_its_own_path() -> None:
    api = DemoAPI(projects=("alpha",), per_project=60, max_page_size=50, prefix="/servicenow")
    async with LocalServer(AuthServerState(), api=api) as server:
        crawler = CursorItems(base_url=f"{server.base_url}/servicenow")
        records, stats, _ = await crawl(crawler, api)
    assert len(records) == 60 and stats.complete


async def test_a_next_link_to_another_origin_fails_the_partition_and_gets_no_token() -> None:
    async with second_origin() as (elsewhere, seen):
        api = DemoAPI(projects=("alpha",), per_project=120, max_page_size=50, next_origin=elsewhere)
        with pytest.raises(ForeignOriginError) as info:
            await crawl(OData(), api)
        assert info.value.origin == elsewhere and elsewhere in str(info.value)
        assert "allowed_origins" in str(info.value) and seen == []


async def test_an_allowed_origin_gets_the_token_and_opting_out_follows_without_it() -> None:
    async with second_origin() as (elsewhere, seen):
        api = DemoAPI(projects=("alpha",), per_project=120, max_page_size=50, next_origin=elsewhere)

        class Allowed(OData):
            allowed_origins = (elsewhere,)

        records, _, _ = await crawl(Allowed(), api)
        assert len(records) == 51 and len(seen) == 1 and seen[0] is not None and seen[0].startswith("Bearer ")

        class Anonymous(OData):
            foreign_origins = "follow_without_token"

        records, _, _ = await crawl(Anonymous(), api)
        assert len(records) == 51 and len(seen) == 2 and seen[1] is None


async def test_a_redirect_to_another_origin_is_checked_before_the_token_is_sent() -> None:
    async with second_origin() as (elsewhere, seen):
        api = DemoAPI(projects=("alpha",), per_project=60, redirect_lists_to=elsewhere)
        with pytest.raises(ForeignOriginError, match=r"127\.0\.0\.2"):
            await crawl(CursorItems(), api)
        assert seen == []

        class Anonymous(CursorItems):
            foreign_origins = "follow_without_token"

        records, _, _ = await crawl(Anonymous(), api)
        assert records == [{"id": "elsewhere"}] and seen == [None]


async def test_an_echoed_authorization_header_never_reaches_the_error_message() -> None:
    class Missing(CursorItems):
        params = {"project": "nope"}

        def partitions(self) -> list[Partition]:
            return [Partition("nope")]

    api = DemoAPI(echo_authorization=True)
    async with LocalServer(AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        with pytest.raises(HTTPStatusError) as info:
            await Missing(base_url=server.base_url).crawl(tokens, ListSink())
        assert tokens.token is not None
        token = tokens.token.access_token.reveal()
    message = str(info.value)
    assert "unknown project" in message and "you sent Authorization" in message
    assert token not in message and token[:12] not in message and token[-12:] not in message


async def test_headers_per_crawler_and_per_partition() -> None:
    class Versioned(CursorItems):
        headers = {"X-Api-Version": "2024-01", "Accept": "application/vnd.demo+json"}

        def partitions(self) -> list[Partition]:
            return [Partition("alpha", {"project": "alpha"}, headers={"X-Tenant": "acme"})]

    api = DemoAPI(projects=("alpha",), per_project=60, max_page_size=50)
    await crawl(Versioned(), api)
    seen = api.headers_seen
    assert seen[("x-api-version", "2024-01")] == 2 and seen[("x-tenant", "acme")] == 2
    assert seen[("accept", "application/vnd.demo+json")] == 2


async def test_tls_settings_of_the_connection_apply_to_the_api(tmp_path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    api = DemoAPI(projects=("alpha",), per_project=30)
    auth = AuthServerState()
    async with LocalServer(auth, api=api) as token_server:
        runner = web.AppRunner(token_server.build_app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
        await site.start()
        https = f"https://127.0.0.1:{runner.addresses[0][1]}"
        try:
            # Untrusted certificate: a definitive error after one request, not retried as an outage.
            async with TokenProvider(token_server.config()) as tokens:
                with pytest.raises(CrawlError, match=r"TLS certificate .* ca_bundle"):
                    await CursorItems(base_url=https).crawl(tokens, ListSink())
            assert api.counts.total() == 0
            # The connection's CA bundle makes the same API work.
            async with TokenProvider(token_server.config(ca_bundle=str(ca_file))) as tokens:
                sink = ListSink()
                stats = await CursorItems(base_url=https).crawl(tokens, sink)
            assert len(sink.records) == 30 and stats.complete
        finally:
            await runner.cleanup()


# --- restartable partitions -----------------------------------------------------------------------


class Locators(Alpha):
    """Salesforce-like: a relative next URL holding a query locator that can expire."""

    path = "/api/nexturl/items"
    records_path = "records"
    pagination = NextUrl("nextRecordsUrl", done_path="done")

    def position_expired(self, status: int, data: Any) -> bool:
        return status == 400 and isinstance(data, list) and data[0].get("errorCode") == "INVALID_QUERY_LOCATOR"


async def _interrupted_then_expired(crawler: Crawler, tmp_path: Any, caplog: Any) -> tuple[list[Any], Any]:
    caplog.set_level(logging.WARNING)
    api = DemoAPI(projects=("alpha",), per_project=500, max_page_size=50, latency=0.02)
    state_file = str(tmp_path / "state.json")
    out = tmp_path / "out.jsonl"
    async with LocalServer(AuthServerState(), api=api) as server, TokenProvider(server.config()) as tokens:
        crawler.base_url = server.base_url
        with anyio.CancelScope() as stop:

            class StopAfterTwoPages(JsonLinesSink):
                async def flush(self) -> None:
                    await super().flush()
                    if self.written >= 100:  # stopped after two pages, whatever the machine's speed
                        stop.cancel()

            sink = StopAfterTwoPages(out)
            await crawler.crawl(tokens, sink, state=state_file)
        sink.close()
        assert 0 < out.read_bytes().count(b"\n") < 500
        api.expire_positions()  # the locator saved in the state is no longer accepted
        sink = JsonLinesSink(out)
        stats = await crawler.crawl(tokens, sink, state=state_file)
        sink.close()
    return [orjson.loads(line)["id"] for line in out.read_bytes().splitlines()], stats


async def test_an_expired_position_restarts_the_partition_and_loses_nothing(tmp_path, caplog) -> None:
    ids, stats = await _interrupted_then_expired(Locators(), tmp_path, caplog)
    assert set(ids) == set(range(500)) and stats.complete
    ps = stats.partitions["alpha"]
    assert ps.restarts == 1 and ps.reemitted_from > 0
    # Re-emitted: what the saved position covered, plus at most the page written but not yet checkpointed.
    assert 500 + ps.reemitted_from <= len(ids) <= 500 + ps.reemitted_from + 50
    assert "saved position was refused as expired" in caplog.text and "re-emitted" in caplog.text


async def test_with_a_primary_key_records_read_again_are_not_written_twice(tmp_path, caplog) -> None:
    class Keyed(Locators):
        primary_key = "id"

    ids, stats = await _interrupted_then_expired(Keyed(), tmp_path, caplog)
    assert sorted(ids) == list(range(500)) and stats.complete
    ps = stats.partitions["alpha"]
    assert ps.reemitted_from > 0 and ps.reemitted_from <= ps.duplicates <= ps.reemitted_from + 50


async def test_an_expired_position_without_the_hook_is_a_clear_error(tmp_path, caplog) -> None:
    class Plain(Locators):
        def position_expired(self, status: int, data: Any) -> bool:
            return False

    with pytest.raises(HTTPStatusError, match=r"HTTP 400.*INVALID_QUERY_LOCATOR"):
        await _interrupted_then_expired(Plain(), tmp_path, caplog)
